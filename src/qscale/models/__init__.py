"""qscale.models: the Llama size ladder, loading any local HF causal LM, parameter counts."""

from qscale.models.ladder import SIZES, ModelSize, build_model, get_size, llama_config
from qscale.models.load import load_model
from qscale.models.params import ParamCount, count_params

__all__ = ["SIZES", "ModelSize", "ParamCount", "build_model", "count_params", "get_size", "llama_config", "load_model"]
