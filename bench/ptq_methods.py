"""QiD of the PTQ methods on one checkpoint, QLLM's weight-activation quantization, and Double Rounding's
precisions from one stored model.

1. Weights only, for each bit width: RTN, GPTQ, learned-round (symmetric, group G) and learned-round with
   importance-based mixed precision at the same average bits; QiD = loss_quantized − loss_fp on held-out windows.
2. Weights and activations, W4A4 and W6A6: RTN weights with ``ste``-style per-token absmax activations and with
   QLLM's asymmetric per-token min/max activations, and ``qllm`` (those activations) with its channel reassembly
   alone and with the low-rank tuning.
3. Double Rounding: one 8-bit GPTQ model is stored and every lower precision is served from its integer codes
   (``load_quantized(path, bits=b)``), against GPTQ at b bits; with ``--dr-steps N`` also one model trained
   jointly at 8/6/4/2 bits (``double-rounding`` QAT recipe with ALRS, N steps) and served the same way, its
   QiD taken against the full-precision model fine-tuned the same N steps (QAT also trains the model).

Example (the quick suite's largest model at its last checkpoint):

    OMP_NUM_THREADS=1 nice python bench/ptq_methods.py --ckpt /work/suite-quick/l/step-XXXXXX --group-size 64
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch

from qscale.data import DataConfig, load_token_streams
from qscale.data.batches import calibration_windows, eval_windows, train_batch
from qscale.evaluate.loss import evaluate
from qscale.evaluate.noise import paired_se
from qscale.export import export_model, load_quantized
from qscale.models import load_model
from qscale.ptq import PTQConfig, quantize_model
from qscale.ptq.qllm import act_quant_spec
from qscale.qat import QATRecipeConfig, convert, prepare
from qscale.qat.doublerounding import joint_finetune
from qscale.quant import QuantSpec
from qscale.quant.ste import STEActQuantizer
from qscale.train.engine import lm_loss
from qscale.train.schedule import cosine


def _row(*cells) -> None:
    print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)


def _qid(res, ref) -> str:
    """``loss − reference loss ± paired SE`` over the same held-out windows."""
    return f"{res.loss - ref.loss:+.4f} ± {paired_se(ref.per_window, res.per_window):.4f}"


def _fp_control(fp, batches, steps: int, lr: float, windows):
    """Held-out loss of the full-precision model fine-tuned like the joint QAT run (AdamW, same schedule)."""
    model = copy.deepcopy(fp).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * cosine(step, steps, 0, 0.1, 1.0)
        opt.zero_grad(set_to_none=True)
        lm_loss(model, batches(step))[0].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return evaluate(model.eval(), windows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--bits", default="2,3,4")
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--methods", default="rtn,gptq,learned-round,learned-round-mix")
    p.add_argument("--act-bits", default="4,6", help="W=A widths for the weight-activation table ('' = skip)")
    p.add_argument("--eval-windows", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--calib-windows", type=int, default=32)
    p.add_argument("--round-steps", type=int, default=100)
    p.add_argument("--qllm-steps", type=int, default=100)
    p.add_argument("--dr-steps", type=int, default=0, help="steps of joint Double Rounding QAT (0 = skip)")
    p.add_argument("--dr-lr", type=float, default=1e-4)
    args = p.parse_args()
    torch.manual_seed(0)
    fp = load_model(args.ckpt)
    streams = load_token_streams(DataConfig(tokenizer=Path(args.ckpt)), progress=False)
    windows = eval_windows(streams.val, args.eval_windows, args.seq_len)
    calib = calibration_windows(streams.train, args.calib_windows, args.seq_len, 0)
    fp_res = evaluate(fp, windows)
    base = fp_res.loss
    G = args.group_size

    def spec(b: int) -> QuantSpec:
        return QuantSpec(b, True, "group", G)

    print(
        f"checkpoint {args.ckpt}: loss {base:.4f} ({args.eval_windows} windows x {args.seq_len}); "
        f"calibration {args.calib_windows} x {args.seq_len} train windows"
    )

    print("\nWeights only (symmetric, group G); QiD ± paired SE; vs RTN: loss − RTN's loss ± paired SE")
    _row("method", "bits", "G", "loss", "QiD", "vs RTN", "s")
    _row(*["---"] * 7)
    for bits in map(int, args.bits.split(",")):
        rtn = None
        for method in args.methods.split(","):
            model = copy.deepcopy(fp)
            t0 = time.perf_counter()
            mix = method == "learned-round-mix"
            if mix and bits == 2:  # the budget's floor: every layer gets 2 bits, the uniform run again
                _row(method, "2 (avg)", G, "= learned-round (every layer at the 2-bit floor)", "", "", "")
                continue
            cfg = PTQConfig(
                "learned-round" if mix else method,
                spec(bits),
                round_steps=args.round_steps,
                avg_bits=bits if mix else None,
            )
            quantize_model(model, cfg, calib)
            res = evaluate(model, windows)
            rtn = res if method == "rtn" else rtn
            _row(
                method,
                f"{bits}{' (avg)' if mix else ''}",
                G,
                f"{res.loss:.4f}",
                _qid(res, fp_res),
                "(reference)" if method == "rtn" else (_qid(res, rtn) if rtn is not None else ""),
                f"{time.perf_counter() - t0:.0f}",
            )

    if args.act_bits:
        print("\nWeights and activations (per-token activations: absmax for rtn, asymmetric min/max otherwise)")
        _row("method", "W", "A", "G", "loss", "QiD", "vs rtn", "s")
        _row(*["---"] * 8)
        for a in map(int, args.act_bits.split(",")):
            rtn = None
            for method, steps in (
                ("rtn", 0),
                ("rtn (asym acts)", 0),
                ("qllm (reassembly only)", 0),
                ("qllm", args.qllm_steps),
            ):
                model = copy.deepcopy(fp)
                t0 = time.perf_counter()
                asym = method == "rtn (asym acts)"
                stats = quantize_model(
                    model, PTQConfig(method.split()[0], spec(a), act_bits=16 if asym else a, qllm_steps=steps), calib
                )
                for name in stats if asym else ():
                    model.get_submodule(name).act_quantizer = STEActQuantizer(act_quant_spec(a))
                res = evaluate(model, windows)
                rtn = res if method == "rtn" else rtn
                vs = "(reference)" if method == "rtn" else _qid(res, rtn)
                _row(method, a, a, G, f"{res.loss:.4f}", _qid(res, fp_res), vs, f"{time.perf_counter() - t0:.0f}")

    print("\nDouble Rounding: one stored 8-bit model, lower precisions by re-rounding its codes")
    with tempfile.TemporaryDirectory() as tmp:
        m8 = copy.deepcopy(fp)
        quantize_model(m8, PTQConfig("gptq", spec(8)), calib)
        export_model(m8, Path(tmp) / "m8", "compressed-tensors")
        stored = {"GPTQ 8-bit": Path(tmp) / "m8"}
        bases = {"GPTQ 8-bit": fp_res}
        if args.dr_steps:

            def batches(s: int) -> torch.Tensor:
                return train_batch(streams.train, s, 4, args.seq_len, 0)

            dr = prepare(copy.deepcopy(fp), QATRecipeConfig("double-rounding", group_size=G))
            t0 = time.perf_counter()
            joint_finetune(dr, batches, args.dr_steps, args.dr_lr, bits=(8, 6, 4, 2))
            print(
                f"joint Double Rounding QAT: {args.dr_steps} steps x 4 x {args.seq_len} tokens at 8/6/4/2 bits "
                f"(ALRS), {time.perf_counter() - t0:.0f} s"
            )
            convert(dr.eval())
            export_model(dr, Path(tmp) / "dr", "qscale")
            name = f"joint QAT ({args.dr_steps} steps)"
            stored[name] = Path(tmp) / "dr"
            bases[name] = _fp_control(fp, batches, args.dr_steps, args.dr_lr, windows)
            print(
                f"its QiD is against the fp model fine-tuned the same steps on the same batches "
                f"(loss {bases[name].loss:.4f})"
            )
        _row("bits", *(f"served from {k}: QiD" for k in stored), "GPTQ at these bits: QiD")
        _row(*["---"] * (len(stored) + 2))
        for bits in (8, 6, 4, 2):
            served = [_qid(evaluate(load_quantized(path, bits=bits), windows), bases[k]) for k, path in stored.items()]
            separate = copy.deepcopy(fp)
            quantize_model(separate, PTQConfig("gptq", spec(bits)), calib)
            _row(bits, *served, _qid(evaluate(separate, windows), fp_res))


if __name__ == "__main__":
    main()
