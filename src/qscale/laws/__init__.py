"""qscale.laws"""
