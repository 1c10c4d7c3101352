"""turnout.embed"""
