"""qscale: quantize language models and fit scaling laws of quantization-induced degradation."""

__version__ = "0.1.0"
