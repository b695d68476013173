"""qscale.quant"""
