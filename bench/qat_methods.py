"""Which method gets a model to 2–4 bits with the least loss, in the memory it has? (issue: QAT for big models)

On one checkpoint (e.g. the quick suite's largest model at its last step), for each bit width and group size:
GPTQ, full QAT (``lsq``), ``lrqat``, ``l4q``, ``efficientqat`` (Block-AP + E2E-QP), ``lsq`` + distillation and
``lsq`` + Teacher Intervention, all weight-only, the same steps, batches and learning rate. Each is measured
against the checkpoint (QiD) and against a full-precision fine-tune of the same steps (the honest control:
fine-tuning alone moves the loss too). Every run is its own process so that its peak RSS is its own; the
memory column is relative to full QAT. Example:

    python bench/qat_methods.py --ckpt qscale-runs/qid-quick/suite/l/step-000768 --bits 2,3,4 --groups 64,128
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

from qscale.data import DataConfig, load_token_streams
from qscale.data.batches import calibration_windows, eval_windows, train_batch
from qscale.evaluate.loss import evaluate
from qscale.evaluate.noise import paired_se
from qscale.models import load_model
from qscale.ptq import PTQConfig, quantize_model
from qscale.qat import DistillConfig, InterventionConfig, QATRecipeConfig, convert, qat_finetune
from qscale.qat.efficientqat import block_ap, freeze_codes
from qscale.quant import QuantSpec
from qscale.train.engine import OptimConfig, train_model

METHODS = ("fp-finetune", "gptq", "lsq", "lrqat", "l4q", "efficientqat", "lsq+distill", "lsq+ti")


def run(method: str, bits: int, G: int, args) -> dict:
    """One method in this process: its held-out loss, seconds and peak RSS."""
    torch.manual_seed(args.seed)
    model = load_model(args.ckpt)
    streams = load_token_streams(DataConfig(data=args.data, tokenizer=args.ckpt), progress=False)
    windows = eval_windows(streams.val, args.eval_windows, args.seq_len)
    base = evaluate(model, windows)

    def batches(step):
        return train_batch(streams.train, step, args.batch_size, args.seq_len, args.seed)

    t0 = time.perf_counter()
    if method == "fp-finetune":
        train_model(model, OptimConfig(lr=args.lr, weight_decay=0.0), batches, args.steps)
    elif method == "gptq":
        calib = calibration_windows(streams.train, 128, args.seq_len, args.seed)
        quantize_model(model, PTQConfig("gptq", QuantSpec(bits, True, "group", G)), calib)
    else:
        recipe = method.split("+")[0]
        cfg = QATRecipeConfig(
            recipe,
            w_bits=bits,
            a_bits=16,
            group_size=G,
            distill=DistillConfig() if method.endswith("+distill") else None,
            intervention=InterventionConfig() if method.endswith("+ti") else None,
        )
        if recipe == "efficientqat":
            block_ap(
                model, cfg, calibration_windows(streams.train, 32, args.seq_len, args.seed), steps=args.block_steps
            )
            freeze_codes(model)
        qat_finetune(model, cfg, batches, args.steps, args.lr, warmup_steps=args.steps // 10)
        convert(model)
    seconds = time.perf_counter() - t0
    res = evaluate(model, windows)
    return {
        "method": method,
        "bits": bits,
        "G": G,
        "loss": res.loss,
        "per_window": res.per_window.tolist(),
        "ckpt_loss": base.loss,
        "ckpt_per_window": base.per_window.tolist(),
        "seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True, help="checkpoint folder (with its tokenizer.json)")
    p.add_argument("--data", default=None, help="text data (default: the embedded corpus)")
    p.add_argument("--bits", default="2,3,4")
    p.add_argument("--groups", default="64,128")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--block-steps", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--eval-windows", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--one", nargs=3, metavar=("METHOD", "BITS", "G"), help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))  # OMP_NUM_THREADS=1 on a shared machine
    if args.one:
        print(json.dumps(run(args.one[0], int(args.one[1]), int(args.one[2]), args)))
        return
    passthrough = sys.argv[1:]
    methods = args.methods.split(",")
    results = []
    grid = [("fp-finetune", 16, 0)] if "fp-finetune" in methods else []
    grid += [
        (m, int(b), int(g))
        for b in args.bits.split(",")
        for g in args.groups.split(",")
        for m in methods
        if m != "fp-finetune"
    ]
    for method, bits, G in grid:
        out = subprocess.run(
            [sys.executable, __file__, *passthrough, "--one", method, str(bits), str(G)], capture_output=True, text=True
        )
        if out.returncode:
            print(f"{method} w{bits} g{G}: failed: {out.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            continue
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps({k: v for k, v in results[-1].items() if "per_window" not in k}), file=sys.stderr)
    control = next((r for r in results if r["method"] == "fp-finetune"), None)
    lsq_rss = {(r["bits"], r["G"]): r["peak_rss_mb"] for r in results if r["method"] == "lsq"}
    print(
        f"checkpoint loss {results[0]['ckpt_loss']:.4f}; fp fine-tune ({args.steps} steps) loss "
        f"{'-' if control is None else round(control['loss'], 4)}; ± = paired SE over the held-out windows"
    )
    print("| method | bits | G | loss | QiD vs ckpt | vs fp fine-tune | s | peak RSS MB | RSS / lsq |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        if r["method"] == "fp-finetune":
            continue
        qid = f"{r['loss'] - r['ckpt_loss']:+.4f} ± {paired_se(r['ckpt_per_window'], r['per_window']):.4f}"
        vs_ft = ""
        if control is not None:
            vs_ft = f"{r['loss'] - control['loss']:+.4f} ± {paired_se(control['per_window'], r['per_window']):.4f}"
        rel = lsq_rss.get((r["bits"], r["G"]))
        ratio = "" if rel is None else f"{r['peak_rss_mb'] / rel:.2f}"
        print(
            f"| {r['method']} | {r['bits']} | {r['G']} | {r['loss']:.4f} | {qid} | "
            f"{vs_ft} | {r['seconds']:.0f} | {r['peak_rss_mb']:.0f} | {ratio} |"
        )


if __name__ == "__main__":
    main()
