"""Per-layer attribution of the activation quantization error (Chen et al. 2025, findings in SPEC §2).

For the input of every linear layer (``QuantLinear`` or ``nn.Linear``, the output head excluded) over a
few batches: the mean squared error of quantizing it with a given ``QuantSpec`` (absmax RTN, the core),
that error relative to the input's mean square, and the input's kurtosis ``E[(x − μ)^4] / σ^4`` over all
of its entries (Pearson; 3 for a Gaussian). Chen et al. find the FC2 (``down_proj``) input heavy-tailed
(kurtosis ≈ 89–123) and dominant in the W4A4 error. The statistics are of the raw (unrotated) input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

from qscale.errors import require
from qscale.qat.linear import QuantLinear
from qscale.quant import QuantSpec, fake_quantize


@dataclass(frozen=True)
class InputStats:
    """Statistics of one layer's input over all tokens seen."""

    mse: float  # mean (x - Q(x))^2
    rel_mse: float  # mse / mean x^2
    kurtosis: float  # E[(x - mean)^4] / var^2 over all entries
    n: int  # number of entries


class _Moments:
    """Streaming sums (float64) of powers of x and of the quantization error."""

    def __init__(self) -> None:
        self.s = torch.zeros(5, dtype=torch.float64)  # n, Σx, Σx², Σx³, Σx⁴
        self.err = 0.0

    def add(self, x: Tensor, spec: QuantSpec) -> None:
        xf = x.detach().double().flatten()
        self.s += torch.stack(
            [
                torch.tensor(float(xf.numel()), dtype=torch.float64),
                xf.sum(),
                xf.pow(2).sum(),
                xf.pow(3).sum(),
                xf.pow(4).sum(),
            ]
        ).cpu()
        xq = fake_quantize(x.detach().float(), spec).double().flatten()
        self.err += float((xf - xq).pow(2).sum())

    def stats(self) -> InputStats:
        n, s1, s2, s3, s4 = (float(v) for v in self.s)
        m = s1 / n
        var = s2 / n - m * m
        m4 = s4 / n - 4 * m * s3 / n + 6 * m * m * s2 / n - 3 * m**4
        kurt = m4 / var**2 if var > 0 else float("nan")
        return InputStats(mse=self.err / n, rel_mse=self.err / max(s2, 1e-300), kurtosis=kurt, n=int(n))


def kurtosis(x: Tensor) -> float:
    """Pearson kurtosis ``E[(x − μ)^4] / σ^4`` of all entries of ``x`` (3 for a Gaussian)."""
    xf = x.detach().double().flatten()
    c = xf - xf.mean()
    return float(c.pow(4).mean() / c.pow(2).mean() ** 2)


@torch.no_grad()
def input_stats(model: nn.Module, batches: list[Tensor], spec: QuantSpec) -> dict[str, InputStats]:
    """Quantization MSE (at ``spec``) and kurtosis of every linear layer's input, by qualified name.

    batches: input-id tensors ``[B, T]`` run through ``model(input_ids=...)``; the output head is skipped.
    """
    require(len(batches) > 0, "input_stats needs at least one batch")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    moments: dict[str, _Moments] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Linear, Conv1D, QuantLinear)) and mod is not head:
            moments[name] = _Moments()
            hooks.append(mod.register_forward_pre_hook(lambda m, args, acc=moments[name]: acc.add(args[0], spec)))
    require(moments, "model has no linear layers")
    try:
        for ids in batches:
            model(input_ids=ids)
    finally:
        for h in hooks:
            h.remove()
    return {name: acc.stats() for name, acc in moments.items()}
