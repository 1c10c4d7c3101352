"""turnout.routing"""
