"""turnout.evaluation"""
