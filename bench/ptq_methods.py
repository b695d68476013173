"""QiD of the PTQ methods on one checkpoint, and Double Rounding's precisions from one stored model.

For each bit width: RTN, GPTQ and learned-round (symmetric, group G), QiD = loss_quantized − loss_fp on the
held-out windows. Then one 8-bit GPTQ model is stored and every lower precision is served from its integer
codes by Double Rounding (``load_quantized(path, bits=b)``), against models quantized separately at b bits.
Example (the quick suite's largest model at its last checkpoint):

    python bench/ptq_methods.py --ckpt qscale-runs/qid-quick/suite/l/step-000384 --bits 2,3,4 --group-size 64
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch

from qscale.data import DataConfig, load_token_streams
from qscale.data.batches import calibration_windows, eval_windows
from qscale.evaluate.loss import evaluate
from qscale.export import export_model, load_quantized
from qscale.models import load_model
from qscale.ptq import PTQConfig, quantize_model
from qscale.quant import QuantSpec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--bits", default="2,3,4")
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--methods", default="rtn,gptq,learned-round")
    p.add_argument("--eval-windows", type=int, default=128)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--calib-windows", type=int, default=64)
    p.add_argument("--round-steps", type=int, default=200)
    args = p.parse_args()
    torch.set_num_threads(2)
    fp = load_model(args.ckpt)
    streams = load_token_streams(DataConfig(tokenizer=Path(args.ckpt)), progress=False)
    windows = eval_windows(streams.val, args.eval_windows, args.seq_len)
    calib = calibration_windows(streams.train, args.calib_windows, args.seq_len, 0)
    base = evaluate(fp, windows).loss
    G = args.group_size
    print(f"checkpoint {args.ckpt}: loss {base:.4f} ({args.eval_windows} windows x {args.seq_len})")
    print("| method | bits | G | loss | QiD | s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for bits in map(int, args.bits.split(",")):
        for method in args.methods.split(","):
            model = copy.deepcopy(fp)
            t0 = time.perf_counter()
            quantize_model(model, PTQConfig(method, QuantSpec(bits, True, "group", G), round_steps=args.round_steps),
                           calib)
            loss = evaluate(model, windows).loss
            print(f"| {method} | {bits} | {G} | {loss:.4f} | {loss - base:+.4f} | {time.perf_counter() - t0:.0f} |")
    print("\nDouble Rounding: one stored 8-bit GPTQ model, lower precisions by re-rounding its codes")
    print("| bits | served from 8-bit codes: QiD | GPTQ at these bits: QiD |")
    print("| --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        m8 = copy.deepcopy(fp)
        quantize_model(m8, PTQConfig("gptq", QuantSpec(8, True, "group", G)), calib)
        export_model(m8, Path(tmp) / "m8", "compressed-tensors")
        for bits in (8, 6, 4, 2):
            served = evaluate(load_quantized(Path(tmp) / "m8", bits=bits), windows).loss
            separate = copy.deepcopy(fp)
            quantize_model(separate, PTQConfig("gptq", QuantSpec(bits, True, "group", G)), calib)
            own = evaluate(separate, windows).loss
            print(f"| {bits} | {served - base:+.4f} | {own - base:+.4f} |")


if __name__ == "__main__":
    main()
