"""Step-time overhead of QAT: each recipe's training step divided by the same step without quantization.

One step = forward, next-token cross-entropy, backward, AdamW update, on a small Llama (SwiGLU, GQA) with
random weights and random tokens. CPU: float32, eager (``--compile`` to try inductor). CUDA: bf16 and
``torch.compile`` by default, fused AdamW. Reported per recipe: ms/step (median of ``--steps`` timed steps
after ``--warmup``) and the ratio to the unquantized step. Targets on an H100 (issue 5): <= 1.15x for
ste/lsq, <= 1.3x for quest; the fake-quant backend (qscale.quant.fused: triton on CUDA, plain torch on CPU;
QSCALE_FAKE_QUANT forces one) is printed. SPEC §7 gives torchao's and a naive STE's figures for comparison.

    python bench/qat_overhead.py                      # CPU, < 2 min
    python bench/qat_overhead.py --device cuda --hidden 768 --layers 12 --batch 16 --seq 1024
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from qscale.qat import QATRecipeConfig, prepare
from qscale.quant.fused import BACKENDS, ENV, backend_for

RECIPES = {
    "ste": QATRecipeConfig("ste", w_bits=4, a_bits=4, group_size=128),
    "lsq": QATRecipeConfig("lsq", w_bits=4, a_bits=4, group_size=128),
    "quest": QATRecipeConfig("quest", w_bits=4, a_bits=4),
    "bitnet": QATRecipeConfig("bitnet"),  # ternary weights, 8-bit activations (its definition)
    "pbllm": QATRecipeConfig("pbllm"),  # binary + 10 % salient 8-bit weights, activations unquantized
}


def build(args, device: torch.device, dtype: torch.dtype) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 3,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64,
        num_key_value_heads=max(1, args.hidden // 128),
        max_position_embeddings=args.seq,
        use_cache=False,
    )
    return LlamaForCausalLM(cfg).to(device=device, dtype=dtype)


def make_step(model, args, device: torch.device) -> Callable[[], None]:
    """One training step of ``model`` on a fixed random batch."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    fwd = torch.compile(model) if args.compile else model
    g = torch.Generator().manual_seed(0)
    batch = torch.randint(0, args.vocab, (args.batch, args.seq + 1), generator=g).to(device)

    def step() -> None:
        logits = fwd(input_ids=batch[:, :-1]).logits
        loss = F.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def time_interleaved(steps: dict[str, Callable[[], None]], args, device: torch.device) -> dict[str, float]:
    """Median seconds per step of each variant, timed in rounds (one step of each per round) so that
    drifts of the machine's load hit every variant alike."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(args.warmup + args.steps):
        for name, step in steps.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the model (default: on for cuda, off for cpu)",
    )
    p.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated recipe names")
    p.add_argument("--hidden", type=int, default=256, help="hidden size (multiple of 128)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: 1 on cpu, for stable timings)")
    p.add_argument(
        "--fake-quant",
        choices=BACKENDS,
        default=None,
        help="fake-quantization backend of eager steps (default: triton on CUDA, torch on CPU)",
    )
    args = p.parse_args()
    if args.fake_quant:
        os.environ[ENV] = args.fake_quant
    device = torch.device(args.device)
    if args.compile is None:
        args.compile = device.type == "cuda"
    if args.compile:  # one compiled graph per model variant, all sharing transformers' forward code
        torch._dynamo.config.recompile_limit = 64
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    names = [r.strip() for r in args.recipes.split(",") if r.strip()]
    unknown = set(names) - set(RECIPES)
    if unknown:
        p.error(f"unknown recipes: {', '.join(sorted(unknown))}")

    steps = {"(no quantization)": make_step(build(args, device, dtype), args, device)}
    for name in names:
        steps[RECIPES[name].label] = make_step(prepare(build(args, device, dtype), RECIPES[name]), args, device)
    times = time_interleaved(steps, args, device)
    base = times["(no quantization)"]
    print(
        f"device={device} dtype={str(dtype).removeprefix('torch.')} compile={args.compile} "
        f"threads={torch.get_num_threads()} model=llama d{args.hidden} L{args.layers} "
        f"tokens/step={args.batch * args.seq} fake-quant={backend_for(torch.empty(0, device=device))}"
    )
    print(f"{'recipe':<22}{'ms/step':>10}{'ratio':>8}")
    for label, t in times.items():
        print(f"{label:<22}{t * 1e3:>10.1f}{t / base:>8.2f}")


if __name__ == "__main__":
    main()
