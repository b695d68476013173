"""qscale.qat"""
