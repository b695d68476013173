"""GPTQ on one layer against RTN and against a plain column-by-column reference (SPEC §6)."""

import pytest
import torch

from qscale.errors import QscaleError
from qscale.ptq import gptq_quantize
from qscale.quant import QuantSpec, compute_qparams, fake_quantize, round_to_grid


def _correlated(n=512, d=64, out=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g) @ torch.randn(d, d, generator=g) + 0.5 * torch.randn(n, d, generator=g)
    W = torch.randn(out, d, generator=g) * 0.1
    return X, W, (2 / n) * X.T @ X


def _out_err(X, W, Q):
    return float(((X @ W.T - X @ Q.T) ** 2).sum())


def reference_gptq(W, H, spec, damp=0.01, act_order=False):
    """GPTQ written plainly: one column at a time over the whole matrix, float64, no blocks.

    Groups: parameters from the current (error-updated) columns every G columns; with act-order, static
    groups (parameters of each group of G original columns computed once, before any update).
    """
    W, H = W.clone().double(), H.clone().double()
    n = W.shape[1]
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    G = spec.group_size if spec.granularity == "group" else n
    chan = QuantSpec(spec.bits, spec.symmetric, "channel", grid=spec.grid)
    static = [compute_qparams(W[:, k : k + G], chan) for k in range(0, n, G)]
    perm = torch.argsort(torch.diagonal(H), descending=True) if act_order else torch.arange(n)
    W, H = W[:, perm], H[perm][:, perm]
    H = H + damp * torch.diagonal(H).mean() * torch.eye(n, dtype=H.dtype)
    U = torch.linalg.cholesky(torch.linalg.inv(H)).T  # H⁻¹ = UᵀU, U upper triangular
    s, z = compute_qparams(W, spec) if spec.granularity != "group" else (None, None)
    if spec.granularity == "tensor":
        s, z = s.reshape(1, 1), z.reshape(1, 1)
    Q = torch.zeros_like(W)
    for j in range(n):
        if spec.granularity == "group" and act_order:
            s, z = static[int(perm[j]) // G]
        elif spec.granularity == "group" and j % G == 0:
            s, z = compute_qparams(W[:, j : j + G], chan)
        Q[:, j : j + 1] = round_to_grid(W[:, j : j + 1], s, z, spec)
        err = (W[:, j] - Q[:, j]) / U[j, j]
        W[:, j:] -= torch.outer(err, U[j, j:])
    return Q[:, torch.argsort(perm)]


# The restricted grid keeps the comparison free of rounding ties: on the full grid the absmax of every
# group sits exactly on a half-integer code boundary, and float32 vs float64 may round it either way.
R = "restricted"
CASES = [
    (QuantSpec(3, granularity="group", group_size=16, grid=R), 24, False),  # groups inside blocks
    (QuantSpec(4, symmetric=False, granularity="group", group_size=32), 20, False),  # groups straddle blocks
    (QuantSpec(2, symmetric=False, granularity="group", group_size=16), 128, False),  # one block
    (QuantSpec(4, granularity="channel", grid=R), 16, False),
    (QuantSpec(3, granularity="tensor", grid=R), 16, False),
    (QuantSpec(3, granularity="group", group_size=24, grid=R), 16, False),  # ragged last group (64 = 24 + 24 + 16)
    (QuantSpec(3, granularity="group", group_size=24, grid=R), 16, True),
    (QuantSpec(3, symmetric=False, granularity="group", group_size=16), 24, True),  # act-order, static groups
]


@pytest.mark.parametrize("spec,block,act_order", CASES)
def test_equals_plain_reference(spec, block, act_order):
    X, W, H = _correlated(seed=1)
    H[5, :] = H[:, 5] = 0  # a dead input column
    res = gptq_quantize(W, H, spec, block_size=block, act_order=act_order)
    ref = reference_gptq(W, H, spec, act_order=act_order)
    assert torch.allclose(res.weight.double(), ref, atol=1e-5, rtol=0)
    assert torch.all(res.weight[:, 5] == 0)


@pytest.mark.parametrize("spec,block,act_order", CASES)
def test_codes_scales_gidx_reproduce_weight(spec, block, act_order):
    X, W, H = _correlated(seed=2)
    res = gptq_quantize(W, H, spec, block_size=block, act_order=act_order)
    qw = res.qweight
    g = qw.g_idx.long()
    c = qw.codes.to(torch.int32)
    assert c.min() >= spec.qmin and c.max() <= spec.qmax
    assert torch.equal((c.float() - qw.zero[:, g]) * qw.scale[:, g], res.weight)
    G = spec.group_size if spec.granularity == "group" else W.shape[1]
    assert torch.equal(g, torch.arange(W.shape[1]) // G)  # contiguous groups, also with act-order
    assert qw.scale.shape == (W.shape[0], -(-W.shape[1] // G))


def test_full_grid_uses_all_codes_and_stacked_tensor_scales_stay_per_layer():
    X, W, H = _correlated(seed=5)
    res = gptq_quantize(W, H, QuantSpec(2, granularity="channel"), block_size=16)
    assert sorted(res.qweight.codes.unique().tolist()) == [-2, -1, 0, 1]
    W2 = torch.cat([W, W * 10])  # two layers read the same input, one ten times larger
    res = gptq_quantize(W2, H, QuantSpec(4, granularity="tensor"), row_splits=[W.shape[0], W.shape[0]])
    s = res.qweight.scale
    assert torch.allclose(s[W.shape[0]:], s[: W.shape[0]] * 10) and len(s[: W.shape[0]].unique()) == 1


def test_non_finite_weight_or_hessian_is_an_error():
    X, W, H = _correlated()
    W[0, 0] = float("nan")
    with pytest.raises(QscaleError, match="NaN or Inf"):
        gptq_quantize(W, H, QuantSpec(4))
    X, W, H = _correlated()
    H[1, 1] = float("inf")
    with pytest.raises(QscaleError, match="Hessian"):
        gptq_quantize(W, H, QuantSpec(4))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("gran", ["channel", "group"])
def test_output_error_not_above_rtn(bits, gran):
    X, W, H = _correlated(seed=bits)
    spec = QuantSpec(bits, granularity=gran, group_size=16)
    gptq = gptq_quantize(W, H, spec, block_size=32).weight
    rtn = fake_quantize(W, spec)
    assert _out_err(X, W, gptq) <= _out_err(X, W, rtn)


def test_act_order_helps_with_unequal_input_scales():
    g = torch.Generator().manual_seed(3)
    d = 64
    scales = torch.logspace(-1.5, 1, d)[torch.randperm(d, generator=g)]
    X = (torch.randn(1024, d, generator=g) @ torch.randn(d, d, generator=g) * 0.3 + torch.randn(1024, d, generator=g)) * scales
    W = torch.randn(32, d, generator=g)
    H = (2 / 1024) * X.T @ X
    spec = QuantSpec(3, granularity="channel")
    plain = gptq_quantize(W, H, spec, block_size=16).weight
    ordered = gptq_quantize(W, H, spec, block_size=16, act_order=True).weight
    assert _out_err(X, W, ordered) <= _out_err(X, W, plain)


def test_singular_hessian_is_rescued_by_dampening():
    X, W, _ = _correlated(n=8, seed=4)  # rank 8 < 64 columns
    H = (2 / 8) * X.T @ X
    res = gptq_quantize(W, H, QuantSpec(4, granularity="channel"), damp=1e-12)
    assert torch.isfinite(res.weight).all()
    assert res.damp >= 1e-12


def test_rejects_bad_shapes_and_token_granularity():
    X, W, H = _correlated()
    with pytest.raises(QscaleError):
        gptq_quantize(W, H[:10, :10], QuantSpec(4))
    with pytest.raises(QscaleError):
        gptq_quantize(W, H, QuantSpec(4, granularity="token"))
