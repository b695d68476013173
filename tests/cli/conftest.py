"""A small text corpus and user model folders (GPT-NeoX, GPT-2) saved with ``save_pretrained`` + a tokenizer."""

import sysconfig
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """80 .txt documents (the first stdlib sources): enough held-out text for 16 windows of 64 tokens."""
    folder = tmp_path_factory.mktemp("corpus")
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:80]
    for f in files:
        (folder / f"{f.stem}.txt").write_text(f.read_text(errors="replace"))
    return folder


@pytest.fixture(scope="session")
def user_models(tmp_path_factory, streams):
    """``{"neox": path, "gpt2": path}``: random tiny models as a user would have them on disk."""
    base = tmp_path_factory.mktemp("user-models")
    torch.manual_seed(0)
    models = {
        "neox": GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=512, hidden_size=64, intermediate_size=256,
                                                 num_hidden_layers=2, num_attention_heads=4,
                                                 max_position_embeddings=128)),
        "gpt2": GPT2LMHeadModel(GPT2Config(vocab_size=512, n_embd=64, n_layer=2, n_head=4, n_positions=128,
                                           bos_token_id=0, eos_token_id=0)),
    }
    paths = {}
    for name, model in models.items():
        model.save_pretrained(base / name)
        streams.tokenizer.save(str(base / name / "tokenizer.json"))
        paths[name] = base / name
    return paths


@pytest.fixture
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("QSCALE_CACHE", str(tmp_path_factory.getbasetemp() / "commands-cache"))
