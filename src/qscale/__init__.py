"""qscale: quantize language models and fit scaling laws of quantization-induced degradation.

import qscale
model = qscale.load_quantized("my-model-w4g128/")   # compressed-tensors, GPTQ or qscale packed folder
"""

from qscale._version import __version__
from qscale.export import load_quantized

__all__ = ["__version__", "load_quantized"]
