"""qscale.ptq"""
