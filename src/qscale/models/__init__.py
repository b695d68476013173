"""qscale.models"""
