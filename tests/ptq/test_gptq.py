"""GPTQ on one layer against the authors' code (golden values), RTN, and a plain column-by-column reference."""

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


def reference_gptq(W, H, spec, block, damp=0.01, act_order=False):
    """GPTQ written plainly: one column at a time over the whole matrix, float64, no lazy batches.

    Groups: parameters every G columns from the columns as they stood when the loop entered the current run of
    ``block`` columns (the authors' fasterquant: its lazy batch has not yet applied that run's own errors);
    with act-order, static groups (parameters of each group of G original columns computed once, before any
    update).
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
        if j % block == 0:
            at_block_start = W.clone()
        if spec.granularity == "group" and act_order:
            s, z = static[int(perm[j]) // G]
        elif spec.granularity == "group" and j % G == 0:
            s, z = compute_qparams(at_block_start[:, j : j + G], chan)
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
    _, W, H = _correlated(seed=1)
    H[5, :] = H[:, 5] = 0  # a dead input column
    res = gptq_quantize(W, H, spec, block_size=block, act_order=act_order)
    ref = reference_gptq(W, H, spec, block, act_order=act_order)
    assert torch.allclose(res.weight.double(), ref, atol=1e-5, rtol=0)
    assert torch.all(res.weight[:, 5] == 0)


@pytest.mark.parametrize("spec,block,act_order", CASES)
def test_codes_scales_gidx_reproduce_weight(spec, block, act_order):
    _, W, H = _correlated(seed=2)
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
    _, W, H = _correlated(seed=5)
    res = gptq_quantize(W, H, QuantSpec(2, granularity="channel"), block_size=16)
    assert sorted(res.qweight.codes.unique().tolist()) == [-2, -1, 0, 1]
    W2 = torch.cat([W, W * 10])  # two layers read the same input, one ten times larger
    res = gptq_quantize(W2, H, QuantSpec(4, granularity="tensor"), row_splits=[W.shape[0], W.shape[0]])
    s = res.qweight.scale
    assert torch.allclose(s[W.shape[0] :], s[: W.shape[0]] * 10) and len(s[: W.shape[0]].unique()) == 1


def test_non_finite_weight_or_hessian_is_an_error():
    _, W, H = _correlated()
    W[0, 0] = float("nan")
    with pytest.raises(QscaleError, match="NaN or Inf"):
        gptq_quantize(W, H, QuantSpec(4))
    _, W, H = _correlated()
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
    X = (
        torch.randn(1024, d, generator=g) @ torch.randn(d, d, generator=g) * 0.3 + torch.randn(1024, d, generator=g)
    ) * scales
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
    _, W, H = _correlated()
    with pytest.raises(QscaleError):
        gptq_quantize(W, H[:10, :10], QuantSpec(4))
    with pytest.raises(QscaleError):
        gptq_quantize(W, H, QuantSpec(4, granularity="token"))


# Golden values from the authors' code, github:IST-DASLab/gptq at 2d65066eeb06a5c9ff5184d8cebdf33662c67faf, run on
# CPU in a scratch folder (torch.cuda.synchronize stubbed out; nothing else needs CUDA): gptq.py
# GPTQ(nn.Linear(32, 8)) with quant.py Quantizer().configure(bits, perchannel=True, sym=...), add_batch on X[:128]
# and X[128:] (so H = (2/256)·XᵀX), fasterquant(blocksize, percdamp=0.01, groupsize, actorder, static_groups) on
# _golden_data(seed). Values: the dequantized weight's row 0, its row sums and Σ Q².
GPTQ_C4SYM = (
    [
        0.1363398,
        -0.04544659,
        0.02272329,
        0.06816988,
        0.09089318,
        -0.1590631,
        -0.1590631,
        -0.1817864,
        0.04544659,
        0.02272329,
        -0.1136165,
        -0.1136165,
        0.09089318,
        0.0,
        0.02272329,
        0.09089318,
        -0.1363398,
        0.1363398,
        0.02272329,
        -0.04544659,
        0.06816988,
        -0.06816988,
        -0.09089318,
        0.0,
        0.04544659,
        -0.09089318,
        0.02272329,
        -0.1363398,
        -0.02272329,
        0.1590631,
        -0.09089318,
        0.1363398,
    ],
    [-0.2726796, 0.2713956, -0.07553281, -0.658352, -1.076941, 0.2889957, 0.1625214, -0.5729614],
    2.49786533,
)
GPTQ_G16ASYM3_B16 = (
    [
        -0.1518809,
        -0.1012539,
        0.05062697,
        0.05062697,
        -0.1518809,
        0.0,
        -0.05062697,
        0.1012539,
        0.05062697,
        -0.05062697,
        0.0,
        0.1518809,
        0.1012539,
        0.05062697,
        -0.2025079,
        -0.2025079,
        -0.1875949,
        -0.09379743,
        0.04689872,
        -0.04689872,
        0.0,
        0.1406961,
        0.1406961,
        -0.09379743,
        -0.04689872,
        -0.09379743,
        0.04689872,
        0.0,
        0.0,
        -0.04689872,
        0.09379743,
        0.0,
    ],
    [-0.495085, 0.1751996, -0.6728822, 0.2516767, -0.3730455, -0.7561679, 0.5022992, 0.2206304],
    2.77686765,
)
GPTQ_G8SYM4_B16 = (
    [
        0.08508718,
        -0.08508718,
        0.08508718,
        -0.1701744,
        0.0,
        0.06381539,
        0.1489026,
        0.04254359,
        0.230744,
        0.07691465,
        0.03845733,
        0.1538293,
        -0.115372,
        -0.03845733,
        -0.3076586,
        -0.07691465,
        0.1357334,
        0.0,
        0.02714669,
        0.0,
        0.1900268,
        0.05429337,
        -0.02714669,
        -0.05429337,
        0.1054597,
        0.06327584,
        -0.0421839,
        0.0421839,
        0.0421839,
        -0.0421839,
        -0.1476436,
        -0.0421839,
    ],
    [0.4363853, 0.7972375, -0.1074151, -0.05900178, -0.4186458, 0.4580447, -0.6012229, -0.00085482],
    2.84773933,
)
GPTQ_G16SYM3_ACT_STATIC = (
    [
        0.0,
        0.04336262,
        0.0,
        0.0,
        0.1300879,
        -0.1300879,
        0.08672524,
        -0.1300879,
        -0.08672524,
        0.08672524,
        -0.04336262,
        -0.1300879,
        0.0,
        0.1300879,
        -0.04336262,
        -0.08672524,
        -0.05588803,
        0.1117761,
        0.1117761,
        0.1117761,
        -0.05588803,
        -0.05588803,
        0.05588803,
        0.05588803,
        -0.1117761,
        0.1117761,
        0.05588803,
        0.1117761,
        -0.05588803,
        -0.1676641,
        0.0,
        0.0,
    ],
    [0.05010165, 0.2881315, -1.091583, -0.1069746, -0.04863318, 0.204735, -0.07206549, -0.1468141],
    2.5541815,
)
GPTQ_C2ASYM_ACT = (
    [
        0.0,
        0.1243264,
        0.0,
        0.0,
        0.0,
        0.0,
        -0.2486527,
        -0.1243264,
        -0.1243264,
        -0.1243264,
        -0.1243264,
        -0.1243264,
        0.0,
        0.1243264,
        0.0,
        0.1243264,
        0.1243264,
        0.0,
        -0.1243264,
        0.0,
        0.0,
        -0.1243264,
        -0.2486527,
        -0.1243264,
        0.0,
        -0.2486527,
        0.0,
        -0.2486527,
        0.0,
        0.1243264,
        0.0,
        0.1243264,
    ],
    [-1.243264, -0.7271209, -0.7046863, 0.717401, 0.0, -0.3956848, -0.6636742, 0.4506258],
    3.24939619,
)
GOLDEN_CASES = {  # name: (seed, spec, blocksize, act_order (their static_groups with groups), dead input column)
    "c4sym": (0, QuantSpec(4, True, "channel", None), 8, False, None),
    "g16asym3_b16": (1, QuantSpec(3, False, "group", 16), 16, False, 5),
    "g16sym3_act_static": (3, QuantSpec(3, True, "group", 16), 8, True, None),
    "c2asym_act": (4, QuantSpec(2, False, "channel", None), 8, True, None),
    "g8sym4_b16": (2, QuantSpec(4, True, "group", 8), 16, False, None),
}


def _golden_data(seed):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(256, 32, generator=g) @ torch.randn(32, 32, generator=g) + 0.5 * torch.randn(256, 32, generator=g)
    return X, torch.randn(8, 32, generator=g) * 0.1


def _check_golden(name):
    seed, spec, block, act_order, dead = GOLDEN_CASES[name]
    X, W = _golden_data(seed)
    if dead is not None:
        X[:, dead] = 0
    H = (2 / 256) * (X[:128].T @ X[:128]) + (2 / 256) * (X[128:].T @ X[128:])
    Q = gptq_quantize(W, H, spec, block_size=block, act_order=act_order).weight
    row0, sums, sq = globals()[f"GPTQ_{name.upper()}"]
    assert Q[0].tolist() == pytest.approx(row0, abs=1e-6)
    assert Q.sum(1).tolist() == pytest.approx(sums, abs=1e-5)
    assert float((Q.double() ** 2).sum()) == pytest.approx(sq, rel=1e-6)


@pytest.mark.parametrize("name", ["c4sym", "g16asym3_b16", "g16sym3_act_static", "c2asym_act"])
def test_equals_the_authors_gptq(name):
    _check_golden(name)


def test_groups_starting_inside_a_block_equal_the_authors_gptq():
    _check_golden("g8sym4_b16")
