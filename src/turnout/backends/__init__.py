"""turnout.backends"""
