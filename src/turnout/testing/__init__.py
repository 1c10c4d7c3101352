"""turnout.testing"""
