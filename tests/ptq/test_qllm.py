"""QLLM: the reassembly search equals the authors' code (golden values), one reassembly per shared input (none
on o_proj) capped at 0.1·C added channels with asymmetric per-token activations, splitting and merging equal
channels keep the function, low-rank tuning lowers the block error, the W4A4 result beats RTN with the same
activation quantizer, the qscale format holds it."""

import copy

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from qscale.errors import QscaleError
from qscale.export import export_model, load_quantized
from qscale.ptq import PTQ_METHODS, PTQConfig, quantize_model
from qscale.ptq.qllm import QLLMLinear, act_quant_spec, search_stage, tune_block
from qscale.ptq.qllm_search import split_then_merged
from qscale.ptq.sequential import BlockInput, capture_block_inputs, run_block
from qscale.quant import QuantizedLinear, QuantSpec
from qscale.quant.ste import STEActQuantizer

SPEC = QuantSpec(4, True, "channel", None)


def _outlier_llama() -> LlamaForCausalLM:
    """A tiny Llama whose normalised inputs have outlier channels 2 and 3 (and 5 before the MLP)."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    ).eval()
    with torch.no_grad():
        for block in model.model.layers:
            block.input_layernorm.weight[2:4] = 30.0
            block.post_attention_layernorm.weight[5] = 20.0
    return model


CALIB = torch.randint(0, 64, (8, 32), generator=torch.Generator().manual_seed(1))
IDS = torch.randint(0, 64, (4, 32), generator=torch.Generator().manual_seed(2))


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def test_registered_and_act_bits_validated():
    assert "qllm" in PTQ_METHODS
    with pytest.raises(QscaleError, match="act_bits"):
        PTQConfig("qllm", SPEC, act_bits=12)


# Golden values from the authors' code, github:ModelTC/QLLM at 653a329e4a5bf17b9296854617e093b7d45643b9, run on CPU
# in a scratch folder (its modules need no CUDA): reassembly/cr_module.py CRModule(layer, channel_ratio=0.1)
# .find_threshold(x, x_max, ..., function="fc1" | "post_attn_norm") with quantize/quantizer.py
# UniformAffineQuantizer(4, symmetric=False, dynamic_method="per_token") on activations and (..., "per_channel")
# on weights, then find_outlier_channels_and_store, the weight split and find_similar_channels_and_store of
# models/int_qllm_llama_layer.py output_reassembly, assemble_fc, and CRModule.forward(x) = M(x). Inputs: _golden_x.
# θ and the number of added channels; the column sums of M(x) [96 rows] and of the reassembled weight.
LINEAR_THETA = {
    0: (78.47505573937848, 1),
    1: (43.20298643057029, 2),
    2: (27.89561716177862, 4),
    3: (44.33897746546892, 3),
}
LINEAR_MX_SUM = {
    1: [
        21.52462,
        -11.42106,
        4.73961,
        50.81261,
        50.81261,
        50.81261,
        8.54879,
        0.9743762,
        -5.473499,
        -14.34692,
        -13.16097,
        14.71207,
        -99.65851,
        3.191614,
        5.676227,
        2.783563,
        4.843103,
        -5.319172,
        -7.687274,
        -6.729198,
        -15.60772,
        -3.676444,
        4.028391,
        7.626714,
        7.725192,
        111.6799,
        4.489348,
        6.830888,
        0.2265029,
        22.5906,
        -59.01662,
        -1.369752,
        -16.5686,
        -0.1659431,
        29.40353,
        -3.765455,
        -14.80605,
        -7.199897,
        6.478964,
        4.528419,
    ],
    3: [
        0.8284727,
        -5.329072,
        -13.85124,
        12.28703,
        12.28703,
        12.28703,
        -6.520897,
        -13.80738,
        -9.778764,
        16.70387,
        1.430888,
        -17.8313,
        -17.8313,
        6.016181,
        2.260841,
        10.40152,
        -11.79636,
        3.147535,
        -17.56075,
        -2.614598,
        12.07508,
        2.92603,
        -16.19615,
        -2.064175,
        4.737287,
        18.31085,
        2.17082,
        -42.34697,
        6.9967,
        19.36421,
        11.77939,
        -39.15863,
        -10.78264,
        -6.749161,
        -22.88544,
        3.305475,
        -10.04721,
        11.14487,
        -4.971811,
        -13.63775,
    ],
}
LINEAR_W_SUM = {
    1: [
        0.274754,
        -0.1253993,
        -1.35208,
        0.6909729,
        0.6909729,
        0.6909729,
        -0.7063879,
        -0.5033889,
        -1.166456,
        1.044819,
        -0.2022402,
        0.8902802,
        0.2468319,
        0.8474203,
        0.05208272,
        -0.7433591,
        -0.3385323,
        0.4725186,
        -0.8580905,
        -0.4203573,
        -0.4525065,
        -0.7967784,
        -0.190171,
        -0.1196306,
        0.1833347,
        0.5156204,
        -0.4888143,
        -0.3715881,
        0.2504495,
        0.5819355,
        -0.4115117,
        0.4370497,
        -0.5032325,
        -0.4093665,
        0.4831577,
        -1.148043,
        0.4704235,
        0.03740579,
        -0.7984229,
        -0.2419037,
    ],
    3: [
        -1.223834,
        -0.0008227825,
        0.5532361,
        1.312546,
        1.312546,
        1.312546,
        0.9749972,
        -0.5176403,
        -0.3909084,
        -0.3041359,
        -0.4370798,
        0.1890945,
        0.1890945,
        -0.07641355,
        0.4369072,
        -0.01192924,
        -0.249233,
        1.380971,
        0.5193824,
        0.3688073,
        -0.07946685,
        -1.029461,
        0.9318844,
        0.2135002,
        -0.009482965,
        -0.0202578,
        0.2225516,
        1.961145,
        -0.4759479,
        -1.064971,
        0.2508682,
        0.1305311,
        0.7411133,
        1.070103,
        -0.2527985,
        -0.09080416,
        0.3308737,
        -1.205598,
        -0.003002018,
        0.2916624,
    ],
}
SWIGLU = {
    0: (
        78.47505573937848,
        1,
        [
            4.653056,
            8.874276,
            159.9613,
            159.9613,
            2.656121,
            8.627778,
            -12.28976,
            0.547576,
            4.241655,
            4.7641,
            142.6302,
            -0.2702425,
            4.207906,
            -5.29432,
            2.705874,
            -8.168781,
            -18.81408,
            20.77781,
            -35.77952,
            -11.10127,
            5.018983,
            -5.806734,
            2.534839,
            -12.80007,
            15.80233,
            19.50083,
            -8.419127,
            13.289,
            1.23177,
            -30.41049,
            -15.83735,
            -19.76225,
            -8.710874,
            7.801931,
            2.61374,
            25.15842,
            -3.305011,
            14.89383,
            9.046062,
            7.476054,
        ],
    ),
    2: (
        46.95288763747479,
        2,
        [
            0.7599733,
            8.305167,
            -7.218945,
            -82.58661,
            -82.58661,
            -8.934428,
            -10.70733,
            -6.902179,
            16.15116,
            13.23866,
            -4.417164,
            -6.835371,
            -6.835371,
            11.12004,
            6.938477,
            8.535744,
            -10.25674,
            -6.955547,
            19.92484,
            12.88095,
            11.56778,
            -21.36796,
            0.5371876,
            13.69054,
            -8.772982,
            0.3530955,
            -55.27325,
            12.40148,
            2.512342,
            11.88889,
            11.05876,
            39.11041,
            -17.30711,
            12.93802,
            0.5871272,
            -7.604984,
            7.460833,
            8.714008,
            -10.49084,
            -4.040903,
        ],
    ),
}


def _golden_x(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 96, 40, generator=g)
    x[..., 3] *= 30.0
    x[..., 10] *= 14.0
    x[..., 25] *= 9.0
    x[..., 30] *= 6.0
    return x, torch.randn(12, 40, generator=g) * 0.2


class _Linear(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.layer = nn.Linear(w.shape[1], w.shape[0], bias=False)
        self.layer.weight.data = w.clone()

    def forward(self, x):
        return (self.layer(x),)


class _SwiGLU(nn.Module):
    def __init__(self, wg, wu):
        super().__init__()
        self.gate, self.up, self.down = nn.Linear(40, 16, bias=False), nn.Linear(40, 16, bias=False), nn.Linear(16, 40)
        self.gate.weight.data, self.up.weight.data = wg.clone(), wu.clone()

    def forward(self, x):
        return (self.down(nn.functional.silu(self.gate(x)) * self.up(x)),)


W4_ASYM = QuantSpec(4, False, "channel", None)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_reassembly_search_equals_the_authors_on_a_linear_output(seed):
    x, w = _golden_x(seed)
    block = _Linear(w)
    rows = x[0]
    r, st = search_stage(
        block, block, BlockInput((x,), {}), ["layer"], "layer", True, rows, rows.abs().amax(0), W4_ASYM, 4
    )
    theta, extra = LINEAR_THETA[seed]
    assert st["theta"] == pytest.approx(theta, rel=1e-9) and st["extra_channels"] == extra
    assert r.width == 40 and r.src.numel() == 40 + extra
    if seed in LINEAR_MX_SUM:  # 1: two channels merged into one; 3: an odd split width (43)
        assert r.apply(rows).sum(0).tolist() == pytest.approx(LINEAR_MX_SUM[seed], rel=1e-5, abs=1e-4)
        assert r.weight(w).sum(0).tolist() == pytest.approx(LINEAR_W_SUM[seed], rel=1e-5, abs=1e-5)


# The same on _golden_x(seed) scaled by 0.05 (channel maxima < 50: the search's 100-step floor binds).
LINEAR_SMALL_THETA = {1: (2.1367053890228327, 2), 2: (1.387451226338749, 4)}


@pytest.mark.parametrize("seed", [1, 2])
def test_reassembly_search_equals_the_authors_on_small_activations(seed):
    x, w = _golden_x(seed)
    x = x * 0.05
    block = _Linear(w)
    rows = x[0]
    _, st = search_stage(
        block, block, BlockInput((x,), {}), ["layer"], "layer", True, rows, rows.abs().amax(0), W4_ASYM, 4
    )
    theta, extra = LINEAR_SMALL_THETA[seed]
    assert st["theta"] == pytest.approx(theta, rel=1e-9) and st["extra_channels"] == extra


@pytest.mark.parametrize("seed", [0, 2])
def test_reassembly_search_equals_the_authors_on_the_swiglu_output(seed):
    x, _ = _golden_x(seed)
    g = torch.Generator().manual_seed(100 + seed)
    block = _SwiGLU(torch.randn(16, 40, generator=g) * 0.2, torch.randn(16, 40, generator=g) * 0.2)
    rows = x[0]
    r, st = search_stage(
        block, block, BlockInput((x,), {}), ["gate", "up"], "down", False, rows, rows.abs().amax(0), W4_ASYM, 4
    )
    theta, extra, mx_sum = SWIGLU[seed]
    assert st["theta"] == pytest.approx(theta, rel=1e-9) and st["extra_channels"] == extra
    assert r.apply(rows).sum(0).tolist() == pytest.approx(mx_sum, rel=1e-5, abs=1e-4)


# The authors' attention scoring (CRModule.qkv_function, function="qkv", same commit): their code calls the rotary
# API of transformers 4.3x, so in the scratch run only apply_rotary_pos_emb and layer.rotary_emb were ported onto
# this transformers' (same math), with an additive causal mask; q/k/v of _attention_llama(seed)'s block, the first
# window of ids. θ, added channels and the column sums of M(x).
QKV = {
    0: (55.672041409782004, 1, [-2.880002, -2.790939, -0.4957273, 35.43892, 35.43892, 5.681803, 0.4681262]),
    1: (61.97463453681238, 1, [-5.944967, -2.167231, 5.70594, -166.4714, -166.4714, 4.255359, -2.128575]),
}


def _attention_llama(seed):
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    ).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.05 if "norm" in n else 0.3) + (1.0 if "norm" in n else 0.0))
        model.model.layers[0].input_layernorm.weight[[3, 17]] = torch.tensor([25.0, 12.0])
    return model


@pytest.mark.parametrize("seed", [0, 1])
def test_reassembly_search_equals_the_authors_on_the_attention_output(seed):
    model = _attention_llama(seed)
    ids = torch.randint(0, 64, (1, 24), generator=torch.Generator().manual_seed(seed + 1))
    block = model.model.layers[0]
    inp = capture_block_inputs(model, block, ids, False)[0]
    with torch.no_grad():
        x = block.input_layernorm(inp.hidden())[0]
    p = "model.layers.0.self_attn."
    r, st = search_stage(
        model,
        block,
        inp,
        [p + "q_proj", p + "k_proj", p + "v_proj"],
        p + "o_proj",
        False,
        x,
        x.abs().amax(0),
        W4_ASYM,
        4,
    )
    theta, extra, mx_sum = QKV[seed]
    assert st["theta"] == pytest.approx(theta, rel=1e-9) and st["extra_channels"] == extra
    assert r.apply(x).sum(0)[:7].tolist() == pytest.approx(mx_sum, rel=1e-5, abs=1e-4)


def test_splitting_and_merging_equal_channels_keep_the_function_and_shrink_the_outlier():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 16, generator=g)
    x[:, 1::2] = x[:, 0::2]  # pairs of equal channels: merging one pair is exact
    x[:, 4] *= 30  # the outlier (its twin 5 too)
    w = torch.randn(8, 16, generator=g)
    splits = torch.ones(16)
    splits[4] = splits[5] = 2
    r = split_then_merged(splits, x, w)
    assert r.width == 16 and r.src.numel() == 18
    assert torch.allclose(r.apply(x) @ r.weight(w).t(), x @ w.t(), rtol=1e-5, atol=1e-4)
    assert float(r.apply(x).abs().amax()) == pytest.approx(float(x.abs().amax()) / 2, rel=1e-6)


def test_one_reassembly_per_shared_input_none_on_o_proj_capped_and_asymmetric_per_token_activations():
    model = _outlier_llama()
    stats = quantize_model(model, PTQConfig("qllm", SPEC, act_bits=4, qllm_steps=0), CALIB)
    for b in (0, 1):

        def layer(n: str, b: int = b) -> torch.nn.Module:
            return model.get_submodule(f"model.layers.{b}.{n}")

        for group in (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("mlp.gate_proj", "mlp.up_proj")):
            first = layer(group[0]).reassembly()
            assert first is not None
            for n in group[1:]:
                other = layer(n).reassembly()
                assert all(torch.equal(getattr(first, a), getattr(other, a)) for a in ("src", "dst", "coef"))
        assert layer("self_attn.o_proj").reassembly() is None
        assert layer("mlp.down_proj").reassembly() is not None
        for n, width in (("self_attn.q_proj", 64), ("mlp.gate_proj", 64), ("mlp.down_proj", 128)):
            assert 0 < stats[f"model.layers.{b}.{n}"]["extra_channels"] <= int(0.1 * width)
        act = layer("self_attn.q_proj").act_quantizer
        assert act.spec.granularity == "token" and not act.spec.symmetric and act.spec.bits == 4
    assert "qllm" in PTQ_METHODS


def test_low_rank_tuning_lowers_every_block_error_and_beats_rtn_w4a4():
    model = _outlier_llama()
    ref = _logits(model)
    rtn, qllm, only = copy.deepcopy(model), copy.deepcopy(model), copy.deepcopy(model)
    rtn_stats = quantize_model(rtn, PTQConfig("rtn", SPEC), None)
    for n in rtn_stats:  # the same activation quantizer as QLLM's
        rtn.get_submodule(n).act_quantizer = STEActQuantizer(act_quant_spec(4))
    stats = quantize_model(qllm, PTQConfig("qllm", SPEC, act_bits=4, qllm_steps=40), CALIB)
    quantize_model(only, PTQConfig("qllm", SPEC, act_bits=4, qllm_steps=0), CALIB)
    for b in (0, 1):
        s = stats[f"model.layers.{b}.self_attn.q_proj"]
        assert s["block_err_tuned"] < s["block_err_rtn"]
    assert all(
        isinstance(m, QuantizedLinear) and m.act_quantizer is not None and m.reassembled != n.endswith("o_proj")
        for n, m in qllm.named_modules()
        if n in stats
    )
    err = {k: float(((_logits(m) - ref) ** 2).mean()) for k, m in (("rtn", rtn), ("qllm", qllm), ("only", only))}
    assert err["qllm"] < err["only"] < err["rtn"]


def test_qscale_format_round_trips_the_reassembly_and_standard_formats_refuse(tmp_path):
    model = _outlier_llama()
    quantize_model(model, PTQConfig("qllm", QuantSpec(4, True, "group", 32), act_bits=6, qllm_steps=5), CALIB)
    export_model(model, tmp_path / "q", "qscale")
    loaded = load_quantized(tmp_path / "q")
    assert torch.equal(_logits(loaded), _logits(model))
    layer = loaded.get_submodule("model.layers.0.self_attn.q_proj")
    assert layer.reassembled and layer.act_quantizer.spec.bits == 6
    with pytest.raises(QscaleError, match="reassembled"):
        export_model(model, tmp_path / "ct", "compressed-tensors")


def test_gradient_flow_low_rank_terms_learn_and_the_quantized_weight_stays_bit_identical():
    model = _outlier_llama().requires_grad_(False)
    block = model.model.layers[0]
    with torch.no_grad():
        inputs = capture_block_inputs(model, block, CALIB, False)
        targets = [run_block(block, i) for i in inputs]
    layers = {}
    for name in ("self_attn.q_proj", "mlp.down_proj"):
        mod = block.get_submodule(name)
        layers[name] = QLLMLinear(mod.weight.data, None, SPEC, 4, 4, None)
        parent, _, child = name.rpartition(".")
        setattr(block.get_submodule(parent), child, layers[name])
    frozen = {n: (m.w.clone(), m.scale.clone(), m.zero.clone()) for n, m in layers.items()}
    (run_block(block, inputs[0]) - targets[0]).pow(2).mean().backward()
    for m in layers.values():
        assert m.b.grad is not None and bool((m.b.grad == 0).all())  # A = 0 at the start: B's gradient is A^T·…
        assert m.a.grad is not None and float(m.a.grad.abs().sum()) > 0
        m.a.grad = m.b.grad = None
    ab0 = {n: (m.a.detach().clone(), m.b.detach().clone()) for n, m in layers.items()}
    tune_block(block, layers, inputs, targets, steps=3, lr=1e-3)  # the last batch is held out
    for n, m in layers.items():
        assert not torch.equal(m.a, ab0[n][0]) and not torch.equal(m.b, ab0[n][1])
        assert all(torch.equal(x, y) for x, y in zip((m.w, m.scale, m.zero), frozen[n], strict=True))
