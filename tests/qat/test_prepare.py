import copy

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from qscale.errors import QscaleError
from qscale.qat import LayerRule, QATRecipeConfig, QuantLinear, convert, plan_layers, prepare, quant_layers
from qscale.quant import QuantizedLinear

VOCAB = 64  # as in conftest.py

RECIPE_CFGS = [
    QATRecipeConfig("ste", w_bits=4, a_bits=4, group_size=32),
    QATRecipeConfig("ste", w_bits=3, a_bits=16, group_size=None, act_group_size=32),
    QATRecipeConfig("lsq", w_bits=4, a_bits=4, group_size=32),
    QATRecipeConfig("lsq", w_bits=4, a_bits=4, group_size=32, lsq_plus=True),
    QATRecipeConfig("quest", w_bits=4, a_bits=4),
    QATRecipeConfig("bitnet"),
    QATRecipeConfig("pbllm", salient_fraction=0.1),
]


CASES = [("llama", c) for c in RECIPE_CFGS] + [("neox", RECIPE_CFGS[i]) for i in (0, 3, 4)]


@pytest.mark.parametrize(("arch", "cfg"), CASES, ids=[f"{a}-{c.label}" for a, c in CASES])
def test_convert_gives_same_logits_as_fake_quant(tiny, arch, cfg):
    model = tiny[arch]()
    reference = copy.deepcopy(model)
    ids = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(0))
    prepare(model, cfg)
    with torch.no_grad():
        fake = model(input_ids=ids).logits
    convert(model)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantizedLinear)}
    assert layers and not quant_layers(model)
    assert not any(n.endswith(".weight") for n, _ in model.named_parameters() if "layers" in n and "norm" not in n)
    for layer in layers.values():
        assert layer.weight_packed.dtype == torch.int32
        assert not any(p.requires_grad for p in layer.parameters())
    with torch.no_grad():
        frozen = model(input_ids=ids).logits
    assert torch.allclose(frozen, fake, atol=1e-5, rtol=0)
    with torch.no_grad():
        assert not torch.allclose(reference(input_ids=ids).logits, fake, atol=1e-5)  # it did quantize


def test_default_selection_excludes_head_and_embeddings(llama, neox):
    for model, head in ((llama, "lm_head"), (neox, "lm_head")):
        plans = plan_layers(model, QATRecipeConfig("ste"))
        linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
        assert head not in plans and set(plans) == set(linears) - {head}
        assert all((p.w_bits, p.a_bits) == (4, 4) for p in plans.values())


def test_mixed_precision_rules_select_intended_layers(llama):
    cfg = QATRecipeConfig(
        "ste",
        rules=(
            LayerRule("*.mlp.down_proj", a_bits=8),
            LayerRule("re:model\\.layers\\.1\\.self_attn\\.[qk]_proj", w_bits=8),
            LayerRule("model.layers.0.self_attn.o_proj", skip=True),
            LayerRule("*.up_proj", w_bits=16, a_bits=16),
        ),
    )
    plans = plan_layers(llama, cfg)
    assert plans["model.layers.0.mlp.down_proj"].a_bits == 8 and plans["model.layers.1.mlp.down_proj"].a_bits == 8
    assert plans["model.layers.0.mlp.down_proj"].w_bits == 4
    assert plans["model.layers.1.self_attn.q_proj"].w_bits == 8 and plans["model.layers.1.self_attn.k_proj"].w_bits == 8
    assert plans["model.layers.0.self_attn.q_proj"].w_bits == 4 and plans["model.layers.1.self_attn.v_proj"].w_bits == 4
    assert "model.layers.0.self_attn.o_proj" not in plans and "model.layers.1.self_attn.o_proj" in plans
    assert not any(n.endswith("up_proj") for n in plans)
    assert plans["model.layers.0.mlp.gate_proj"].a_bits == 4
    prepare(llama, cfg)
    down = llama.model.layers[0].mlp.down_proj
    assert isinstance(down, QuantLinear) and down.act_quantizer.spec.bits == 8 and down.weight_quantizer.spec.bits == 4
    assert isinstance(llama.model.layers[0].self_attn.o_proj, torch.nn.Linear)
    assert isinstance(llama.model.layers[0].mlp.up_proj, torch.nn.Linear)
    assert isinstance(llama.lm_head, torch.nn.Linear)


