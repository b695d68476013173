"""The seeds' remaining QAT methods against ``lsq`` at the same bits and steps (issue 14).

On one checkpoint (the quick suite's largest model at its last step), each method is trained the same steps,
batches and learning rate and evaluated on the same held-out windows:

- weight-only W``--bits`` g``--group``: ``lsq``, ``qvgen`` (auxiliary branches, rank decay to 0), ``gaqat``
  (SAM + scale-gradient freezing), ``efficientdm`` (QALoRA, data-free: trained on the fp model's own samples);
- weight-activation W4A4: ``lsq`` and ``edgeqat`` (q/k quantized, entropy + distribution terms and logit
  distillation, the more important 50% of the tokens at 8 bits);
- 2-bit storage, A8: ``bitnet`` (b1.58 ternary in the 2-bit packing) and ``ifairy`` (two {±1, ±i} phase stages,
  the same packed bytes);
- the control: a full-precision fine-tune of the same steps (fine-tuning alone moves the loss).

δ = loss − loss of the reference method at the same bits (``lsq``, or ``bitnet`` for ``ifairy``), ± its paired
standard error over the windows; QiD = loss −
checkpoint loss. Every run is its own process. Example:

    OMP_NUM_THREADS=1 nice python bench/qat_seeds.py --ckpt /work/study-quick/suite-quick-seed0/l/step-000384
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time

import numpy as np
import torch

from qscale.data import DataConfig, load_token_streams
from qscale.data.batches import eval_windows, train_batch
from qscale.evaluate.loss import evaluate
from qscale.evaluate.noise import paired_se
from qscale.models import load_model
from qscale.qat import QATRecipeConfig, convert, qat_finetune
from qscale.qat.efficientdm import EfficientDMOptions, self_generated_batches
from qscale.train.engine import OptimConfig, train_model

RUNS = {  # name: (recipe, w_bits, a_bits, reference)
    "fp-finetune": (None, 16, 16, None),
    "lsq": ("lsq", None, 16, None),
    "qvgen": ("qvgen", None, 16, "lsq"),
    "gaqat": ("gaqat", None, 16, "lsq"),
    "efficientdm": ("efficientdm", None, 16, "lsq"),
    "lsq-w4a4": ("lsq", 4, 4, None),
    "edgeqat-w4a4": ("edgeqat", 4, 4, "lsq-w4a4"),
    "bitnet": ("bitnet", 2, 8, None),
    "ifairy": ("ifairy", 2, 8, "bitnet"),
}


def run(name: str, args) -> dict:
    """One method in this process: its held-out loss and seconds."""
    torch.manual_seed(args.seed)
    model = load_model(args.ckpt)
    streams = load_token_streams(DataConfig(data=args.data, tokenizer=args.ckpt), progress=False)
    windows = eval_windows(streams.val, args.eval_windows, args.seq_len)
    base = evaluate(model, windows).loss
    recipe, w_bits, a_bits, _ = RUNS[name]

    def batches(step):
        return train_batch(streams.train, step, args.batch_size, args.seq_len, args.seed)

    t0 = time.perf_counter()
    extra = {}
    if recipe is None:
        train_model(model, OptimConfig(lr=args.lr, warmup=args.steps // 10), batches, args.steps)
    else:
        cfg = QATRecipeConfig(
            recipe,
            w_bits=w_bits or args.bits,
            a_bits=a_bits,
            group_size=args.group,
            rank=args.rank,
            options=EfficientDMOptions(samples=args.samples) if recipe == "efficientdm" else None,
        )
        teacher = None
        if recipe == "efficientdm":  # data-free: the fp model's own samples replace the corpus batches
            teacher = copy.deepcopy(model)
            batches = self_generated_batches(teacher, cfg.options, args.batch_size, args.seq_len, args.seed)
        losses = qat_finetune(model, cfg, batches, args.steps, args.lr, teacher=teacher, warmup_steps=args.steps // 10)
        convert(model)
        extra = {"label": cfg.label, "train_first": losses[0], "train_last": losses[-1]}
    seconds = time.perf_counter() - t0
    res = evaluate(model, windows)
    return {
        "method": name,
        "loss": res.loss,
        "ckpt_loss": base,
        "seconds": seconds,
        "per_window": [float(x) for x in res.per_window],
        **extra,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True, help="checkpoint folder (with its tokenizer.json)")
    p.add_argument("--data", default=None, help="text data (default: the embedded corpus)")
    p.add_argument("--methods", default=",".join(RUNS))
    p.add_argument("--bits", type=int, default=2, help="weight bits of the weight-only group")
    p.add_argument("--group", type=int, default=64)
    p.add_argument("--rank", type=int, default=8, help="qvgen / efficientdm rank")
    p.add_argument("--samples", type=int, default=64, help="efficientdm: sequences sampled from the fp model")
    p.add_argument("--steps", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--eval-windows", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.one:
        print(json.dumps(run(args.one, args)))
        return
    passthrough = sys.argv[1:]
    results = {}
    for name in args.methods.split(","):
        out = subprocess.run(
            [sys.executable, __file__, *passthrough, "--one", name], capture_output=True, text=True, check=False
        )
        if out.returncode:
            print(f"{name}: failed: {out.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            continue
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps({k: v for k, v in results[name].items() if k != "per_window"}), file=sys.stderr)
    first = next(iter(results.values()))
    control = results.get("fp-finetune", {}).get("loss")
    print(
        f"checkpoint {args.ckpt}: loss {first['ckpt_loss']:.4f}; fp fine-tune ({args.steps} steps) "
        f"{'-' if control is None else f'{control:.4f}'}; {args.eval_windows} windows x {args.seq_len} tokens"
    )
    print("| method | config | loss | δ vs reference | QiD vs ckpt | vs fp fine-tune | train loss first → last | s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        if name == "fp-finetune":
            continue
        ref = RUNS[name][3]
        delta = ""
        if ref in results:
            se = paired_se(np.array(results[ref]["per_window"]), np.array(r["per_window"]))
            delta = f"{r['loss'] - results[ref]['loss']:+.4f} ± {se:.4f} (vs {ref})"
        vs_ft = "" if control is None else f"{r['loss'] - control:+.4f}"
        print(
            f"| {name} | {r['label']} | {r['loss']:.4f} | {delta} | {r['loss'] - r['ckpt_loss']:+.4f} | {vs_ft} | "
            f"{r['train_first']:.3f} → {r['train_last']:.3f} | {r['seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
