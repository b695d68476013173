"""Training throughput: tokens/s per ladder size on CPU; tokens/s and MFU of a ~125M Llama on CUDA.

One step = forward, cross-entropy, backward, AdamW (the training loop's work, without data loading).
MFU = 6 · N_total · tokens/s / peak (Kaplan et al. 2020's 6N FLOPs per token, attention FLOPs not
counted), with peak = 989 TFLOP/s, the H100 SXM dense bf16 spec (override with --peak-tflops). On CPU the
achieved TFLOP/s are reported, and MFU too when --peak-tflops gives the CPU's fp32 peak (cores x GHz x
FLOPs/cycle, e.g. 2 x 2.5 x 32 = 0.16 TFLOP/s for two AVX-512 FMA cores).

    python bench/train_throughput.py                       # CPU: every ladder size, short
    python bench/train_throughput.py --device cuda --compile
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from transformers import LlamaConfig, LlamaForCausalLM

from qscale.models import SIZES, build_model, count_params

H100_BF16_DENSE_TFLOPS = 989.0


def llama_125m(vocab_size: int, seq_len: int) -> LlamaForCausalLM:
    """GPT-2-small-like Llama: d=768, 12 layers, 12 heads, SwiGLU 2048 (85M non-embedding, 135M total)."""
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=12,
        max_position_embeddings=seq_len,
        tie_word_embeddings=False,
        use_cache=False,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(cfg)


def measure(
    model, device: torch.device, batch_size: int, seq_len: int, steps: int, warmup: int, compile_model: bool
) -> float:
    """Tokens/s of full training steps, timed after ``warmup`` untimed steps."""
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    forward = torch.compile(model) if compile_model else model
    vocab = model.config.vocab_size
    x = torch.randint(0, vocab, (batch_size, seq_len + 1), device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()

    def step():
        with autocast:
            logits = forward(input_ids=x[:, :-1], use_cache=False).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch_size * seq_len / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", default=",".join(SIZES), help="ladder sizes to time on CPU")
    p.add_argument("--vocab-size", type=int, default=None, help="default: 4096 on CPU, 32768 on CUDA")
    p.add_argument("--batch-size", type=int, default=None, help="default: 16 on CPU, 16 on CUDA")
    p.add_argument("--seq-len", type=int, default=None, help="default: 128 on CPU, 1024 on CUDA")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: 5 on CPU, 30 on CUDA)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (default: 2 on CPU, 10 on CUDA)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help=f"peak for MFU (default: {H100_BF16_DENSE_TFLOPS:g} on CUDA, none on CPU)",
    )
    a = p.parse_args()
    device = torch.device(a.device)
    cuda = device.type == "cuda"
    if a.threads:
        torch.set_num_threads(a.threads)
    vocab = a.vocab_size or (32768 if cuda else 4096)
    bs, T = a.batch_size or 16, a.seq_len or (1024 if cuda else 128)
    steps, warmup = a.steps or (30 if cuda else 5), a.warmup if a.warmup is not None else (10 if cuda else 2)
    torch.manual_seed(0)
    table = Table(
        title=f"training throughput on {torch.cuda.get_device_name() if cuda else 'CPU'} "
        f"({'bf16 autocast' if cuda else f'fp32, {torch.get_num_threads()} threads'}, "
        f"batch {bs} x seq {T}, vocab {vocab}{', compiled' if a.compile else ''})"
    )
    peak = a.peak_tflops or (H100_BF16_DENSE_TFLOPS if cuda else None)
    columns = ["model", "N (non-emb)", "total params", "tokens/s", "TFLOP/s (6N)"] + (["MFU"] if peak else [])
    for col in columns:
        table.add_column(col, justify="right")
    models = (
        {"llama-125m": lambda: llama_125m(vocab, T)}
        if cuda
        else {s: (lambda s=s: build_model(s, vocab, max_seq_len=T)) for s in a.sizes.split(",")}
    )
    for name, make in models.items():
        model = make()
        counts = count_params(model)
        tps = measure(model, device, bs, T, steps, warmup, a.compile)
        tflops = 6 * counts.total * tps / 1e12
        row = [name, f"{counts.non_embedding:,}", f"{counts.total:,}", f"{tps:,.0f}", f"{tflops:.4g}"]
        if peak:
            row.append(f"{tflops / peak:.1%} of {peak:g}")
        table.add_row(*row)
        del model
    Console().print(table)


if __name__ == "__main__":
    main()
