import json

import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from qscale.errors import QscaleError
from qscale.models import SIZES, build_model, count_params, load_model


def _llama_non_embedding(d, layers, ffn):
    # per layer: q,k,v,o (4 d^2) + SwiGLU gate/up/down (3 d ffn) + 2 RMSNorm weights; + final norm
    return layers * (4 * d * d + 3 * d * ffn + 2 * d) + d


def test_ladder_counts_match_definition_and_span_30x():
    counts = {}
    for name, s in SIZES.items():
        model = build_model(name, vocab_size=300, max_seq_len=64)
        c = count_params(model)
        assert c.non_embedding == _llama_non_embedding(s.d_model, s.n_layers, s.ffn)
        assert c.total == c.non_embedding + 2 * 300 * s.d_model  # untied input embedding + lm_head
        counts[name] = c.non_embedding
    assert list(counts.values()) == sorted(counts.values())
    assert counts["xl"] / counts["xs"] >= 30


def test_build_is_seeded():
    a, b = build_model("xs", 300, seed=1), build_model("xs", 300, seed=1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    c = build_model("xs", 300, seed=2)
    assert not torch.equal(a.model.layers[0].mlp.up_proj.weight, c.model.layers[0].mlp.up_proj.weight)
    with pytest.raises(QscaleError, match="unknown model size"):
        build_model("xxl", 300)


def test_count_params_excludes_position_embeddings_gpt_neox_and_gpt2(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=2))
    c = count_params(gpt2)  # tied lm_head; wte and wpe are embeddings
    assert c.total == sum(p.numel() for p in gpt2.parameters())
    assert c.non_embedding == c.total - 300 * 32 - 64 * 32
    neox = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2,
                                            num_attention_heads=2, intermediate_size=64))
    assert count_params(neox).non_embedding == count_params(neox).total - 2 * 300 * 32


def test_load_model_round_trip_and_corruption(tmp_path):
    model = build_model("xs", 300, max_seq_len=64)
    model.save_pretrained(tmp_path / "ok")
    loaded = load_model(tmp_path / "ok")
    x = torch.randint(0, 300, (2, 10))
    torch.testing.assert_close(loaded(input_ids=x).logits, model.eval()(input_ids=x).logits)
    assert next(loaded.parameters()).dtype == torch.float32

    weights = tmp_path / "ok" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(QscaleError, match="cannot load checkpoint .*ok"):
        load_model(tmp_path / "ok")
    with pytest.raises(QscaleError, match="does not exist"):
        load_model(tmp_path / "missing")
    (tmp_path / "noconfig").mkdir()
    with pytest.raises(QscaleError, match="no config.json"):
        load_model(tmp_path / "noconfig")
    model.save_pretrained(tmp_path / "badcfg")
    (tmp_path / "badcfg" / "config.json").write_text(json.dumps({"model_type": "nonexistent-arch"}))
    with pytest.raises(QscaleError, match="badcfg"):
        load_model(tmp_path / "badcfg")
