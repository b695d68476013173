"""qscale.export: packed low-bit model folders (compressed-tensors, GPTQ, qscale's own) and loading them back.

from qscale.export import export_model, load_quantized
export_model(model, "out/", "compressed-tensors", source="model_dir/")   # after PTQ or QAT convert
model = load_quantized("out/")    # QuantizedLinear layers: packed codes, dequantized on the fly
"""

from qscale.export.api import FORMATS, ExportResult, export_model
from qscale.export.folder import folder_bytes
from qscale.export.load import load_quantized

__all__ = ["FORMATS", "ExportResult", "export_model", "folder_bytes", "load_quantized"]
