"""GPTQ side by side: qscale vs llm-compressor (and GPTQModel where it quantizes on CPU) on one model.

Same model, same calibration windows (128 x 256 tokens), same settings: 4-bit symmetric, group G, block 128,
dampening 0.01, no act-order, ``lm_head`` kept in full precision, one torch thread. Each tool runs in its
own process (this file with ``--worker``); the time is the quantization call alone (wall and the process's
CPU seconds), and so is the first peak RSS (VmHWM reset just before the call: the loaded model, the runtime
and what the call adds); the second is the whole process's (``os.wait4``: load, quantization and the held-out
evaluation of the quantized model). The full-precision held-out losses come from one separate process.
Held-out QiD = mean over windows of ``loss_quantized - loss_fp``, with its paired standard error; the tools
are compared window by window (paired difference of their quantized losses). Printed as ratios qscale / peer.

Models: ``--model random`` (default) is a 42M-parameter Llama with random weights built in code (hidden 768,
6 layers, FFN 2048, 12 heads, vocabulary 1024, tokens from the embedded corpus with a 1024-token BPE);
``--model DIR`` is a trained HF folder with its tokenizer (e.g. ``qscale train --size l``'s last checkpoint).

The peers live in their own venv, never a project dependency::

    python3 -m venv /tmp/peers && /tmp/peers/bin/pip install torch==2.13.0 llmcompressor==0.14.0.1

GPTQModel 7.7.0 wants transformers >= 5.20 (llm-compressor 0.14 installs 5.17): it runs under
``--gptqmodel-python`` (default: this interpreter; the project's test extra installs it with ``--no-deps``)::

    python bench/gptq_peers.py --peers-python /tmp/peers/bin/python                       # 42M random, group 128
    python bench/gptq_peers.py --model /tmp/l/step-000384 -g 32 --peers-python /tmp/peers/bin/python

qscale runs under the interpreter running this file (the project's venv).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOOLS = ("qscale", "qscale-block", "llm-compressor", "gptqmodel")


def window_losses(model, windows, batch: int = 8) -> list[float]:
    """Mean next-token NLL of each window (nats/token)."""
    import torch
    import torch.nn.functional as F

    out = []
    with torch.no_grad():
        for ids in windows.split(batch):
            logits = model(input_ids=ids).logits[:, :-1].float()
            nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
            out += nll.mean(1).tolist()
    return out


def _quantize(tool: str, model, model_dir: str, calib, group: int):
    """Run one tool's GPTQ on ``model`` in place (or return its own quantized model)."""
    if tool.startswith("qscale"):
        from qscale.ptq import PTQConfig, quantize_model
        from qscale.quant import QuantSpec

        spec = QuantSpec(4, True, "group", group)
        order = "block" if tool == "qscale-block" else "sequential"
        cfg = PTQConfig("gptq", spec, block_size=128, damp=0.01, skip=("*lm_head",), gptq_order=order)
        quantize_model(model, cfg, calib)
        return model
    if tool == "llm-compressor":
        from datasets import Dataset
        from llmcompressor import oneshot
        from llmcompressor.modifiers.quantization import GPTQModifier

        scheme = {
            "group_0": {
                "targets": ["Linear"],
                "weights": {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": group},
            }
        }
        ds = Dataset.from_dict({"input_ids": calib.tolist(), "attention_mask": [[1] * calib.shape[1]] * len(calib)})
        recipe = GPTQModifier(
            config_groups=scheme, ignore=["lm_head"], block_size=128, dampening_frac=0.01, actorder=None
        )
        oneshot(
            model=model,
            dataset=ds,
            recipe=recipe,
            num_calibration_samples=len(calib),
            max_seq_length=calib.shape[1],
            shuffle_calibration_samples=False,
        )
        return model
    from gptqmodel import GPTQModel, QuantizeConfig

    qcfg = QuantizeConfig(bits=4, group_size=group, sym=True, desc_act=False, damp_percent=0.01)
    gm = GPTQModel.load(model_dir, qcfg, device="cpu")
    gm.quantize([{"input_ids": w.tolist(), "attention_mask": [1] * len(w)} for w in calib], batch_size=1)
    return gm.model


def _hwm_mb() -> float:
    """This process's peak RSS since the last ``_reset_hwm`` (VmHWM), in MB."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def _reset_hwm() -> bool:
    """Reset the peak-RSS mark to the current RSS (Linux >= 4.0: ``5`` into ``clear_refs``); False if not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def worker(args: argparse.Namespace) -> None:
    """One tool in its own process: load, quantize (timed; its own peak RSS), evaluate the held-out windows.

    The ``fp`` worker evaluates the unquantized model once for every tool, so a tool's process never holds
    the full-precision evaluation's transient memory before its quantization call.
    """
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    data = load_file(args.data)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    if args.worker == "fp":
        Path(args.out).write_text(json.dumps({"fp": window_losses(model, data["held"])}))
        return
    reset = _reset_hwm()
    t0, c0 = time.perf_counter(), time.process_time()
    qmodel = _quantize(args.worker, model, args.model, data["calib"], args.group_size)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    quant_mb = _hwm_mb() if reset else float("nan")
    q = window_losses(qmodel.eval(), data["held"])
    Path(args.out).write_text(json.dumps({"wall": wall, "cpu": cpu, "quant_rss_mb": quant_mb, "q": q}))


def _prepare(args: argparse.Namespace, folder: Path) -> tuple[str, str]:
    """Model folder and data file (calibration and held-out windows) shared by every tool."""
    import torch
    from safetensors.torch import save_file

    from qscale.data import DataConfig, load_token_streams
    from qscale.data.batches import calibration_windows, eval_windows

    if args.model == "random":
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        cfg = LlamaConfig(
            vocab_size=1024,
            hidden_size=768,
            intermediate_size=2048,
            num_hidden_layers=6,
            num_attention_heads=12,
            num_key_value_heads=12,
            max_position_embeddings=args.seq_len,
            tie_word_embeddings=False,
        )
        model_dir = folder / "model"
        LlamaForCausalLM(cfg).save_pretrained(model_dir)
        streams = load_token_streams(DataConfig(vocab_size=1024), progress=False)
        streams.tokenizer.save(str(model_dir / "tokenizer.json"))  # GPTQModel.load wants one
    else:
        from qscale.data.tokenizer import model_tokenizer

        model_dir = Path(args.model)
        streams = load_token_streams(DataConfig(tokenizer=model_tokenizer(model_dir, None)), progress=False)
    calib = calibration_windows(streams.train, args.calib_windows, args.seq_len, seed=0)
    held = eval_windows(streams.val, args.eval_windows, args.seq_len)
    data = folder / "data.safetensors"
    save_file({"calib": calib.contiguous(), "held": held.contiguous()}, str(data))
    return str(model_dir), str(data)


def _run(tool: str, python: str, model: str, data: str, group: int, folder: Path) -> dict:
    out = folder / f"{tool}.json"
    cmd = [python, __file__, "--worker", tool, "--model", model, "--data", data, "-g", str(group), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["GPTQMODEL_CPU_WORKERS"] = "2"  # its loader asks for a pool of 2 CPU workers and refuses fewer
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    log = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own resource usage (peak RSS)
    proc.returncode = os.waitstatus_to_exitcode(status)
    (folder / f"{tool}.log").write_text(log)
    if proc.returncode != 0 or not out.is_file():
        return {"error": log.strip().splitlines()[-1] if log.strip() else f"exit {proc.returncode}"}
    return {**json.loads(out.read_text()), "rss_mb": usage.ru_maxrss / 1024}


def _mean_se(d: list[float]) -> tuple[float, float]:
    return statistics.fmean(d), statistics.stdev(d) / math.sqrt(len(d))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", choices=("fp", *TOOLS), help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--model", default="random", help="random (42M Llama built in code) or a trained HF folder")
    p.add_argument("-g", "--group-size", type=int, default=128)
    p.add_argument("--calib-windows", type=int, default=128)
    p.add_argument("--eval-windows", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--peers-python", default="/tmp/peers/bin/python", help="interpreter of llm-compressor's venv")
    p.add_argument(
        "--gptqmodel-python",
        default=sys.executable,
        help="interpreter with gptqmodel (default: this one; the project's test extra installs gptqmodel 7.7.0)",
    )
    p.add_argument("--tools", default=",".join(TOOLS), help="comma-separated subset of " + ", ".join(TOOLS))
    p.add_argument("--repeats", type=int, default=1, help="runs of each tool (interleaved); medians are printed")
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    with tempfile.TemporaryDirectory(prefix="gptq-peers-") as tmp:
        folder = Path(tmp)
        model, data = _prepare(args, folder)
        fp = _run("fp", sys.executable, model, data, args.group_size, folder)
        if "error" in fp:
            sys.exit(f"full-precision evaluation failed: {fp['error']}")
        runs: dict[str, list[dict]] = {tool: [] for tool in args.tools.split(",")}
        for rep in range(args.repeats):  # interleaved, so each tool sees the machine as the others do
            for tool in runs:
                python = {"gptqmodel": args.gptqmodel_python}.get(tool, args.peers_python)
                python = sys.executable if tool.startswith("qscale") else python
                r = _run(tool, python, model, data, args.group_size, folder)
                runs[tool].append(r)
                print(f"{tool} run {rep + 1}: {'done' if 'error' not in r else r['error']}", flush=True)
    results = {tool: _median_run(rs) for tool, rs in runs.items()}
    print(f"\nmodel {args.model}, group {args.group_size}, {args.calib_windows} x {args.seq_len} calibration tokens")
    print("quant RSS: peak RSS during the quantization call (loaded model included); process RSS: whole process")
    if args.repeats > 1:
        print(f"{args.repeats} runs of each tool, interleaved: medians, [min-max] of the quantization RSS")
    print(
        f"{'tool':16} {'wall s':>8} {'CPU s':>8} {'quant RSS MB':>19} {'process RSS MB':>15} {'held-out QiD ± SE':>22}"
    )
    for tool, r in results.items():
        if "error" in r:
            print(f"{tool:16} not run: {r['error']}")
            continue
        qid, se = _mean_se([q - f for q, f in zip(r["q"], fp["fp"], strict=True)])
        span = f"[{r['rss_lo']:.0f}-{r['rss_hi']:.0f}]" if args.repeats > 1 else ""
        print(
            f"{tool:16} {r['wall']:8.1f} {r['cpu']:8.1f} {r['quant_rss_mb']:6.0f} {span:>12} {r['rss_mb']:15.0f} "
            f"{qid:+12.5f} ± {se:.5f}"
        )
    for mine in ("qscale", "qscale-block"):
        ours = results.get(mine, {})
        for tool, r in results.items():
            if tool.startswith("qscale") or "error" in r or "error" in ours or not ours:
                continue
            diff, se = _mean_se([a - b for a, b in zip(ours["q"], r["q"], strict=True)])
            print(
                f"{mine} / {tool}: time {ours['wall'] / r['wall']:.2f}x wall, {ours['cpu'] / r['cpu']:.2f}x CPU; "
                f"peak RSS {ours['quant_rss_mb'] / r['quant_rss_mb']:.2f}x (quantization), "
                f"{ours['rss_mb'] / r['rss_mb']:.2f}x (process); QiD difference {diff:+.5f} ± {se:.5f} (paired)"
            )


def _median_run(rs: list[dict]) -> dict:
    """One tool's runs: the median of each figure and the first run's losses (said when another run's differ)."""
    ok = [r for r in rs if "error" not in r]
    if len(ok) < len(rs):
        return next(r for r in rs if "error" in r)
    bad = sum(not math.isfinite(q) for q in ok[0]["q"])
    if bad:
        return {"error": f"{bad} of {len(ok[0]['q'])} held-out losses of its quantized model are not finite"}
    if any(r["q"] != ok[0]["q"] for r in ok):
        print("note: a tool's held-out losses differ between runs of the same inputs; the first run's are used")
    med = {k: statistics.median(r[k] for r in ok) for k in ("wall", "cpu", "quant_rss_mb", "rss_mb")}
    rss = [r["quant_rss_mb"] for r in ok]
    return {**med, "rss_lo": min(rss), "rss_hi": max(rss), "q": ok[0]["q"]}


if __name__ == "__main__":
    main()
