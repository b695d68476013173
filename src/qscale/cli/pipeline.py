"""What ``qscale quantize`` and ``qscale qat`` share: a user's model folder, its tokenizer, held-out loss, the
folders written and evaluated as shipped, the run record."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from qscale.data import DataConfig, TokenStreams, load_token_streams
from qscale.data.batches import check_eval_windows, eval_windows
from qscale.errors import require
from qscale.evaluate.loss import EvalResult, evaluate
from qscale.evaluate.noise import paired_se
from qscale.export import ExportResult, export_model, load_quantized
from qscale.models.load import model_positions
from qscale.paths import check_out_folder, outside
from qscale.provenance import atomic_write_json, versions

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
FORMAT_CHOICES = ("compressed-tensors", "gptq", "qscale", "all")
EVAL_DATA_HELP = (
    "Held-out text: only its validation split is used, as for training data (of a folder, the ~5% of "
    "files whose path hash falls in the validation bucket; of a single file, its last 5% of "
    "characters). Default: the embedded corpus."
)


def check_out(out: Path, source: Path, what: str = "model") -> None:
    """``--out`` may be new, empty, or a previous qscale output (replaced); never an unrelated folder, a file, a
    place that cannot be written, or the source folder or a folder inside it."""
    outside(out, source, what)
    check_out_folder(out)
    if out.exists():
        ours = any((out / f).is_file() for f in ("qscale-quantize.json", "qscale-qat.json", "qscale-export.json"))
        require(
            ours or not any(out.iterdir()),
            f"--out {out} exists and is not a qscale output: choose another folder or remove it",
        )


def check_group_widths(layers: dict[str, nn.Module], group_size: int | None) -> None:
    """compressed-tensors needs ``--group-size`` to divide every quantized layer's input width (checked before
    any calibration or training, not when the folder is written)."""
    if not group_size:
        return
    for name, layer in layers.items():
        width = layer.weight.shape[0] if isinstance(layer, Conv1D) else layer.in_features
        require(
            width % group_size == 0,
            f"--group-size {group_size} does not divide the {width} input columns of layer {name}, which "
            f"compressed-tensors needs: use a --group-size that divides {width}, 0 (per channel), or "
            "--format qscale",
        )


def token_streams(data: Path | None, tokenizer: Path, progress: bool) -> TokenStreams:
    return load_token_streams(DataConfig(data=data, tokenizer=tokenizer), progress=progress)


def check_vocab(model: nn.Module, streams: TokenStreams, model_dir: Path) -> None:
    n_emb = model.get_input_embeddings().num_embeddings
    require(
        streams.vocab_size <= n_emb,
        f"the tokenizer has {streams.vocab_size} tokens but model {model_dir} only {n_emb} embeddings: "
        "pass the model's own tokenizer with --tokenizer",
    )


def held_out(model: nn.Module, streams: TokenStreams, windows: int, seq_len: int) -> torch.Tensor:
    """``windows`` fixed evaluation windows of ``seq_len`` tokens from the validation split."""
    require(windows >= 2, f"--eval-windows must be >= 2 (the paired standard error needs two), got {windows}")
    limit = model_positions(model)
    require(limit is None or seq_len <= limit, f"--seq-len {seq_len} exceeds the model's {limit} positions")
    check_eval_windows(len(streams.val), windows, seq_len)
    return eval_windows(streams.val, windows, seq_len)


def export_dtype(name: str, model_dir: Path) -> torch.dtype:
    """``--dtype``: "auto" = the source checkpoint's ``torch_dtype`` (float32 if it does not say)."""
    if name == "auto":
        try:
            cfg = json.loads((model_dir / "config.json").read_text())
        except (OSError, ValueError):
            cfg = {}
        name = str(cfg.get("torch_dtype") or cfg.get("dtype") or "float32")
        name = name if name in DTYPES else "float32"
    require(name in DTYPES, f"--dtype must be auto or one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


def formats(fmt: str) -> list[str]:
    require(fmt in FORMAT_CHOICES, f"--format must be one of {', '.join(FORMAT_CHOICES)}, got {fmt!r}")
    return ["compressed-tensors", "gptq"] if fmt == "all" else [fmt]


@dataclass
class FormatResult:
    """One written folder, its size and its held-out loss against the full-precision model."""

    export: ExportResult
    loss: float
    qid: float
    qid_se: float


def export_and_evaluate(
    model: nn.Module,
    out: Path,
    fmts: list[str],
    source: Path,
    dtype: torch.dtype,
    windows: torch.Tensor,
    fp: EvalResult,
    progress: bool,
) -> list[FormatResult]:
    """Export to each format (``out`` itself, or ``out/<format>`` for several) and evaluate the folder as
    written, loaded back with ``load_quantized``: the loss reported is that of the files shipped."""
    results = []
    for fmt in fmts:
        path = out if len(fmts) == 1 else out / fmt
        exp = export_model(model, path, fmt, source=source, dtype=dtype)
        loaded = load_quantized(path)
        q = evaluate(loaded, windows, progress=progress)
        require(np.isfinite(q.loss), f"the {fmt} model's loss is not finite ({q.loss}): it cannot be right")
        results.append(FormatResult(exp, q.loss, q.loss - fp.loss, paired_se(fp.per_window, q.per_window)))
    return results


def write_record(path: Path, record: dict) -> None:
    """The run's record: its config, seed, versions, data and tokenizer fingerprints and results."""
    atomic_write_json(path, {**record, "versions": versions()})
