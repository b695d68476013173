import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from qscale.data.batches import eval_windows
from qscale.errors import QscaleError
from qscale.evaluate import evaluate
from qscale.models import load_model
from qscale.train import TrainConfig, list_checkpoints, train
from qscale.train.suite import SUITE_PRESETS, train_suite

TINY = dict(tokens=12 * 8 * 32, batch_size=8, seq_len=32, lr=3e-3, warmup_steps=2, eval_windows=4)


def _weights(path):
    return load_file(str(path / "model.safetensors"))


def test_tiny_suite_lowers_validation_loss_and_writes_metadata(streams, tmp_path):
    runs = train_suite(SUITE_PRESETS["tiny"], streams, tmp_path, progress=False)
    assert set(runs) == {"xs", "s"}
    for ckpts in runs.values():
        assert [c.step for c in ckpts] == [1, 2, 4, 8, 16, 24]
        assert ckpts[-1].meta["val_loss"] < ckpts[0].meta["val_loss"] - 0.5
        meta = ckpts[-1].meta
        assert meta["tokens"] == 24 * 8 * 32 and meta["N"] < meta["total_params"]
        assert meta["tokenizer_hash"] == streams.tokenizer_hash and meta["seed"] == 0 and "torch" in meta["versions"]
        assert (ckpts[-1].path / "tokenizer.json").is_file()
    assert runs["s"][-1].meta["N"] > runs["xs"][-1].meta["N"]
    model = load_model(runs["xs"][-1].path)
    r = evaluate(model, eval_windows(streams.val, SUITE_PRESETS["tiny"].base.eval_windows, 32))
    assert r.loss == pytest.approx(runs["xs"][-1].meta["val_loss"], rel=1e-5)


def test_killed_and_resumed_run_is_bit_identical(streams, tmp_path):
    cfg = TrainConfig(size="xs", grad_accum=2, **TINY)  # checkpoints 1, 2, 4, 8, 12
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        train(cfg, streams, tmp_path / "full", progress=False)
        # "kill" after step 6: the last saved state is step 4; steps 5-6 are lost and redone
        train(cfg, streams, tmp_path / "killed", progress=False, stop_after_steps=6)
        assert [c.step for c in list_checkpoints(tmp_path / "killed")] == [1, 2, 4]
        train(cfg, streams, tmp_path / "killed", progress=False)
    finally:
        torch.use_deterministic_algorithms(prev)
    full, resumed = list_checkpoints(tmp_path / "full"), list_checkpoints(tmp_path / "killed")
    assert [c.step for c in full] == [c.step for c in resumed] == [1, 2, 4, 8, 12]
    for a, b in zip(full, resumed, strict=True):
        wa, wb = _weights(a.path), _weights(b.path)
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
        assert (a.meta["val_loss"], a.meta["train_loss"]) == (b.meta["val_loss"], b.meta["train_loss"])
    with pytest.raises(QscaleError, match="different config"):
        train(TrainConfig(size="xs", **{**TINY, "lr": 1e-3}), streams, tmp_path / "full", progress=False)


def test_list_checkpoints_skips_incomplete(streams, tmp_path):
    train(TrainConfig(size="xs", **{**TINY, "tokens": 2 * 8 * 32}), streams, tmp_path, progress=False)
    (tmp_path / ".step-000004.tmpabc").mkdir()  # a write killed before its rename
    broken = tmp_path / "step-000003"
    broken.mkdir()
    (broken / "config.json").write_text("{}")  # no weights, no metadata
    half = tmp_path / "step-000005"
    half.mkdir()
    (half / "qscale.json").write_text('{"tokens": 1')
    assert [c.step for c in list_checkpoints(tmp_path)] == [1, 2]


def test_local_gpt_neox_checkpoint_trains_and_evaluates(streams, tmp_path):
    cfg = GPTNeoXConfig(
        vocab_size=streams.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    GPTNeoXForCausalLM(cfg).save_pretrained(tmp_path / "neox")
    windows = eval_windows(streams.val, 4, 32)
    before = evaluate(load_model(tmp_path / "neox"), windows).loss
    ckpts = train(TrainConfig(model=tmp_path / "neox", **TINY), streams, tmp_path / "run", progress=False)
    model = load_model(ckpts[-1].path)
    assert type(model).__name__ == "GPTNeoXForCausalLM"
    assert json.loads((ckpts[-1].path / "qscale.json").read_text())["N"] == ckpts[-1].meta["N"]
    assert evaluate(model, windows).loss < before - 0.3
