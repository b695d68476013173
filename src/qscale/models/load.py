"""Load a causal LM from a qscale checkpoint or any local Hugging Face folder (no downloads)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers.utils import logging as hf_logging

from qscale.errors import QscaleError, require


def load_model(path: str | Path) -> PreTrainedModel:
    """fp32, eval-mode model from ``path`` (config.json + weights); a bad folder raises QscaleError."""
    path = Path(path)
    require(path.is_dir(), f"checkpoint folder does not exist: {path}")
    require((path / "config.json").is_file(), f"not a model checkpoint (no config.json): {path}")
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a "Loading weights" bar per checkpoint would break our own bars
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, dtype=torch.float32, attn_implementation="sdpa"
        )
    except Exception as e:  # safetensors / json / transformers raise many types for a damaged folder
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise QscaleError(f"cannot load checkpoint {path}: {msg}") from e
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    return model.float().eval()
