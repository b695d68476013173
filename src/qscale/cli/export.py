"""``qscale export SRC --format F --out DIR``: rewrite a quantized folder (a ``qscale qat`` result, or any
compressed-tensors / GPTQ / qscale folder) in another packed format, codes untouched."""

from __future__ import annotations

from pathlib import Path

import typer

from qscale.cli.common import console as make_console
from qscale.cli.pipeline import (
    FORMAT_CHOICES,
    check_out,
    export_dtype,
    formats,
    write_record,
)
from qscale.errors import require
from qscale.export import compat, export_model, load_quantized
from qscale.export.folder import copy_aux_files, quantized_layers
from qscale.export.onnx import OPSET, export_onnx

EXPORT_FORMATS = (*FORMAT_CHOICES, "onnx")


def _settings(model) -> tuple[bool, str, int | None, int | None]:
    """(symmetric, architecture, bits or None if mixed, group size or None) of a loaded quantized model."""
    specs = [layer.spec for layer in quantized_layers(model).values()]
    bits = {s.bits for s in specs}
    group = next((s.group_size for s in specs if s.granularity == "group"), None)
    arch = getattr(getattr(model, "config", None), "model_type", "unknown")
    return all(s.symmetric for s in specs), arch, bits.pop() if len(bits) == 1 else None, group


def export_command(
    src: Path = typer.Argument(..., help="Quantized folder: qscale layout (qscale qat), compressed-tensors or GPTQ."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (for --format all: one subfolder per format)."),
    fmt: str = typer.Option(
        "compressed-tensors",
        "--format",
        help="compressed-tensors, gptq, qscale, all, or onnx "
        "(a QDQ graph input_ids → logits for ONNX Runtime, fused into MatMulNBits; TensorRT reads symmetric "
        "exports only; needs the onnx extra).",
    ),
    dtype: str = typer.Option(
        "auto", "--dtype", help="dtype of full-precision tensors: auto (the source's), float32, bfloat16, float16."
    ),
) -> None:
    """Write the quantized model in SRC in another packed format (the integer codes are copied, never re-quantized)."""
    check_out(out, src, "source")
    require(fmt in EXPORT_FORMATS, f"--format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    if fmt == "onnx":
        model = load_quantized(src)
        path = export_onnx(model, out / "model.onnx")
        copy_aux_files(src, out)
        console = make_console()
        console.print(f"onnx: {path} ({path.stat().st_size / 1e6:,.2f} MB, QDQ weights, opset {OPSET})")
        for line in compat.lines("onnx", *_settings(model)):  # TensorRT refuses asymmetric graphs
            typer.echo(line)
        write_record(
            out / "qscale-export.json",
            {
                "command": "export",
                "source": str(src),
                "results": [{"format": "onnx", "path": str(path), "bytes": path.stat().st_size}],
            },
        )
        return
    fmts = formats(fmt)
    model = load_quantized(src)
    out_dtype = export_dtype(dtype, src)
    console = make_console()
    written = []
    for f in fmts:
        path = out if len(fmts) == 1 else out / f
        res = export_model(model, path, f, source=src, dtype=out_dtype)
        written.append({"format": f, "path": str(path), "bytes": res.nbytes})
        console.print(f"{f}: {path} ({res.nbytes / 1e6:,.2f} MB of weights)")
    write_record(
        out / "qscale-export.json",
        {"command": "export", "source": str(src), "dtype": str(out_dtype), "results": written},
    )
