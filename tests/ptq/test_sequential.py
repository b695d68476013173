"""Sequential PTQ over tiny HF causal LMs (Llama, GPT-NeoX, GPT-2)."""

import copy

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

from qscale.errors import QscaleError
from qscale.ptq import PTQ_METHODS, PTQConfig, gptq_quantize, quantize_model
from qscale.ptq.layers import find_blocks, get_weight
from qscale.quant import QuantizedLinear, QuantSpec, fake_quantize

V = 32
SPEC4 = QuantSpec(4, granularity="group", group_size=16)


def tiny(arch: str, tie: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    if arch == "llama":
        cfg = LlamaConfig(
            vocab_size=V,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            tie_word_embeddings=tie,
        )
        return LlamaForCausalLM(cfg).eval()
    if arch == "neox":
        cfg = GPTNeoXConfig(
            vocab_size=V,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=64,
        )
        return GPTNeoXForCausalLM(cfg).eval()
    cfg = GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


def structured_tokens(n: int, T: int, seed: int) -> torch.Tensor:
    """Markov chain: the next token is a fixed permutation of the current one 80% of the time."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(V, generator=torch.Generator().manual_seed(123))
    x = torch.empty(n, T, dtype=torch.long)
    x[:, 0] = torch.randint(0, V, (n,), generator=g)
    for t in range(1, T):
        noise = torch.randint(0, V, (n,), generator=g)
        x[:, t] = torch.where(torch.rand(n, generator=g) < 0.8, perm[x[:, t - 1]], noise)
    return x


def loss(model, tokens) -> float:
    with torch.no_grad():
        return float(model(input_ids=tokens, labels=tokens).loss)


@pytest.fixture(scope="module")
def trained_llama():
    model = tiny("llama").train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(30):
        batch = structured_tokens(16, 32, seed=step)
        model(input_ids=batch, labels=batch).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def _distinct_per_group(W: torch.Tensor, G: int) -> int:
    return max(len(torch.unique(W[r, c : c + G])) for r in range(W.shape[0]) for c in range(0, W.shape[1], G))


def dq(module) -> torch.Tensor:
    assert isinstance(module, QuantizedLinear), type(module)
    return module.dequantized_weight()


@pytest.mark.parametrize("arch", ["llama", "neox", "gpt2"])
def test_gptq_quantizes_every_block_linear_and_nothing_else(arch):
    model = tiny(arch)
    before = copy.deepcopy(model.state_dict())
    calib = structured_tokens(8, 16, seed=1)
    blocks_name, blocks = find_blocks(model)
    n_linear = sum(
        1 for b in blocks for m in b.modules() if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"
    )
    stats = quantize_model(model, PTQConfig("gptq", SPEC4), calib)
    assert len(stats) == n_linear and all(n.startswith(blocks_name + ".") for n in stats)
    modules = dict(model.named_modules())
    for name in stats:
        assert _distinct_per_group(dq(modules[name]), 16) <= 16
        assert modules[name].weight_packed.dtype == torch.int32
        if f"{name}.bias" in before:
            assert torch.equal(modules[name].bias, before[f"{name}.bias"])
    after = model.state_dict()
    for k, v in before.items():
        if not any(k.startswith(n + ".") for n in stats):
            assert torch.equal(after[k], v), k
    assert all(0 < s["output_rel_err"] < 0.1 and s["weight_rel_err"] > 0 for s in stats.values())
    assert torch.isfinite(torch.tensor(loss(model, calib)))


def test_each_layer_is_calibrated_on_already_quantized_layers():
    """Reference: layer by layer in forward order, H from a full forward of the partly quantized model."""
    model, ref = tiny("llama", seed=2), tiny("llama", seed=2)
    calib = structured_tokens(8, 16, seed=3)
    cfg = PTQConfig("gptq", SPEC4, block_size=8)
    stats = quantize_model(model, cfg, calib)
    modules = dict(ref.named_modules())
    for name in stats:  # stats are in forward order
        inputs = []
        handle = modules[name].register_forward_hook(
            lambda m, a, o, inputs=inputs: inputs.append(a[0].reshape(-1, a[0].shape[-1]))
        )
        loss(ref, calib)
        handle.remove()
        X = torch.cat(inputs)
        H = (2 / X.shape[0]) * X.T @ X
        q = gptq_quantize(get_weight(modules[name]), H, SPEC4, block_size=8).weight
        get_weight(modules[name]).copy_(q)
    quantized = dict(model.named_modules())
    for name in stats:
        assert torch.allclose(dq(quantized[name]), get_weight(modules[name]), atol=1e-5), name


def test_gptq_8bit_changes_trained_loss_by_under_one_percent(trained_llama):
    val = structured_tokens(32, 32, seed=1000)
    base = loss(trained_llama, val)
    assert base < 2.5  # learnt something (uniform would be ln 32 = 3.47)
    model = copy.deepcopy(trained_llama)
    quantize_model(
        model, PTQConfig("gptq", QuantSpec(8, granularity="group", group_size=16)), structured_tokens(16, 32, seed=500)
    )
    assert abs(loss(model, val) - base) / base < 0.01


def test_gptq_beats_rtn_at_low_bits_on_trained_model(trained_llama):
    val = structured_tokens(32, 32, seed=1000)
    spec = QuantSpec(2, symmetric=False, granularity="group", group_size=16)
    losses = {}
    for method in ("rtn", "gptq"):
        model = copy.deepcopy(trained_llama)
        quantize_model(model, PTQConfig(method, spec), structured_tokens(16, 32, seed=500))
        losses[method] = loss(model, val)
    assert losses["gptq"] < losses["rtn"]


def test_rtn_is_fake_quantize_of_each_selected_weight():
    model = tiny("neox")
    before = {n: get_weight(m).clone() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    stats = quantize_model(model, PTQConfig("rtn", SPEC4), None)
    modules = dict(model.named_modules())
    assert set(stats) == {n for n in before if n != "lm_head"}
    for n in stats:
        assert torch.equal(dq(modules[n]), fake_quantize(before[n], SPEC4))
        assert stats[n]["weight_rel_err"] > 0  # the "before" weight is not the overwritten one
    assert torch.equal(get_weight(modules["lm_head"]), before["lm_head"])


def test_skip_patterns_and_quantized_head():
    model = tiny("llama")
    before = copy.deepcopy(model.state_dict())
    stats = quantize_model(model, PTQConfig("gptq", SPEC4, skip=("*embed*", "*mlp*")), structured_tokens(4, 16, seed=1))
    assert "lm_head" in stats and not any("mlp" in n for n in stats)
    assert isinstance(model.lm_head, QuantizedLinear)
    after = model.state_dict()
    for k in before:
        if "mlp" in k or "embed" in k:
            assert torch.equal(after[k], before[k]), k


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_tied_head_and_embeddings_stay_in_full_precision(arch):
    model = tiny(arch, tie=True)
    emb = model.get_input_embeddings().weight.clone()
    stats = quantize_model(model, PTQConfig("gptq", SPEC4, skip=()), structured_tokens(4, 16, seed=1))
    assert "lm_head" not in stats and not any("embed" in n or "wte" in n or "wpe" in n for n in stats)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert torch.equal(model.get_input_embeddings().weight, emb)


def test_untied_embedding_is_never_quantized():
    model = tiny("neox")
    emb = model.gpt_neox.embed_in.weight.clone()
    stats = quantize_model(model, PTQConfig("gptq", SPEC4, skip=("*lm_head",)), structured_tokens(4, 16, seed=1))
    assert "gpt_neox.embed_in" not in stats and "lm_head" not in stats
    assert torch.equal(model.gpt_neox.embed_in.weight, emb)


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_non_finite_weight_names_the_layer(method):
    model = tiny("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[3, 4] = float("nan")
    with pytest.raises(QscaleError, match=r"layers\.1\.mlp\.up_proj.*NaN or Inf"):
        quantize_model(model, PTQConfig(method, SPEC4), structured_tokens(4, 16, seed=1))


def test_non_finite_activations_are_an_error():
    model = tiny("llama")
    with torch.no_grad():
        model.model.layers[0].input_layernorm.weight[0] = float("inf")
    with pytest.raises(QscaleError, match="NaN or Inf"):
        quantize_model(model, PTQConfig("gptq", SPEC4), structured_tokens(4, 16, seed=1))


def test_bad_configs():
    assert set(PTQ_METHODS) == {"rtn", "gptq", "learned-round", "qllm"}
    with pytest.raises(QscaleError):
        PTQConfig("awq", SPEC4)
    with pytest.raises(QscaleError):
        PTQConfig("gptq", QuantSpec(4, granularity="token"))
    with pytest.raises(QscaleError):
        PTQConfig("gptq", SPEC4, damp=0)
    with pytest.raises(QscaleError):
        quantize_model(tiny("gpt2"), PTQConfig("gptq", SPEC4), None)
