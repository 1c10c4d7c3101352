"""turnout.signals"""
