"""qscale.train"""
