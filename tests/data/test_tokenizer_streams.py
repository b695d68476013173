import numpy as np
import pytest
import torch

from qscale.data import DataConfig, load_token_streams
from qscale.data import streams as streams_mod
from qscale.data.batches import calibration_windows, eval_windows, train_batch
from qscale.data.tokenizer import EOS, load_tokenizer
from qscale.errors import QscaleError


def test_tokenizer_round_trips_text(streams):
    tok = streams.tokenizer
    assert streams.vocab_size == 512 and tok.token_to_id(EOS) is not None
    for text in ["def f(x):\n    return x ** 2  # ünïcödé ✓\n", "\t\n  ", "日本語 and bytes \x00\x7f"]:
        assert tok.decode(tok.encode(text).ids) == text


def test_streams_are_cached_memmaps(streams, data_cfg, monkeypatch):
    assert isinstance(streams.train, np.memmap) and streams.train.dtype == np.uint16
    assert streams.train.max() < streams.vocab_size and len(streams.val) > 1000

    def boom(*args, **kwargs):
        raise AssertionError("re-tokenized although the cache exists")

    monkeypatch.setattr(streams_mod, "_build", boom)
    again = load_token_streams(data_cfg, progress=False)
    assert again.tokenizer_hash == streams.tokenizer_hash
    np.testing.assert_array_equal(again.train, streams.train)


def test_external_tokenizer_file_and_folder(streams, data_cfg, tmp_path):
    streams.tokenizer.save(str(tmp_path / "tokenizer.json"))
    for path in (tmp_path / "tokenizer.json", tmp_path):
        loaded = load_token_streams(
            DataConfig(max_files=40, tokenizer=path, cache_dir=data_cfg.cache_dir), progress=False
        )
        assert loaded.tokenizer_hash == streams.tokenizer_hash
        np.testing.assert_array_equal(loaded.val, streams.val)


def test_bad_tokenizer_and_vocab(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(QscaleError, match="cannot read tokenizer"):
        load_tokenizer(tmp_path / "tokenizer.json")
    (tmp_path / "empty_folder").mkdir()
    with pytest.raises(QscaleError, match=r"no tokenizer\.json"):
        load_tokenizer(tmp_path / "empty_folder")
    with pytest.raises(QscaleError, match="does not exist"):
        load_tokenizer(tmp_path / "missing.json")
    with pytest.raises(QscaleError, match=">= 256"):
        DataConfig(vocab_size=255)


def test_batches_are_deterministic_and_split_pure(streams):
    a = train_batch(streams.train, step=3, batch_size=4, seq_len=16, seed=1)
    assert a.shape == (4, 17) and a.dtype == torch.int64
    assert (a == train_batch(streams.train, 3, 4, 16, 1)).all()
    assert not (a == train_batch(streams.train, 4, 4, 16, 1)).all()
    w = eval_windows(streams.val, 5, 16)
    assert w.shape == (5, 17)
    assert (w[0] == torch_tensor(streams.val[:17])).all() and (w[-1] == torch_tensor(streams.val[-17:])).all()
    c = calibration_windows(streams.train, 3, 16, seed=0)
    assert c.shape == (3, 16) and (c == calibration_windows(streams.train, 3, 16, seed=0)).all()
    with pytest.raises(QscaleError):
        eval_windows(streams.val[:10], 2, 16)


def torch_tensor(a):
    return torch.from_numpy(np.asarray(a, dtype=np.int64))


def test_eval_windows_never_overlap(streams):
    n = len(streams.val)
    most = n // 17
    w = eval_windows(streams.val, most, 16)
    starts = [
        int(
            np.flatnonzero(
                (np.lib.stride_tricks.sliding_window_view(np.asarray(streams.val), 17) == w[i].numpy()).all(axis=1)
            )[0]
        )
        for i in (0, 1)
    ]
    assert starts[1] - starts[0] >= 17
    with pytest.raises(QscaleError, match=f"use at most {most:,} windows"):
        eval_windows(streams.val, most + 1, 16)
    with pytest.raises(QscaleError, match="use at most"):  # refused before allocating 100M windows
        eval_windows(streams.val, 100_000_000, 16)
    assert streams.data_fingerprint and len(streams.data_fingerprint) == 16
