"""File size vs theory and peak RSS of exporting a ~125M Llama (random weights) to each packed format.

The model: hidden 768, MLP 2048, 12 layers, 12 heads, vocab 32000, untied embeddings (85M non-embedding
linear weights + 49M embedding/head parameters). Each run is a fresh process (``--one``) so that its peak
RSS (``ru_maxrss``) is its own: build the fp32 model, RTN-quantize its linear layers (G = 128, symmetric),
export. Theory = bits·weights/8 + scales + zero points (asymmetric) + GPTQ's g_idx + full-precision parts.
Peak RSS (MB) is printed for the fp32 model alone (built only), after quantization, and after the export:
the export should add about one layer, not a second copy of the model.
Example: ``python bench/export_size.py --bits 2,3,4,8``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from qscale.export import export_model, folder_bytes
from qscale.ptq import PTQConfig, quantize_model
from qscale.quant import QuantizedLinear, QuantSpec


def build() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=32000,
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=12,
        max_position_embeddings=2048,
    )
    return LlamaForCausalLM(cfg).eval()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one(fmt: str, bits: int, G: int) -> dict:
    """Build, quantize and export in this process; sizes, theory and peak RSS."""
    model = build()
    base_rss = peak_rss_mb()
    if fmt == "baseline":
        return {"format": fmt, "peak_rss_mb": base_rss}
    quantize_model(model, PTQConfig("rtn", QuantSpec(bits, True, "group", G)), None)
    layers = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    n_w = sum(m.in_features * m.out_features for m in layers)
    n_groups = sum(m.out_features * m.weight_scale.shape[1] for m in layers)
    n_fp = sum(
        t.numel()
        for k, t in model.state_dict().items()
        if not any(
            k.startswith(f"{n}.") for n in (n for n, m in model.named_modules() if isinstance(m, QuantizedLinear))
        )
    )
    scale_bytes = {"compressed-tensors": 4, "gptq": 2, "qscale": 8}[fmt]  # qscale: fp32 scale + fp32 zero
    theory = n_w * bits / 8 + n_groups * scale_bytes + n_fp * 4
    theory += {
        "gptq": n_groups * bits / 8 + 4 * sum(m.in_features for m in layers),
        "qscale": 4 * sum(m.in_features for m in layers),
        "compressed-tensors": 16 * len(layers),
    }[fmt]
    quant_rss = peak_rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        export_model(model, Path(tmp) / "out", fmt)
        seconds = time.perf_counter() - t0
        size = folder_bytes(Path(tmp) / "out")
    return {
        "format": fmt,
        "bits": bits,
        "G": G,
        "bytes": size,
        "theory": theory,
        "ratio": size / theory,
        "export_s": seconds,
        "peak_rss_mb": peak_rss_mb(),
        "peak_after_quant_mb": quant_rss,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bits", default="2,3,4,8")
    p.add_argument("--formats", default="compressed-tensors,gptq,qscale")
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--one", nargs=2, metavar=("FORMAT", "BITS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(2)
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.group_size)))
        return
    runs = [("baseline", 0)] + [(f, int(b)) for b in args.bits.split(",") for f in args.formats.split(",")]
    print(
        f"{'format':20s} {'bits':>4s} {'MB':>9s} {'theory MB':>10s} {'ratio':>7s} {'export s':>9s} "
        f"{'RSS quant':>10s} {'RSS export':>11s}"
    )
    for fmt, bits in runs:
        out = subprocess.run(
            [sys.executable, __file__, "--one", fmt, str(bits), "--group-size", str(args.group_size)],
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        if fmt == "baseline":
            print(f"{'fp32 model only':20s} {'':>4s} {'':>9s} {'':>10s} {'':>7s} {'':>9s} {r['peak_rss_mb']:10.0f}")
            continue
        print(
            f"{fmt:20s} {bits:4d} {r['bytes'] / 1e6:9.2f} {r['theory'] / 1e6:10.2f} {r['ratio']:7.4f} "
            f"{r['export_s']:9.2f} {r['peak_after_quant_mb']:10.0f} {r['peak_rss_mb']:11.0f}"
        )


if __name__ == "__main__":
    main()
