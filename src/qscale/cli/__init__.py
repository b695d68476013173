"""qscale's one-command pipelines over a user's model folder: quantize, qat, export."""
