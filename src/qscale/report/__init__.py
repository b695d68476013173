"""qscale.report"""
