"""qscale.export"""
