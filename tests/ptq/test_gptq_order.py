"""GPTQ calibration passes: cached replays equal re-running the block, and the two stage orders."""

from functools import partial

import pytest
import torch
from tests.ptq.test_sequential import structured_tokens, tiny
from tests.ptq.test_sequential import trained_llama as trained_llama  # the fixture

from qscale.errors import QscaleError
from qscale.ptq import PTQConfig, gptq, gptq_quantize, quantize_model, sequential
from qscale.ptq.layers import get_weight
from qscale.quant import QuantizedLinear, QuantSpec

SPECS = {
    "g16": (QuantSpec(4, granularity="group", group_size=16), 16),
    "c3asym": (QuantSpec(3, symmetric=False, granularity="channel"), 8),
}
# Per quantized layer (forward order, lm_head last where quantized): (sum, sum of squares) of the dequantized
# weight, and the sum of squared logits of the quantized model on 2 probe windows, from the implementation
# that re-ran each block from its input for every stage (commit d8ba888), 40 windows x 16 tokens (3 batches).
# That code inverted the Hessian in float64 and its group parameters were those of the authors' wherever a
# group starts a GPTQ block (block size = group size here).
PREVIOUS = {
    ("llama", "g16"): (
        [
            (-0.172043, 0.407577),
            (0.502232, 0.194324),
            (0.617028, 0.230475),
            (0.17503, 0.382795),
            (0.588976, 0.815046),
            (-0.078901, 0.856562),
            (-0.597, 0.833437),
            (-0.916033, 0.412465),
            (-0.328486, 0.194719),
            (-0.048057, 0.192615),
            (-0.048129, 0.418083),
            (-0.758917, 0.853909),
            (0.887935, 0.829702),
            (-0.22028, 0.820369),
            (1.138959, 0.411885),
        ],
        14.988665,
    ),
    ("llama", "c3asym"): (
        [
            (-0.021227, 0.443705),
            (0.435442, 0.21146),
            (0.710567, 0.247201),
            (0.365191, 0.40353),
            (0.803406, 0.861993),
            (-0.049292, 0.898738),
            (-0.247758, 0.877617),
            (-1.066748, 0.433497),
            (-0.15597, 0.203959),
            (-0.056113, 0.21091),
            (0.236416, 0.421898),
            (-0.99104, 0.910116),
            (1.28103, 0.878455),
            (0.145462, 0.888652),
            (1.080033, 0.449134),
        ],
        15.234372,
    ),
    ("neox", "g16"): (
        [
            (0.158245, 1.229966),
            (0.89244, 0.430302),
            (0.137044, 0.785748),
            (0.410652, 0.856474),
            (-1.396361, 1.250318),
            (-0.625699, 0.402717),
            (-0.944191, 0.82756),
            (-0.690974, 0.86331),
            (-0.345432, 0.438914),
        ],
        14.042352,
    ),
    ("neox", "c3asym"): (
        [
            (0.642326, 1.277424),
            (1.073644, 0.455927),
            (-0.077025, 0.836382),
            (0.286278, 0.924777),
            (-1.101637, 1.307573),
            (-0.690731, 0.423722),
            (-0.248686, 0.867579),
            (-0.405959, 0.918518),
            (-0.494472, 0.444144),
        ],
        14.268866,
    ),
    ("gpt2", "g16"): (
        [
            (-0.081469, 1.254346),
            (0.322667, 0.099268),
            (-2.106869, 1.688409),
            (-0.351985, 0.408467),
            (-1.562945, 1.20419),
            (-0.16853, 0.104041),
            (-2.116065, 1.580503),
            (0.066212, 0.417446),
        ],
        19.445469,
    ),
    ("gpt2", "c3asym"): (
        [
            (0.231753, 1.297671),
            (0.115335, 0.106155),
            (-2.843433, 1.772072),
            (-0.160525, 0.447809),
            (-1.140478, 1.256862),
            (-0.274984, 0.110196),
            (-2.081596, 1.666772),
            (0.277947, 0.449766),
        ],
        19.436525,
    ),
}


def _quantized(arch, key, order="sequential", skip=()):
    spec, block = SPECS[key]
    model = tiny(arch, seed=5)
    cfg = PTQConfig("gptq", spec, block_size=block, skip=skip, gptq_order=order)
    stats = quantize_model(model, cfg, structured_tokens(40, 16, seed=6))
    return model, stats


def _summary(model, stats):
    modules = dict(model.named_modules())
    rows = []
    for name in stats:
        Q = modules[name].dequantized_weight().double()
        rows.append((float(Q.sum()), float((Q**2).sum())))
    with torch.no_grad():
        logits = model(input_ids=structured_tokens(2, 16, seed=7)).logits.double()
    return rows, float((logits**2).sum())


