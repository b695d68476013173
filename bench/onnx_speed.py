"""Tokens/s of qscale's 4-bit ONNX graph vs the fp32 graph in ONNX Runtime (CPU, 1 and 2 threads).

The model: a Llama built in code with random weights, hidden 768, 6 layers, FFN 2048, 12 heads, vocab 8192
(42.5M linear weights + 12.6M embedding/head parameters), its linear layers RTN-quantized to 4 bits with
groups of 32 (``--group``), ``lm_head`` kept in fp32 as ``qscale quantize`` does. Both graphs are traced the
same way (``qscale.export.onnx``: ``input_ids → logits``, no KV cache) and run with ONNX Runtime's default
optimizations; the 4-bit graph's DequantizeLinear + MatMul pairs are fused into ``MatMulNBits`` (counted and
printed), at accuracy level 4 (ORT's default: int8 activations) and 0 (fp32 activations). "unfused (old)"
is the layout qscale wrote before (codes ``[out, in]`` behind DequantizeLinear + Transpose), which ORT runs by
dequantizing every weight to fp32 on each forward.

Two shapes: a full-sequence forward of 1 × ``--seq`` tokens (prefill) and a forward of 1 × 2 tokens, the
smallest the graph takes: a decode step's matmul shapes, weight-bound, without a KV cache (its tokens/s
counts 2 tokens a forward). Each cell is the median of ``--reps`` timed runs after two warm-up runs.
Example: ``python bench/onnx_speed.py --reps 10``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import onnx
import onnxruntime as ort
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import qscale.export.onnx
from qscale.export.onnx import export_onnx, trace_onnx
from qscale.ptq import PTQConfig, quantize_model
from qscale.quant import QuantSpec


def build(vocab: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=6,
        num_attention_heads=12,
        num_key_value_heads=12,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg).eval()


def session(path: Path, threads: int, accuracy: int | None = None, save: Path | None = None):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if accuracy is not None:
        so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", str(accuracy))
    if save is not None:
        so.optimized_model_filepath = str(save)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def timed(sessions: list, ids: np.ndarray, reps: int) -> list[float]:
    """Median seconds of one forward of each session, the sessions run in turn (round-robin) so that a change
    of the machine's load during the run falls on all of them alike."""
    for sess in sessions:
        for _ in range(2):
            sess.run(["logits"], {"input_ids": ids})
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(reps):
        for i, sess in enumerate(sessions):
            t = time.perf_counter()
            sess.run(["logits"], {"input_ids": ids})
            times[i].append(time.perf_counter() - t)
    return [statistics.median(t) for t in times]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq", type=int, default=256, help="prefill length (tokens)")
    ap.add_argument("--group", type=int, default=32, help="group size of the 4-bit weights")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    model = build(args.vocab)
    n_lin = sum(
        m.weight.numel() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n
    )
    n_all = sum(p.numel() for p in model.parameters())
    print(f"model: Llama h768 L6 FFN2048 V{args.vocab}: {n_all / 1e6:.1f}M params ({n_lin / 1e6:.1f}M quantized)")
    with tempfile.TemporaryDirectory(prefix="qscale-onnx-speed-") as d:
        run(model, Path(d), args)


def run(model, tmp: Path, args) -> None:
    fp_path = tmp / "fp32.onnx"
    onnx.save(trace_onnx(model), str(fp_path))
    quantize_model(model, PTQConfig("rtn", QuantSpec(4, True, "group", args.group)), None)
    q_path = export_onnx(model, tmp / "w4.onnx")
    session(q_path, 1, save=tmp / "w4-optimized.onnx")  # ORT writes the graph it optimized
    ops = [n.op_type for n in onnx.load(str(tmp / "w4-optimized.onnx")).graph.node]
    print(
        f"fp32 graph {fp_path.stat().st_size / 1e6:.1f} MB, 4-bit g{args.group} graph "
        f"{q_path.stat().st_size / 1e6:.1f} MB; ORT's optimized 4-bit graph: {ops.count('MatMulNBits')} MatMulNBits, "
        f"{ops.count('DequantizeLinear')} DequantizeLinear"
    )
    ids_check = np.random.default_rng(0).integers(0, args.vocab, (1, 16))
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids_check)).logits.numpy()
    for acc in (4, 0):
        out = session(q_path, 1, acc).run(["logits"], {"input_ids": ids_check})[0]
        print(f"4-bit graph, accuracy level {acc}: max |logits - qscale's| = {np.abs(out - ref).max():.2e}")
    old_path = tmp / "w4-unfused.onnx"
    with mock.patch.object(qscale.export.onnx, "_only_transpose", lambda graph, key: None):
        export_onnx(model, old_path)  # the layout before MatMulNBits: [out, in] codes behind DQ + Transpose
    graphs = [
        ("fp32", fp_path, None),
        ("4-bit acc 4 (int8 act.)", q_path, 4),
        ("4-bit acc 0 (fp32 act.)", q_path, 0),
        ("4-bit unfused (old)", old_path, None),
    ]
    shapes = [(f"prefill 1x{args.seq}", args.seq), ("1x2 (decode-sized)", 2)]
    print(f"\nCPU: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; median of {args.reps} runs")
    print(f"{'graph':<26}{'threads':>8}" + "".join(f"{s:>26}" for s, _ in shapes))
    rows = {}
    for threads in (int(t) for t in args.threads.split(",")):
        sessions = [session(path, threads, acc) for _, path, acc in graphs]
        for _, n in shapes:
            ids = np.random.default_rng(1).integers(0, args.vocab, (1, n))
            for (label, _, _), sec in zip(graphs, timed(sessions, ids, args.reps), strict=True):
                rows.setdefault((label, threads), []).append(n / sec)
    for (label, threads), tps in rows.items():
        fp = rows["fp32", threads]
        cells = "".join(f"{t:>11,.0f} tok/s ({t / f:.2f}x)" for t, f in zip(tps, fp, strict=True))
        print(f"{label:<26}{threads:>8}{cells}")


if __name__ == "__main__":
    main()
