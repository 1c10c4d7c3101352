"""turnout.config"""
