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
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
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
    neox = GPTNeoXForCausalLM(
        GPTNeoXConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    )
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
    with pytest.raises(QscaleError, match=r"cannot load checkpoint .*ok"):
        load_model(tmp_path / "ok")
    with pytest.raises(QscaleError, match="does not exist"):
        load_model(tmp_path / "missing")
    (tmp_path / "noconfig").mkdir()
    with pytest.raises(QscaleError, match=r"no config\.json"):
        load_model(tmp_path / "noconfig")
    model.save_pretrained(tmp_path / "badcfg")
    (tmp_path / "badcfg" / "config.json").write_text(json.dumps({"model_type": "nonexistent-arch"}))
    with pytest.raises(QscaleError, match="badcfg"):
        load_model(tmp_path / "badcfg")


def _resave(src, dst, edit):
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})


def test_missing_unexpected_or_non_finite_weights_are_errors(tmp_path):
    build_model("xs", 300, max_seq_len=64).save_pretrained(tmp_path / "ok")
    _resave(tmp_path / "ok", tmp_path / "missing", lambda t: t.pop("model.norm.weight"))
    _resave(tmp_path / "ok", tmp_path / "extra", lambda t: t.update({"model.extra": torch.ones(3)}))
    _resave(tmp_path / "ok", tmp_path / "inf", lambda t: t["model.norm.weight"].__setitem__(0, float("inf")))
    with pytest.raises(QscaleError, match=r"lacks 1 weight.*model\.norm\.weight"):
        load_model(tmp_path / "missing")
    with pytest.raises(QscaleError, match=r"does not use: model\.extra"):
        load_model(tmp_path / "extra")
    with pytest.raises(QscaleError, match=r"corrupt: tensor model\.norm\.weight holds NaN or Inf"):
        load_model(tmp_path / "inf")


def test_converted_qat_model_saved_with_save_pretrained_is_refused(tmp_path, capfd):
    from qscale.qat import QATRecipeConfig, convert, prepare

    model = build_model("xs", 300, max_seq_len=64)
    convert(prepare(model, QATRecipeConfig(recipe="ste", w_bits=4, a_bits=16)))
    model.save_pretrained(tmp_path / "qat")
    with pytest.raises(QscaleError, match=r"lacks \d+ weight.*integer codes"):
        load_model(tmp_path / "qat")
    assert "MISSING" not in capfd.readouterr().err  # transformers' own table is not printed


def test_model_positions_of_llama_and_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    from qscale.models.load import model_positions

    assert model_positions(build_model("xs", 300, max_seq_len=96)) == 96
    assert (
        model_positions(GPT2LMHeadModel(GPT2Config(vocab_size=300, n_positions=48, n_embd=16, n_layer=1, n_head=2)))
        == 48
    )
