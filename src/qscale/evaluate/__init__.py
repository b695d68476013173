"""qscale.evaluate"""
