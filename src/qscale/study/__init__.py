"""qscale.study"""
