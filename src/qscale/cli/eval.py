"""``qscale eval``: held-out cross-entropy and perplexity of a checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer

from qscale.data import DataConfig, load_token_streams
from qscale.data.batches import eval_windows
from qscale.data.tokenizer import model_tokenizer
from qscale.errors import require
from qscale.evaluate.loss import evaluate
from qscale.export import load_quantized
from qscale.models import load_model
from qscale.models.load import model_positions
from qscale.train.fingerprint import check_parent_tokenizer, parent_checkpoint


def _checkpoint_seq_len(ckpt: Path) -> int:
    meta = ckpt / "qscale.json"
    if meta.is_file():
        try:
            return int(json.loads(meta.read_text())["config"]["seq_len"])
        except (ValueError, KeyError, TypeError):
            pass
    return 128


def _is_quantized(ckpt: Path) -> bool:
    """Whether the folder's config.json declares a quantization_config (a packed folder)."""
    try:
        return bool(json.loads((ckpt / "config.json").read_text()).get("quantization_config"))
    except (OSError, ValueError):
        return False


def eval_command(
    ckpt: Path = typer.Argument(
        ...,
        help="Checkpoint folder: qscale's, any local Hugging Face causal LM, or a packed "
        "quantized folder (compressed-tensors, GPTQ, qscale layout).",
    ),
    data: Path = typer.Option(None, help="Text data (.txt/.jsonl/.parquet or folder) (default: the stdlib corpus)."),
    tokenizer: Path = typer.Option(None, help="Tokenizer (default: the one in CKPT; an error if it has none)."),
    windows: int = typer.Option(64, help="Number of fixed, evenly spaced validation windows."),
    seq_len: int = typer.Option(None, help="Tokens per window (default: the checkpoint's training length, else 128)."),
    batch_size: int = typer.Option(16, help="Windows per forward pass."),
    max_files: int = typer.Option(None, help="Use at most this many documents of the corpus."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
    bits: int = typer.Option(
        None,
        "--bits",
        help="Packed symmetric folder: serve this lower precision by re-rounding "
        "the stored integer codes (Double Rounding).",
    ),
) -> None:
    """Mean cross-entropy (nats/token) and perplexity of CKPT on held-out windows."""
    require(windows >= 1, f"--windows must be >= 1, got {windows}")
    require(batch_size >= 1, f"--batch-size must be >= 1, got {batch_size}")
    require(seq_len is None or seq_len >= 1, f"--seq-len must be >= 1, got {seq_len}")
    require(ckpt.is_dir(), f"checkpoint folder does not exist: {ckpt}")
    require(bits is None or _is_quantized(ckpt), "--bits applies to packed quantized folders only")
    model = load_quantized(ckpt, bits=bits) if _is_quantized(ckpt) else load_model(ckpt)
    tokenizer = model_tokenizer(ckpt, tokenizer)
    seq_len = seq_len or _checkpoint_seq_len(ckpt)
    positions = model_positions(model)
    require(
        positions is None or seq_len <= positions,
        f"--seq-len {seq_len} is longer than the {positions} positions model {ckpt} supports",
    )
    streams = load_token_streams(DataConfig(data=data, tokenizer=tokenizer, max_files=max_files), progress=not as_json)
    check_parent_tokenizer(parent_checkpoint(ckpt), streams.tokenizer_hash)
    n_emb = model.get_input_embeddings().num_embeddings
    require(
        streams.vocab_size <= n_emb,
        f"tokenizer has {streams.vocab_size} tokens but model {ckpt} only {n_emb} embeddings: pass the tokenizer "
        "the model was trained with (--tokenizer)",
    )
    result = evaluate(model, eval_windows(streams.val, windows, seq_len), batch_size=batch_size, progress=not as_json)
    require(math.isfinite(result.loss), f"the loss of {ckpt} is not finite ({result.loss}): the model overflows")
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "checkpoint": str(ckpt),
                    "loss": result.loss,
                    "ppl": result.ppl,
                    "n_tokens": result.n_tokens,
                    "windows": windows,
                    "seq_len": seq_len,
                    "fingerprints": {"data": streams.data_fingerprint, "tokenizer": streams.tokenizer_hash},
                }
            )
        )
    else:
        typer.echo(
            f"{ckpt}: loss {result.loss:.4f} nats/token, perplexity {result.ppl:.3f} "
            f"({windows} windows x {seq_len} tokens)"
        )
