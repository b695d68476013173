"""qscale.ptq: post-training quantization of any HF causal LM (RTN, GPTQ; SPEC §6)."""

from qscale.ptq import learned_round, qllm, rtn, sequential  # noqa: F401  (register the methods)
from qscale.ptq.config import PTQConfig
from qscale.ptq.gptq import GPTQResult, gptq_quantize
from qscale.ptq.registry import PTQ_METHODS, quantize_model

__all__ = ["PTQ_METHODS", "GPTQResult", "PTQConfig", "gptq_quantize", "quantize_model"]
