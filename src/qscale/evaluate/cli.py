"""``qscale eval``: held-out cross-entropy and perplexity of a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from qscale.data import DataConfig, load_token_streams
from qscale.data.batches import eval_windows
from qscale.errors import require
from qscale.evaluate.loss import evaluate
from qscale.export import load_quantized
from qscale.models import load_model


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
    ckpt: Path = typer.Argument(..., help="Checkpoint folder: qscale's, any local Hugging Face causal LM, or a packed "
                                          "quantized folder (compressed-tensors, GPTQ, qscale layout)."),
    data: Path = typer.Option(None, help="Text data (.txt/.jsonl/.parquet or folder) (default: the stdlib corpus)."),
    tokenizer: Path = typer.Option(None, help="Tokenizer (default: CKPT/tokenizer.json, else a BPE trained on the data)."),
    vocab_size: int = typer.Option(4096, help="Vocabulary size when a BPE has to be trained (>= 256)."),
    windows: int = typer.Option(64, help="Number of fixed, evenly spaced validation windows."),
    seq_len: int = typer.Option(None, help="Tokens per window (default: the checkpoint's training length, else 128)."),
    batch_size: int = typer.Option(16, help="Windows per forward pass."),
    max_files: int = typer.Option(None, help="Use at most this many documents of the corpus."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
) -> None:
    """Mean cross-entropy (nats/token) and perplexity of CKPT on held-out windows."""
    require(windows >= 1, f"--windows must be >= 1, got {windows}")
    require(batch_size >= 1, f"--batch-size must be >= 1, got {batch_size}")
    require(seq_len is None or seq_len >= 1, f"--seq-len must be >= 1, got {seq_len}")
    require(ckpt.is_dir(), f"checkpoint folder does not exist: {ckpt}")
    if tokenizer is None and (ckpt / "tokenizer.json").is_file():
        tokenizer = ckpt / "tokenizer.json"
    model = load_quantized(ckpt) if _is_quantized(ckpt) else load_model(ckpt)
    streams = load_token_streams(DataConfig(data=data, tokenizer=tokenizer, vocab_size=vocab_size, max_files=max_files),
                                 progress=not as_json)
    n_emb = model.get_input_embeddings().num_embeddings
    require(streams.vocab_size <= n_emb,
            f"tokenizer has {streams.vocab_size} tokens but model {ckpt} only {n_emb} embeddings")
    seq_len = seq_len or _checkpoint_seq_len(ckpt)
    result = evaluate(model, eval_windows(streams.val, windows, seq_len), batch_size=batch_size, progress=not as_json)
    if as_json:
        typer.echo(json.dumps({"checkpoint": str(ckpt), "loss": result.loss, "ppl": result.ppl,
                               "n_tokens": result.n_tokens, "windows": windows, "seq_len": seq_len}))
    else:
        typer.echo(f"{ckpt}: loss {result.loss:.4f} nats/token, perplexity {result.ppl:.3f} "
                   f"({windows} windows x {seq_len} tokens)")
