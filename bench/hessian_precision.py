"""GPTQ's Hessian inverse in float32 vs float64: the layer output error each gives, at 768 and 2048 columns.

Hessians ``H = (2/n) XᵀX`` of real layer inputs: the 42M random-weight Llama of ``bench/gptq_peers.py``
(hidden 768, FFN 2048) on 128 x 256 tokens, the inputs of q_proj (768 columns) and down_proj (2048) of
blocks 0 and 5; and two synthetic ones with LLM-like outlier features (per-column scales log-normal,
sigma 2: condition numbers near 1e8). For each, GPTQ 4-bit (group 128, block 128, damp 0.01) runs
with the inverse Cholesky factor in float32 and in float64, and prints the relative output error
``tr(D H Dᵀ) / tr(W H Wᵀ)`` (D = W − Q: the calibration output MSE over the output energy), the share of
codes that differ, and the seconds the inverse takes. ``python bench/hessian_precision.py``.
"""

from __future__ import annotations

import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from qscale.ptq import gptq_quantize
from qscale.ptq.gptq import hessian_inverse_cholesky
from qscale.quant import QuantSpec

SPEC = QuantSpec(4, True, "group", 128)


def model_hessians() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=1024,
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=6,
        num_attention_heads=12,
        num_key_value_heads=12,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg).eval()
    names = [f"model.layers.{b}.{n}" for b in (0, 5) for n in ("self_attn.q_proj", "mlp.down_proj")]
    sums: dict[str, list] = {}

    def hook(name):
        def fn(mod, args, out):
            x = args[0].reshape(-1, args[0].shape[-1])
            acc = sums.setdefault(name, [torch.zeros(x.shape[1], x.shape[1]), 0])
            acc[0].addmm_(x.t(), x)
            acc[1] += x.shape[0]

        return fn

    modules = dict(model.named_modules())
    handles = [modules[n].register_forward_hook(hook(n)) for n in names]
    calib = torch.randint(0, 1024, (128, 256), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for ids in calib.split(16):
            model(input_ids=ids)
    for h in handles:
        h.remove()
    return {n: (S * (2 / rows), modules[n].weight.detach().clone()) for n, (S, rows) in sums.items()}


def synthetic(n_in: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    scales = torch.exp(2 * torch.randn(n_in, generator=g))
    mix = torch.randn(n_in, n_in, generator=g) / n_in**0.5
    X = (torch.randn(8192, n_in, generator=g) @ mix + 0.1 * torch.randn(8192, n_in, generator=g)) * scales
    W = torch.randn(768, n_in, generator=g) * 0.02
    return (2 / X.shape[0]) * X.T @ X, W


def main() -> None:
    torch.set_num_threads(1)
    cases = model_hessians()
    cases["synthetic outliers 768"] = synthetic(768, 0)
    cases["synthetic outliers 2048"] = synthetic(2048, 1)
    print(
        f"{'layer':36} {'cols':>5} {'cond(H)':>9} {'rel err f32':>12} {'rel err f64':>12} {'f32/f64-1':>10} "
        f"{'codes differ':>12} {'inv s f32':>9} {'inv s f64':>9}"
    )
    for name, (H, W) in cases.items():
        errs, codes, secs = {}, {}, {}
        for dtype in (torch.float32, torch.float64):
            t0 = time.perf_counter()
            for _ in range(3):
                hessian_inverse_cholesky(H, 0.01, (dtype,))
            secs[dtype] = (time.perf_counter() - t0) / 3
            qw = gptq_quantize(W, H, SPEC, 128, 0.01, inverse_dtypes=(dtype,)).qweight
            D = (W - qw.dequantize()).double()
            errs[dtype] = float((D @ H.double() * D).sum() / (W.double() @ H.double() * W.double()).sum())
            codes[dtype] = qw.codes
        ev = torch.linalg.eigvalsh(H.double())
        differ = float((codes[torch.float32] != codes[torch.float64]).float().mean())
        print(
            f"{name:36} {H.shape[0]:5d} {float(ev[-1] / ev[0].clamp_min(1e-30)):9.1e} {errs[torch.float32]:12.6f} "
            f"{errs[torch.float64]:12.6f} {errs[torch.float32] / errs[torch.float64] - 1:+10.2e} {differ:12.2e} "
            f"{secs[torch.float32]:9.3f} {secs[torch.float64]:9.3f}"
        )


if __name__ == "__main__":
    main()
