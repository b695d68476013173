"""Load a causal LM from a qscale checkpoint or any local Hugging Face folder (no downloads).

A checkpoint must hold every weight of its architecture and nothing else, all finite: transformers
would silently initialise a missing weight at random (the loss comes out plausible but wrong).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

if TYPE_CHECKING:  # the model classes load torch._dynamo and Triton: not at import
    from transformers import PreTrainedModel

from qscale.errors import QscaleError, require


def _names(keys) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def _check_loading_info(path: Path, info: dict) -> None:
    """Missing, unexpected or mis-shaped weights are an error, not a warning."""
    missing, unexpected = info.get("missing_keys") or [], info.get("unexpected_keys") or []
    mismatched = [k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys") or []]
    hint = (
        " (a quantized or QAT-converted checkpoint stores integer codes that this loader does not read)"
        if any(k.endswith(("_codes", "_scale", "_zero")) for k in unexpected)
        else ""
    )
    require(
        not missing, f"checkpoint {path} lacks {len(missing)} weight(s) of its architecture: {_names(missing)}{hint}"
    )
    require(
        not unexpected,
        f"checkpoint {path} has {len(unexpected)} weight(s) its architecture does not use: {_names(unexpected)}{hint}",
    )
    require(not mismatched, f"checkpoint {path} has weight(s) of the wrong shape: {_names(mismatched)}")


def _check_finite(path: Path, model: PreTrainedModel) -> None:
    for name, t in (*model.named_parameters(), *model.named_buffers()):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise QscaleError(f"checkpoint {path} is corrupt: tensor {name} holds NaN or Inf values")


def model_positions(model: PreTrainedModel) -> int | None:
    """Longest sequence the model's position embeddings allow (None if the config does not say)."""
    cfg = model.config
    return getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)


def quantization_method(path: Path) -> str | None:
    """The ``quant_method`` a folder's config.json declares (None: a full-precision model, or no readable config)."""
    try:
        qc = json.loads((Path(path) / "config.json").read_text()).get("quantization_config")
    except (OSError, ValueError, AttributeError):
        return None
    return str(qc.get("quant_method", "unknown")) if isinstance(qc, dict) else ("unknown" if qc else None)


def require_full_precision(path: Path) -> None:
    """A packed quantized folder is not a model to quantize or train: say so instead of failing in transformers."""
    method = quantization_method(path)
    require(
        method is None,
        f"{path} is already quantized (config.json quantization_config, quant_method "
        f"{method!r}): give the full-precision model; a quantized folder is read by "
        "'qscale eval' and re-packed by 'qscale export'",
    )


def _mismatch(path: Path) -> str | None:
    """The first weight whose shape in the files differs from what config.json builds, as one sentence."""
    from safetensors import safe_open
    from transformers import AutoConfig

    try:
        with torch.device("meta"):
            expected = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path, local_files_only=True))
        shapes = {k: tuple(v.shape) for k, v in expected.state_dict().items()}
        for file in sorted(path.glob("*.safetensors")):
            with safe_open(str(file), "pt") as f:
                for key in f.keys():
                    got = tuple(f.get_slice(key).get_shape())
                    if key in shapes and shapes[key] != got:
                        return (
                            f"weight {key} has shape {list(got)} in {file.name} but config.json makes it "
                            f"{list(shapes[key])}: config.json does not describe these weights "
                            "(check hidden_size, intermediate_size, num_attention_heads, vocab_size)"
                        )
    except Exception:  # best effort: the caller still reports transformers' own first line
        return None
    return None


def load_model(path: str | Path) -> PreTrainedModel:
    """fp32, eval-mode model from ``path`` (config.json + weights); a bad folder raises QscaleError."""
    path = Path(path)
    require(path.is_dir(), f"checkpoint folder does not exist: {path}")
    require((path / "config.json").is_file(), f"not a model checkpoint (no config.json): {path}")
    require_full_precision(path)
    bar, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()  # a "Loading weights" bar per checkpoint would break our own bars
    hf_logging.set_verbosity_error()  # its MISSING/UNEXPECTED table: we raise one line instead
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, dtype=torch.float32, attn_implementation="sdpa", output_loading_info=True
        )
    except Exception as e:  # safetensors / json / transformers raise many types for a damaged folder
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "ignore_mismatched_sizes" in msg:  # transformers points at a report it logged (and we silenced)
            msg = _mismatch(path) or "its weights do not have the shapes config.json describes"
        raise QscaleError(f"cannot load checkpoint {path}: {msg}") from e
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()
    _check_loading_info(path, info)
    model = model.float().eval()
    _check_finite(path, model)
    return model
