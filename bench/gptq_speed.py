"""Seconds to GPTQ-quantize each distinct linear shape of a ~125M and a ~1B Llama, vs RTN.

Shapes ([out, in]):
  125m: hidden 768, MLP 2048, 12 heads (MHA)  -> q/k/v/o 768x768, gate/up 2048x768, down 768x2048
  1b:   TinyLlama-1.1B (hidden 2048, MLP 5632, 32 heads, 4 KV heads)
        -> q/o 2048x2048, k/v 256x2048, gate/up 5632x2048, down 2048x5632
  4096: one 4096x4096 layer (the H100 target: < 0.5 s)
Random weights; calibration inputs are random correlated activations of ``--rows`` rows (default
128 windows x 2048 tokens = 262144 rows on CUDA, 4096 rows on CPU to keep the run short). The
Hessian accumulation ("H s") is timed separately from GPTQ itself ("GPTQ s"); RTN is
``fake_quantize`` of the same weight. Defaults: CPU runs 125m only (about a minute on 2 cores);
CUDA runs all three. Example: ``python bench/gptq_speed.py --models 125m,1b --bits 4 --group-size 128``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch

from qscale.ptq import gptq_quantize
from qscale.quant import QuantSpec, fake_quantize

SHAPES = {
    "125m": {"q/k/v/o": (768, 768), "gate/up": (2048, 768), "down": (768, 2048)},
    "1b": {"q/o": (2048, 2048), "k/v": (256, 2048), "gate/up": (5632, 2048), "down": (2048, 5632)},
    "4096": {"square": (4096, 4096)},
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _output_error(D: torch.Tensor, H: torch.Tensor) -> float:
    """The layer output error ``tr(D H Dᵀ)`` of a weight error ``D`` (GPTQ's objective)."""
    return float((D @ H * D).sum())


def _timed(fn, device: torch.device, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def hessian(n_in: int, rows: int, device: torch.device, chunk: int = 16384) -> torch.Tensor:
    """``(2/n) XXᵀ`` of ``rows`` correlated random activations, accumulated chunk by chunk like hooks do."""
    g = torch.Generator(device=device).manual_seed(0)
    mix = torch.randn(n_in, n_in, device=device, generator=g) / n_in**0.5
    H = torch.zeros(n_in, n_in, device=device)
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        X = torch.randn(n, n_in, device=device, generator=g) @ mix + torch.randn(n, n_in, device=device, generator=g)
        H.addmm_(X.t(), X)
    return H * (2 / rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=None, help="comma list of 125m,1b,4096 (default: 125m on CPU, all on CUDA)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    ap.add_argument("--rows", type=int, default=None, help="calibration rows (default 262144 on CUDA, 4096 on CPU)")
    ap.add_argument("--bits", type=int, default=4, help="weight bits")
    ap.add_argument("--group-size", type=int, default=128, help="input columns per scale")
    ap.add_argument("--block-size", type=int, default=128, help="GPTQ lazy-batch block width")
    ap.add_argument("--act-order", action="store_true", help="GPTQ act-order")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats, median reported (default 3 CUDA, 1 CPU)")
    args = ap.parse_args()

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    models = (args.models or ("125m,1b,4096" if cuda else "125m")).split(",")
    rows = args.rows or (128 * 2048 if cuda else 4096)
    repeats = args.repeats or (3 if cuda else 1)
    spec = QuantSpec(args.bits, granularity="group", group_size=args.group_size)
    print(
        f"device={device} ({torch.cuda.get_device_name(device) if cuda else torch.get_num_threads()} "
        f"{'' if cuda else 'threads'}) torch={torch.__version__} spec={spec.label} rows={rows} "
        f"block={args.block_size} act_order={args.act_order} repeats={repeats}"
    )
    header = (
        f"{'model':6} {'layer':8} {'shape':>10} {'H s':>8} {'GPTQ s':>8} {'RTN s':>8} {'GPTQ/RTN':>9} "
        f"{'out err GPTQ/RTN':>17}"
    )
    print(header)
    print("-" * len(header))
    # warm up once (CUDA context, kernels, LAPACK)
    gptq_quantize(torch.randn(256, 256, device=device), torch.eye(256, device=device), spec, args.block_size)
    for model in models:
        for layer, (n_out, n_in) in SHAPES[model].items():
            W = torch.randn(n_out, n_in, device=device) * 0.02
            t_h, H = _timed(partial(hessian, n_in, rows, device), device, 1)
            gptq = partial(gptq_quantize, W, H, spec, args.block_size, act_order=args.act_order)
            t_g, res = _timed(gptq, device, repeats)
            t_r, Q = _timed(partial(fake_quantize, W, spec), device, repeats)
            ratio = _output_error(W - res.weight, H) / _output_error(W - Q, H)
            shape = f"{n_out}x{n_in}"
            print(f"{model:6} {layer:8} {shape:>10} {t_h:8.3f} {t_g:8.3f} {t_r:8.4f} {t_g / t_r:9.0f} {ratio:17.3f}")


if __name__ == "__main__":
    main()