def test_w16_operand_is_not_quantized(llama):
    prepare(llama, QATRecipeConfig("ste", w_bits=4, a_bits=16))
    layer = llama.model.layers[0].mlp.down_proj
    assert layer.act_quantizer is None and layer.weight_quantizer is not None


def test_bad_input_raises(llama):
    with pytest.raises(QscaleError):
        QATRecipeConfig("nope")
    with pytest.raises(QscaleError):
        QATRecipeConfig("ste", w_bits=12)
    with pytest.raises(QscaleError):
        QATRecipeConfig("bitnet", w_bits=4)
    with pytest.raises(QscaleError):
        QATRecipeConfig("ste", lsq_plus=True)
    with pytest.raises(QscaleError):
        LayerRule("re:[unclosed")
    with pytest.raises(QscaleError, match="matches no"):
        plan_layers(llama, QATRecipeConfig("ste", rules=(LayerRule("*.fc2", a_bits=8),)))
    prepare(llama, QATRecipeConfig("ste"))
    with pytest.raises(QscaleError, match="already"):
        prepare(llama, QATRecipeConfig("ste"))


def test_gpt2_conv1d_is_prepared_and_converted():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64)).eval()
    ids = torch.randint(0, VOCAB, (2, 16))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    unq = copy.deepcopy(model)
    prepare(unq, QATRecipeConfig("ste", w_bits=16, a_bits=16, rules=(LayerRule("*.c_fc", w_bits=8, a_bits=8),)))
    with torch.no_grad():
        assert torch.allclose(unq(input_ids=ids).logits, ref, atol=1e-2)  # only c_fc at 8 bits: close
    prepare(model, QATRecipeConfig("ste", group_size=32))
    assert len(quant_layers(model)) == 8
    with torch.no_grad():
        fake = model(input_ids=ids).logits
    convert(model)
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, fake, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "cfg", [RECIPE_CFGS[0], RECIPE_CFGS[3], RECIPE_CFGS[4], RECIPE_CFGS[5], RECIPE_CFGS[6]], ids=lambda c: c.label
)
def test_bf16_training_step_and_convert(llama, cfg):
    model = llama.to(torch.bfloat16)
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    prepare(model, cfg)
    logits = model(input_ids=ids).logits
    assert logits.dtype == torch.bfloat16
    logits.float().logsumexp(-1).mean().backward()
    grads = [p.grad for n, p in model.named_parameters() if n.endswith("down_proj.weight")]
    assert grads and all(g is not None and g.dtype == torch.bfloat16 and g.abs().sum() > 0 for g in grads)
    with torch.no_grad():
        fake = model(input_ids=ids).logits
    convert(model)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, fake)


def test_non_finite_weight_at_prepare_names_the_layer(llama):
    with torch.no_grad():
        llama.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
    with pytest.raises(QscaleError, match=r"layers\.1\.mlp\.up_proj.*NaN or Inf"):
        prepare(llama, QATRecipeConfig("ste"))


@pytest.mark.parametrize("cfg", [c for c in RECIPE_CFGS if c.default_bits[1] < 16], ids=lambda c: c.label)
def test_non_finite_activations_name_the_layer(llama, cfg):
    prepare(llama, cfg)
    with torch.no_grad():
        llama.model.layers[0].input_layernorm.weight[0] = float("inf")
        with pytest.raises(QscaleError, match=r"layer model\.layers\.0\..*NaN or Inf"):
            llama(input_ids=torch.randint(0, VOCAB, (1, 8)))