@pytest.mark.parametrize(("arch", "key"), list(PREVIOUS))
def test_sequential_order_equals_the_previous_implementation(arch, key, monkeypatch):
    """Bit for bit (to the 6 recorded decimals) with the float64 inverse the previous code used."""
    monkeypatch.setattr(gptq, "INVERSE_DTYPES", (torch.float64,))
    rows, logits_sq = _summary(*_quantized(arch, key))
    ref_rows, ref_logits_sq = PREVIOUS[(arch, key)]
    assert len(rows) == len(ref_rows)
    for (s, sq), (s_ref, sq_ref) in zip(rows, ref_rows, strict=True):
        assert s == pytest.approx(s_ref, abs=6e-7) and sq == pytest.approx(sq_ref, abs=6e-7)
    assert logits_sq == pytest.approx(ref_logits_sq, abs=1e-5)


@pytest.mark.parametrize("arch", ["llama", "neox", "gpt2"])
def test_float32_inverse_changes_only_float_noise(arch, monkeypatch):
    """Per-channel codes (no rounding ties) are the same as with float64; group codes on the full symmetric grid,
    whose absmax sits on a half-code tie, move for 1-2% of weights here, but GPTQ's objective, the output error
    tr(D H Dᵀ) / tr(W H Wᵀ), stays within 1% (measured -0.5% to +0.4%)."""

    def run(key):
        model, stats = _quantized(arch, key)
        modules = dict(model.named_modules())
        codes = torch.cat([modules[n].qweight().codes.flatten() for n in stats])
        return codes, sum(s["output_rel_err"] for s in stats.values())

    f32 = {key: run(key) for key in SPECS}
    monkeypatch.setattr(gptq, "INVERSE_DTYPES", (torch.float64,))
    f64 = {key: run(key) for key in SPECS}
    assert torch.equal(f32["c3asym"][0], f64["c3asym"][0])
    assert f32["g16"][1] == pytest.approx(f64["g16"][1], rel=1e-2)
    assert float((f32["g16"][0] != f64["g16"][0]).float().mean()) < 0.05


@pytest.mark.parametrize("arch", ["llama", "neox", "gpt2"])
def test_calibration_in_chunks_of_windows_equals_whole_batches(arch, monkeypatch):
    """Each batch's forward passes run a few windows at a time (``CHUNK_ROWS`` tokens) to hold less memory;
    the Hessians still add a whole batch's rows in one product, so the numbers are the previous code's."""
    monkeypatch.setattr(gptq, "INVERSE_DTYPES", (torch.float64,))
    monkeypatch.setattr(sequential, "CHUNK_ROWS", 48)  # 3 windows of 16 tokens: batches of 16 and 8 in 6 and 3
    rows, logits_sq = _summary(*_quantized(arch, "g16"))
    ref_rows, ref_logits_sq = PREVIOUS[(arch, "g16")]
    assert len(rows) == len(ref_rows)
    for (s, sq), (s_ref, sq_ref) in zip(rows, ref_rows, strict=True):
        assert s == pytest.approx(s_ref, abs=6e-7) and sq == pytest.approx(sq_ref, abs=6e-7)
    assert logits_sq == pytest.approx(ref_logits_sq, abs=1e-5)


def test_block_order_in_chunks_of_windows_equals_whole_batches(monkeypatch):
    """The block order (one Hessian pass per block) gives the same codes whether batches run whole or in chunks."""
    whole, _ = _quantized("llama", "g16", order="block")
    monkeypatch.setattr(sequential, "CHUNK_ROWS", 48)
    chunked, stats = _quantized("llama", "g16", order="block")
    a, b = dict(whole.named_modules()), dict(chunked.named_modules())
    for n in stats:
        assert torch.equal(a[n].qweight().codes, b[n].qweight().codes), n


def test_each_quantized_layer_runs_once_per_batch(monkeypatch):
    """The passes start where the previous one left off: no quantized layer is recomputed on a batch, except
    the MLP's gate/up projections, run a second time in down_proj's pass: its input (FFN-wide, several times
    the block's) is recomputed rather than held for every batch, to bound the peak memory."""
    calls: dict[str, int] = {}
    forward = QuantizedLinear.forward

    def counting(self, x):
        calls[self.name] = calls.get(self.name, 0) + 1
        return forward(self, x)

    monkeypatch.setattr(QuantizedLinear, "forward", counting)
    _, stats = _quantized("llama", "g16", skip=("*lm_head",))
    n_batches = 3  # 40 windows in batches of 16
    assert set(calls) == set(stats)
    expected = {n: 2 * n_batches if n.endswith(("gate_proj", "up_proj")) else n_batches for n in stats}
    assert calls == expected


def test_hold_reuses_one_dequantized_weight(monkeypatch):
    model, _ = _quantized("llama", "g16")
    layer = model.model.layers[0].mlp.up_proj
    x = torch.randn(3, 32)
    y = layer(x)
    count = []
    dequantize = QuantizedLinear.dequantized_weight
    monkeypatch.setattr(QuantizedLinear, "dequantized_weight", lambda self: count.append(1) or dequantize(self))
    with layer.hold():
        assert torch.equal(layer(x), y) and torch.equal(layer(x), y)
    assert len(count) == 1 and layer._held is None
    assert torch.equal(layer(x), y) and len(count) == 2


