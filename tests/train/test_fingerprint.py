"""Every run knows its data: fingerprints recorded and checked on resume, D carried across
``train --model CKPT``, deleted checkpoints re-created."""

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from qscale.cli import main
from qscale.data import load_token_streams
from qscale.errors import QscaleError
from qscale.train import TrainConfig, list_checkpoints, train

TINY = dict(size="xs", tokens=4 * 8 * 32, batch_size=8, seq_len=32, lr=3e-3, warmup_steps=2, eval_windows=4)


def test_run_and_every_checkpoint_record_fingerprints(streams, tmp_path):
    ckpts = train(TrainConfig(**TINY), streams, tmp_path, progress=False)
    run = json.loads((tmp_path / "run.json").read_text())["fingerprints"]
    assert run == {"data": streams.data_fingerprint, "tokenizer": streams.tokenizer_hash, "config": run["config"]}
    assert len(run["data"]) == 16 and len(run["config"]) == 12
    for c in ckpts:
        assert c.meta["fingerprints"] == run and c.meta["start_tokens"] == 0 and c.meta["eval_windows"] == 4


def test_resume_refuses_other_data_tokenizer_or_config(streams, data_cfg, tmp_path):
    cfg = TrainConfig(**TINY)
    train(cfg, streams, tmp_path, progress=False, stop_after_steps=2)  # a killed run
    (tmp_path / "other.txt").write_text("def g(y):\n    return y * 2\n" * 3000)
    streams.tokenizer.save(str(tmp_path / "tok.json"))
    other_data = load_token_streams(
        replace(data_cfg, data=tmp_path / "other.txt", max_files=None, tokenizer=tmp_path / "tok.json"), progress=False
    )
    assert other_data.tokenizer_hash == streams.tokenizer_hash
    with pytest.raises(QscaleError, match=r"different data .*re-run with the same --data"):
        train(cfg, other_data, tmp_path, progress=False)
    other_tok = load_token_streams(replace(data_cfg, vocab_size=300), progress=False)
    with pytest.raises(QscaleError, match="different tokenizer"):
        train(cfg, other_tok, tmp_path, progress=False)
    with pytest.raises(QscaleError, match="different config"):
        train(replace(cfg, lr=1e-3), streams, tmp_path, progress=False)
    assert [c.step for c in train(cfg, streams, tmp_path, progress=False)] == [1, 2, 4]  # same inputs: resumes


def test_continuing_a_checkpoint_carries_tokens_and_skips_warmup(streams, data_cfg, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("QSCALE_CACHE", str(data_cfg.cache_dir))
    parent = train(TrainConfig(**TINY), streams, tmp_path / "first", progress=False)[-1]
    assert parent.tokens == 4 * 8 * 32
    # the CLI takes the checkpoint's own tokenizer (no --tokenizer, a 4096-token BPE would be the default)
    rc = main(
        [
            "train",
            "--model",
            str(parent.path),
            "--tokens",
            str(2 * 8 * 32),
            "--batch-size",
            "8",
            "--seq-len",
            "32",
            "--warmup-steps",
            "2",
            "--max-files",
            "40",
            "--out",
            str(tmp_path / "more"),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    assert "validation loss (nats/token) on 32" in capsys.readouterr().out  # the windows are stated
    ckpts = list_checkpoints(tmp_path / "more")
    assert [c.tokens for c in ckpts] == [parent.tokens + 8 * 32, parent.tokens + 2 * 8 * 32]
    assert ckpts[0].meta["start_tokens"] == parent.tokens
    assert ckpts[0].meta["tokenizer_hash"] == parent.meta["tokenizer_hash"]
    assert ckpts[0].meta["lr"] == pytest.approx(3e-3)  # the peak: no second warmup (step 1 of 2 would be half)
    fresh = list_checkpoints(tmp_path / "first")[0]
    assert fresh.meta["lr"] == pytest.approx(3e-3 / 2)


def test_deleted_checkpoint_is_recreated_identically(streams, tmp_path, capfd):
    import shutil

    cfg = TrainConfig(**TINY)
    first = train(cfg, streams, tmp_path, progress=False)
    before = {c.step: load_file(str(c.path / "model.safetensors")) for c in first}
    shutil.rmtree(tmp_path / "step-000002")
    ckpts = train(cfg, streams, tmp_path, progress=False)
    assert "1 checkpoint(s)" in capfd.readouterr().err
    assert [c.step for c in ckpts] == [1, 2, 4]
    again = load_file(str(ckpts[1].path / "model.safetensors"))
    assert all(torch.equal(before[2][k], again[k]) for k in again)
