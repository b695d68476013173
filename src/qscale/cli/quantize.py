"""``qscale quantize MODEL_DIR --out DIR``: PTQ of any local HF causal LM to a packed low-bit folder, with its QiD."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from transformers.pytorch_utils import Conv1D

from qscale.cli.common import console as make_console
from qscale.cli.common import given
from qscale.cli.output import report
from qscale.cli.pipeline import (
    EVAL_DATA_HELP,
    FORMAT_CHOICES,
    check_group_widths,
    check_out,
    check_vocab,
    export_and_evaluate,
    export_dtype,
    formats,
    held_out,
    token_streams,
    write_record,
)
from qscale.data.batches import calibration_windows
from qscale.data.tokenizer import model_tokenizer
from qscale.errors import QscaleError, require
from qscale.evaluate.loss import evaluate
from qscale.export import compat, folder_bytes
from qscale.export.gptq import GPTQ_BITS
from qscale.models import count_params, load_model
from qscale.provenance import seed_everything, to_jsonable
from qscale.ptq import PTQConfig, quantize_model
from qscale.ptq.config import GPTQ_ORDERS
from qscale.ptq.layers import quantizable
from qscale.ptq.registry import PTQ_METHODS
from qscale.quant import QuantSpec


def _check_flags(method: str, act_order: bool, avg_bits: float | None, gptq_order: str | None) -> None:
    """Options the chosen method would ignore are refused, by their flag names."""
    require(method in PTQ_METHODS, f"--method must be one of {', '.join(PTQ_METHODS)}, got {method!r}")
    require(
        not act_order or method == "gptq",
        f"--act-order applies to --method gptq only (it orders GPTQ's column updates); {method} would ignore it",
    )
    if gptq_order is not None:
        require(
            gptq_order in GPTQ_ORDERS,
            f"--gptq-order must be one of {', '.join(GPTQ_ORDERS)}, got {gptq_order!r}",
        )
        require(method == "gptq", f"--gptq-order applies to --method gptq only; {method} would ignore it")
    if avg_bits is not None:
        require(
            method == "learned-round",
            f"--avg-bits (mixed precision) applies to --method learned-round only, not {method}",
        )
        require(2 <= avg_bits <= 8, f"--avg-bits must be in 2..8, got {avg_bits:g}")


def _check_formats(model, cfg: PTQConfig, fmts: list[str]) -> None:
    """Fail before calibrating when a requested format cannot hold the result."""
    targets = quantizable(model, cfg.skip)
    if "compressed-tensors" in fmts and any(isinstance(m, Conv1D) for m in targets.values()):
        raise QscaleError(
            "compressed-tensors only replaces nn.Linear modules; this model's linear layers are GPT-2 "
            "style Conv1D: use --format gptq or qscale"
        )
    if "compressed-tensors" in fmts:
        check_group_widths(targets, cfg.spec.group_size)
    if cfg.method == "qllm" or cfg.act_bits != 16:
        require(
            fmts == ["qscale"],
            "quantized activations (--act-bits) and QLLM's channel reassembly are stored by --format qscale only",
        )
    require(
        "gptq" not in fmts or cfg.avg_bits is None,
        "GPTQ checkpoints hold one bit width: mixed precision (--avg-bits) needs --format compressed-tensors or qscale",
    )
    require(
        "gptq" not in fmts or cfg.spec.bits in GPTQ_BITS,
        f"GPTQ checkpoints hold {', '.join(map(str, GPTQ_BITS))} bits, not {cfg.spec.bits}: use --format "
        "compressed-tensors or qscale",
    )


def quantize_command(
    ctx: typer.Context,
    model_dir: Path = typer.Argument(
        ..., help="Local Hugging Face causal-LM folder (Llama, GPT-NeoX/Pythia, GPT-2, ...)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (for --format all: one subfolder per format)."),
    method: str = typer.Option("gptq", help=f"PTQ method: {', '.join(PTQ_METHODS)}."),
    bits: int = typer.Option(4, help="Weight bit width, 2..8."),
    avg_bits: float = typer.Option(
        None,
        "--avg-bits",
        help=(
            "learned-round: importance-based mixed precision, 2..8 bits per layer averaging this (replaces --bits); "
            "compressed-tensors or qscale."
        ),
    ),
    act_bits: int = typer.Option(
        16,
        "--act-bits",
        help=(
            "Input-activation bits (per-token absmax; qllm: asymmetric min/max; 2..8); 16 = weights only. Needs "
            "--format qscale."
        ),
    ),
    group_size: int = typer.Option(
        128, "--group-size", "-g", help="Input columns per scale; 0 = one scale per output channel."
    ),
    sym: bool = typer.Option(
        True,
        "--sym/--asym",
        help="Symmetric grid (s = 2·absmax/(2^b−1), GPTQ/compressed-tensors) or asymmetric with zero points.",
    ),
    act_order: bool = typer.Option(
        False,
        "--act-order/--no-act-order",
        help="GPTQ only: quantize columns by decreasing Hessian diagonal (static groups).",
    ),
    gptq_order: str = typer.Option(
        None,
        "--gptq-order",
        help=(
            "GPTQ only: sequential (default; each of q/k/v, o, gate/up, down calibrated on the block with the "
            "earlier ones quantized) or block (one calibration pass per block, llm-compressor's)."
        ),
        show_default=False,
    ),
    skip: list[str] = typer.Option(
        ["*lm_head"],
        "--skip",
        help="Layers kept in full precision (glob or re:regex on the qualified name; repeat). Embeddings always are.",
    ),
    calib_data: Path = typer.Option(
        None,
        "--calib-data",
        help="Calibration text (.txt/.jsonl/.parquet or folder; train split; not for rtn). Default: embedded corpus.",
    ),
    calib_windows: int = typer.Option(
        128, "--calib-windows", help="Calibration windows (gptq, learned-round, qllm; rtn takes none)."
    ),
    eval_data: Path = typer.Option(None, "--eval-data", help=EVAL_DATA_HELP),
    eval_windows: int = typer.Option(64, "--eval-windows", help="Held-out windows for the loss before and after."),
    seq_len: int = typer.Option(256, "--seq-len", help="Tokens per calibration and evaluation window."),
    tokenizer: Path = typer.Option(None, "--tokenizer", help="Tokenizer (default: the model folder's own)."),
    fmt: str = typer.Option(
        "compressed-tensors",
        "--format",
        help=f"Output format: {', '.join(FORMAT_CHOICES)} (all = compressed-tensors + gptq).",
    ),
    dtype: str = typer.Option(
        "auto",
        "--dtype",
        help=(
            "dtype of full-precision tensors and compressed-tensors scales: auto (the source's), float32, bfloat16, "
            "float16."
        ),
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the calibration windows."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars on stderr."),
) -> None:
    """Quantize MODEL_DIR (PTQ: gptq, rtn, learned-round or qllm) into a packed folder, and print the loss it cost."""
    t0 = time.perf_counter()
    require(2 <= bits <= 8, f"--bits must be in 2..8, got {bits}")
    require(group_size >= 0, f"--group-size must be >= 0 (0 = per channel), got {group_size}")
    require(calib_windows >= 1, f"--calib-windows must be >= 1, got {calib_windows}")
    require(seq_len >= 1, f"--seq-len must be >= 1, got {seq_len}")
    require(seed >= 0, f"--seed must be >= 0, got {seed}")
    check_out(out, model_dir, "model")
    _check_flags(method, act_order, avg_bits, gptq_order)
    for flag, name in (("--calib-data", "calib_data"), ("--calib-windows", "calib_windows")):
        require(method != "rtn" or not given(ctx, name), f"{flag}: --method rtn uses no calibration data")
    fmts = formats(fmt)
    spec = QuantSpec(bits, sym, "group" if group_size else "channel", group_size or None)
    cfg = PTQConfig(
        method,
        spec,
        n_calib=calib_windows,
        calib_seq_len=seq_len,
        act_order=act_order,
        gptq_order=gptq_order or "sequential",
        skip=tuple(skip),
        act_bits=act_bits,
        avg_bits=avg_bits,
    )
    out_dtype = export_dtype(dtype, model_dir)
    console = make_console(stderr=True)
    seed_everything(seed)

    model = load_model(model_dir)
    counts = count_params(model)
    _check_formats(model, cfg, fmts)
    tok = model_tokenizer(model_dir, tokenizer)
    eval_streams = token_streams(eval_data, tok, progress)
    calib_streams = None
    if method != "rtn":
        calib_streams = eval_streams if calib_data == eval_data else token_streams(calib_data, tok, progress)
    check_vocab(model, eval_streams, model_dir)
    windows = held_out(model, eval_streams, eval_windows, seq_len)
    fp = evaluate(model, windows, progress=progress)
    calib = None if calib_streams is None else calibration_windows(calib_streams.train, calib_windows, seq_len, seed)
    stats = quantize_model(model, cfg, calib, progress=progress)
    require(stats, f"no linear layer of {model_dir} was selected for quantization (check --skip)")
    results = export_and_evaluate(model, out, fmts, model_dir, out_dtype, windows, fp, progress)

    acts = (f" a{act_bits}" if act_bits != 16 else "") + (f" avg {avg_bits:g} bits" if avg_bits else "")
    label = spec.label.replace(f"w{bits}", "wmix", 1) if avg_bits else spec.label
    orders = (" act-order" if act_order else "") + (" block-order" if cfg.gptq_order == "block" else "")
    title = f"{method} {label}{acts}{orders}: {model_dir}"
    report(title, counts, fp, results, folder_bytes(model_dir))
    for r in results:  # which loader reads what was written, and what to use where one cannot
        for line in compat.lines(
            r.export.format, sym, model.config.model_type, None if avg_bits else bits, group_size or None
        ):
            typer.echo(line)
    record = {
        "command": "quantize",
        "model": str(model_dir),
        "config": to_jsonable(cfg),
        "seed": seed,
        "dtype": str(out_dtype),
        "tokenizer": str(tok),
        "tokenizer_hash": eval_streams.tokenizer_hash,
        "data_fingerprint": eval_streams.data_fingerprint,
        "calib_fingerprint": None if calib_streams is None else calib_streams.data_fingerprint,
        "eval_data": str(eval_data or "embedded"),
        "calib_data": None if calib_streams is None else str(calib_data or "embedded"),
        "eval_windows": eval_windows,
        "seq_len": seq_len,
        "loss_fp": fp.loss,
        "results": [
            {
                "format": r.export.format,
                "path": str(r.export.path),
                "bytes": r.export.nbytes,
                "loss": r.loss,
                "qid": r.qid,
                "qid_se": r.qid_se,
            }
            for r in results
        ],
        "layers": stats,
        "seconds": time.perf_counter() - t0,
    }
    write_record(out / "qscale-quantize.json", record)
    console.print(f"done in {time.perf_counter() - t0:.1f} s; record: {out / 'qscale-quantize.json'}")