def test_block_order_calibrates_each_block_on_its_unquantized_self():
    """Block 0's inputs do not depend on quantization: in block order every layer of block 0 is GPTQ of the
    Hessian of the full-precision model; in sequential order o_proj (after q/k/v) is not."""
    spec, block = SPECS["g16"]
    calib = structured_tokens(40, 16, seed=6)
    ref = tiny("llama", seed=5)
    sums: dict[str, list] = {}  # [Σ xxᵀ, rows], accumulated batch by batch like the hooks (same float sums)

    def hook(mod, args, out, name):
        x = args[0].reshape(-1, args[0].shape[-1])
        acc = sums.setdefault(name, [torch.zeros(x.shape[1], x.shape[1]), 0])
        acc[0].addmm_(x.t(), x)
        acc[1] += x.shape[0]

    layers = {n: m for n, m in ref.model.layers[0].named_modules() if isinstance(m, torch.nn.Linear)}
    handles = [m.register_forward_hook(partial(hook, name=n)) for n, m in layers.items()]
    with torch.no_grad():
        for ids in calib.split(16):
            ref(input_ids=ids)
    for h in handles:
        h.remove()
    expected = {
        n: gptq_quantize(get_weight(layers[n]), S * (2 / rows), spec, block).weight for n, (S, rows) in sums.items()
    }
    for order in ("block", "sequential"):
        model, _ = _quantized("llama", "g16", order)
        for n, Q in expected.items():
            close = torch.allclose(model.model.layers[0].get_submodule(n).dequantized_weight(), Q, atol=1e-5)
            assert close == (order == "block" or ("o_proj" not in n and "mlp" not in n)), (order, n)


def test_block_order_is_close_to_sequential_and_runs_every_layer(trained_llama):
    val = structured_tokens(32, 32, seed=1000)
    spec = QuantSpec(3, granularity="group", group_size=16)
    losses = {}
    for order in ("sequential", "block"):
        model = tiny("llama")
        model.load_state_dict(trained_llama.state_dict())
        quantize_model(model, PTQConfig("gptq", spec, gptq_order=order), structured_tokens(32, 32, seed=500))
        with torch.no_grad():
            losses[order] = float(model(input_ids=val, labels=val).loss)
    assert losses["block"] != losses["sequential"]
    assert abs(losses["block"] - losses["sequential"]) < 0.05 * losses["sequential"]


def test_bad_gptq_order():
    with pytest.raises(QscaleError, match="gptq_order must be one of sequential, block"):
        PTQConfig("gptq", SPECS["g16"][0], gptq_order="layer")


def _hessians(model, layers, calib):
    """``(2/n) Σ xxᵀ`` of each layer's inputs over full forwards of ``model``, accumulated batch by batch like
    the hooks (the same float sums)."""
    sums: dict[str, list] = {}

    def hook(mod, args, out, name):
        x = args[0].reshape(-1, args[0].shape[-1])
        acc = sums.setdefault(name, [torch.zeros(x.shape[1], x.shape[1]), 0])
        acc[0].addmm_(x.t(), x)
        acc[1] += x.shape[0]

    handles = [m.register_forward_hook(partial(hook, name=n)) for n, m in layers.items()]
    with torch.no_grad():
        for ids in calib.split(16):
            model(input_ids=ids)
    for h in handles:
        h.remove()
    return {n: S * (2 / rows) for n, (S, rows) in sums.items()}


def _layer_by_layer(model, calib, spec, block):
    """Oracle: layer by layer in forward order, each H from full forwards of the partly quantized model."""
    modules = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    for name, mod in modules.items():
        H = _hessians(model, {name: mod}, calib)[name]
        get_weight(mod).copy_(gptq_quantize(get_weight(mod), H, spec, block).weight)
    return {n: get_weight(m) for n, m in modules.items()}


def test_a_block_that_modifies_a_stored_output_in_place_is_recomputed():
    """``attn += residual`` changes the attention output the replay kept: it notices and recomputes."""

    def in_place(self, hidden_states, **kwargs):
        attn, _ = self.self_attn(hidden_states=self.input_layernorm(hidden_states), **kwargs)
        attn += hidden_states
        return attn + self.mlp(self.post_attention_layernorm(attn))

    spec, block = SPECS["g16"]
    calib = structured_tokens(40, 16, seed=6)
    model, ref = tiny("llama", seed=5), tiny("llama", seed=5)
    for m in (model, ref):
        for layer in m.model.layers:
            layer.forward = in_place.__get__(layer)
    stats = quantize_model(model, PTQConfig("gptq", spec, block_size=block), calib)
    expected = _layer_by_layer(ref, calib, spec, block)
    assert list(stats) == list(expected)
    modules = dict(model.named_modules())
    for n, Q in expected.items():
        assert torch.allclose(modules[n].dequantized_weight(), Q, atol=1e-5), n
