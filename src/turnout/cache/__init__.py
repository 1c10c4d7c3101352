"""turnout.cache"""
