"""qscale.data"""
