"""turnout.gateway"""
