import json
import math

import pytest

from qscale.cli import main


@pytest.fixture()
def cache_env(data_cfg, monkeypatch):
    monkeypatch.setenv("QSCALE_CACHE", str(data_cfg.cache_dir))


def test_train_then_eval_cli(cache_env, streams, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "--size",
            "xs",
            "--tokens",
            str(4 * 8 * 32),
            "--batch-size",
            "8",
            "--seq-len",
            "32",
            "--vocab-size",
            "512",
            "--max-files",
            "40",
            "--warmup-steps",
            "1",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    assert "validation loss" in capsys.readouterr().out
    rc = main(["eval", str(out / "step-000004"), "--max-files", "40", "--windows", "4", "--json"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    meta = json.loads((out / "step-000004" / "qscale.json").read_text())
    assert result["seq_len"] == 32 and result["n_tokens"] == 4 * 32
    assert result["fingerprints"] == {k: meta["fingerprints"][k] for k in ("data", "tokenizer")}
    assert result["ppl"] == pytest.approx(math.exp(result["loss"]))
    assert abs(result["loss"] - meta["val_loss"]) < 0.5  # 4 windows vs the 32 used in training
    assert (meta["config"]["lr"], meta["config"]["embed_lr"]) == (3e-3, 1e-2)  # the quick suite's xs


def test_train_defaults_follow_the_quick_suite_width_rule(cache_env, streams, tmp_path):
    out = tmp_path / "run-s"
    assert (
        main(
            [
                "train",
                "--size",
                "s",
                "--tokens",
                str(8 * 32),
                "--batch-size",
                "8",
                "--seq-len",
                "32",
                "--vocab-size",
                "512",
                "--max-files",
                "40",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    config = json.loads((out / "step-000001" / "qscale.json").read_text())["config"]
    assert config["lr"] == pytest.approx(3e-3 * 64 / 96) and config["embed_lr"] == 1e-2


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--size", "huge"], "unknown model size"),
        (["train", "--tokens", "-3", "--max-files", "40", "--vocab-size", "512"], "tokens must be >= 1"),
        (["train", "--vocab-size", "100"], "vocab size must be >= 256"),
        (["train", "--data", "/nonexistent/corpus.txt"], "does not exist"),
        (["train", "--tokenizer", "{tmp}/bad.json", "--max-files", "40"], "cannot read tokenizer"),
        (["train", "--preset", "nope", "--max-files", "40", "--vocab-size", "512"], "unknown suite preset"),
        (["eval", "{tmp}/missing"], "does not exist"),
        (["eval", "{tmp}/corrupt", "--max-files", "40"], "cannot load checkpoint"),
        (["eval", "{tmp}", "--windows", "0"], "--windows must be >= 1"),
    ],
)
def test_bad_input_is_one_line_exit_2(cache_env, tmp_path, capsys, args, message):
    (tmp_path / "bad.json").write_text("not a tokenizer")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "config.json").write_text('{"model_type": "llama", "vocab_size": 512}')
    (tmp_path / "corrupt" / "model.safetensors").write_bytes(b"\x00\x01truncated")
    rc = main([a.replace("{tmp}", str(tmp_path)) for a in args])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_empty_data_file_exit_2(cache_env, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    assert main(["train", "--data", str(tmp_path / "empty.txt")]) == 2
    assert "no text" in capsys.readouterr().err


def test_train_and_eval_a_local_hf_folder(cache_env, streams, tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(vocab_size=512, n_positions=64, n_embd=32, n_layer=1, n_head=2)).save_pretrained(
        tmp_path / "gpt2"
    )
    streams.tokenizer.save(str(tmp_path / "tok.json"))
    common = ["--max-files", "40", "--tokenizer", str(tmp_path / "tok.json")]
    assert main(["eval", str(tmp_path / "gpt2"), "--windows", "2", "--seq-len", "16", "--json", *common]) == 0
    before = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["loss"]
    assert (
        main(
            [
                "train",
                "--model",
                str(tmp_path / "gpt2"),
                "--tokens",
                str(6 * 8 * 16),
                "--batch-size",
                "8",
                "--seq-len",
                "16",
                "--warmup-steps",
                "1",
                "--out",
                str(tmp_path / "run"),
                *common,
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                str(tmp_path / "run" / "step-000006"),
                "--windows",
                "2",
                "--seq-len",
                "16",
                "--json",
                "--max-files",
                "40",
            ]
        )
        == 0
    )
    after = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["loss"]
    assert after < before


def test_train_model_checkpoints_keep_the_tokenizer_files_and_run_without_progress(
    cache_env, streams, tmp_path, monkeypatch
):
    """AutoTokenizer on a ``train --model`` checkpoint has the source folder's BOS/EOS (its tokenizer_config.json);
    ``--no-progress`` turns the training bar off."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    import qscale.train.loop as loop

    bars = []
    real = loop._progress
    monkeypatch.setattr(loop, "_progress", lambda enabled: bars.append(enabled) or real(enabled))

    src = tmp_path / "gpt2"
    GPT2LMHeadModel(
        GPT2Config(vocab_size=512, n_positions=64, n_embd=32, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0)
    ).save_pretrained(src)
    PreTrainedTokenizerFast(
        tokenizer_object=streams.tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>", model_max_length=64
    ).save_pretrained(src)
    assert (
        main(
            [
                "train",
                "--model",
                str(src),
                "--tokens",
                str(2 * 8 * 16),
                "--batch-size",
                "8",
                "--seq-len",
                "16",
                "--warmup-steps",
                "1",
                "--max-files",
                "40",
                "--out",
                str(tmp_path / "run"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert bars == [False]  # no progress bar
    step = tmp_path / "run" / "step-000002"
    assert (step / "tokenizer_config.json").read_text() == (src / "tokenizer_config.json").read_text()
    tok = AutoTokenizer.from_pretrained(step)
    assert (tok.bos_token, tok.eos_token, tok.model_max_length) == ("<|endoftext|>", "<|endoftext|>", 64)
    # another tokenizer than the folder's: its tokenizer_config.json would describe the wrong one, so none is copied
    other = tmp_path / "other.json"
    streams.tokenizer.save(str(other))
    from tokenizers import Tokenizer, normalizers

    tok2 = Tokenizer.from_file(str(other))
    tok2.normalizer = normalizers.NFKC()  # same vocabulary, another tokenizer
    tok2.save(str(other))
    assert (
        main(
            [
                "train",
                "--model",
                str(src),
                "--tokenizer",
                str(other),
                "--tokens",
                str(8 * 16),
                "--batch-size",
                "8",
                "--seq-len",
                "16",
                "--warmup-steps",
                "1",
                "--max-files",
                "40",
                "--out",
                str(tmp_path / "run2"),
            ]
        )
        == 0
    )
    assert not (tmp_path / "run2" / "step-000001" / "tokenizer_config.json").exists()
