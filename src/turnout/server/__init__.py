"""turnout.server"""
