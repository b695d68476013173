"""Orthonormal Hadamard rotation of groups along the last dimension (QuEST, Panferov et al. 2025; SPEC §4).

``H_n`` is Sylvester's construction scaled by ``1/sqrt(n)``: symmetric and orthonormal, so
``H_n^{-1} = H_n^T = H_n`` and the same call rotates and un-rotates. Rotating both operands of a matmul
by the same block-diagonal ``H`` leaves the product unchanged, ``x W^T = (x H)(W H)^T``, while spreading
outliers over the group so that the rotated values are close to Gaussian (what QuEST's clipping assumes).
"""

from __future__ import annotations

import functools
import math

import torch

from qscale.errors import require

MAX_GROUP = 128


@functools.lru_cache(maxsize=32)
def _hadamard_cached(n: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return (h / math.sqrt(n)).to(dtype=dtype, device=device)


def hadamard_matrix(n: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
    """The orthonormal ``n x n`` Sylvester-Hadamard matrix (``n`` a power of two)."""
    require(n >= 1 and n & (n - 1) == 0, f"Hadamard size must be a power of two, got {n}")
    return _hadamard_cached(n, dtype, str(torch.device(device)))


def hadamard_group_size(features: int, max_group: int = MAX_GROUP) -> int:
    """Largest power of two that divides ``features``, at most ``max_group`` (QuEST uses 128)."""
    require(features >= 1, f"features must be positive, got {features}")
    return min(features & -features, max_group)


def hadamard_transform(x: torch.Tensor, group: int) -> torch.Tensor:
    """Multiply each group of ``group`` consecutive entries of the last dimension by ``H_group``.

    Self-inverse: ``hadamard_transform(hadamard_transform(x, g), g) == x`` up to rounding.
    """
    features = x.shape[-1]
    require(features % group == 0, f"last dimension {features} is not a multiple of the Hadamard group {group}")
    h = hadamard_matrix(group, x.dtype, x.device)
    return (x.reshape(*x.shape[:-1], features // group, group) @ h).reshape(x.shape)
