"""The CLI entry: every bad input exits 2 with one line on stderr, no traceback, and writes nothing.

The matrix runs ``qscale.cli.main`` in-process from an empty working folder; the inputs (a tiny trained
checkpoint and broken variants of it, binary files, tokenizers) are built once per module.
"""

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from qscale.cli import main

ROOT_MISSING = Path(f"/qscale-missing-{uuid.uuid4().hex[:8]}")  # must never be created
COMMON = ["--max-files", "40"]
QDATA = ["--calib-data", "{other.txt}", "--eval-data", "{other.txt}"]  # small: no stdlib tokenization


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def _rewrite(src: Path, dst: Path, edit) -> None:
    """Copy checkpoint ``src`` to ``dst`` with its tensors changed by ``edit(dict)``."""
    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, streams, data_cfg):
    """Every input file the matrix refers to as ``{name}``."""
    from tokenizers import Tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel

    from qscale.data.tokenizer import train_bpe
    from qscale.models import build_model
    from qscale.qat import QATRecipeConfig, convert, prepare
    from qscale.train import TrainConfig, train

    d = tmp_path_factory.mktemp("bad-inputs")
    ckpt = train(TrainConfig(size="xs", tokens=2 * 8 * 32, batch_size=8, seq_len=32, warmup_steps=1, eval_windows=4),
                 streams, d / "run", progress=False)[-1].path
    first = sorted(load_file(str(ckpt / "model.safetensors")))[0]
    _rewrite(ckpt, d / "missing-weight", lambda t: t.pop(first))
    _rewrite(ckpt, d / "extra-weight", lambda t: t.update({"model.extra.weight": torch.zeros(2)}))
    _rewrite(ckpt, d / "nan", lambda t: t[first].view(-1).__setitem__(0, float("nan")))
    _rewrite(ckpt, d / "overflow", lambda t: t["lm_head.weight"].fill_(3e38))  # finite weights, infinite logits
    shutil.copytree(ckpt, d / "no-tokenizer")
    (d / "no-tokenizer" / "tokenizer.json").unlink()
    shutil.copytree(ckpt, d / "no-config")
    (d / "no-config" / "config.json").unlink()
    (d / "corrupt").mkdir()
    (d / "corrupt" / "config.json").write_text('{"model_type": "llama", "vocab_size": 512}')
    (d / "corrupt" / "model.safetensors").write_bytes(b"\x00\x01truncated")
    qat = build_model("xs", streams.vocab_size, max_seq_len=64)
    convert(prepare(qat, QATRecipeConfig(recipe="ste", w_bits=4, a_bits=16)))
    qat.save_pretrained(d / "qat-converted")
    streams.tokenizer.save(str(d / "qat-converted" / "tokenizer.json"))
    GPT2LMHeadModel(GPT2Config(vocab_size=streams.vocab_size, n_positions=16, n_embd=16, n_layer=1,
                               n_head=2)).save_pretrained(d / "gpt2-16pos")
    GPT2LMHeadModel(GPT2Config(vocab_size=300, n_positions=128, n_embd=16, n_layer=1, n_head=2)).save_pretrained(
        d / "gpt2-300vocab")
    streams.tokenizer.save(str(d / "tok.json"))
    other: Tokenizer = train_bpe(["def f(x):\n    return x + 1\n"] * 20, 300)
    other.save(str(d / "other-tok.json"))
    (d / "bad-tok.json").write_text("not a tokenizer")
    binary = bytes(range(256)) * 64
    (d / "binary.txt").write_bytes(binary)
    (d / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1") * 50)
    (d / "empty.txt").write_text("")
    (d / "other.txt").write_text("def g(y):\n    return y * 2\n" * 2000)
    (d / "binary.csv").write_bytes(binary)
    (d / "binary.json").write_bytes(binary)
    (d / "text.json").write_text("N=1e9 D=1e10")
    (d / "list.json").write_text("[1, 2]")
    (d / "data.xyz").write_text("N,D\n1,2\n")
    grid = [(n, dd, p) for n in (1e6, 4e6) for dd in (1e8, 1e9) for p in (2, 4)]
    rows = ["N,D,P,qid"] + [f"{n},{dd},{p},{0.01 * p * dd / n}" for n, dd, p in grid]
    (d / "points.csv").write_text("\n".join(rows) + "\n")
    (d / "two.csv").write_text("N,D,P,qid\n1e6,1e8,2,0.1\n2e6,1e8,2,0.05\n")
    return d


CASES = [  # (argv with {name} = inputs/name and {out} = a folder under the working folder, words of the error)
    # usage errors, reported by click in one line
    (["train", "--tokens", "many"], "Invalid value for '--tokens'"),
    (["no-such-command"], "No such command"),
    (["study", "qid", "--bogus"], "No such option: --bogus"),
    (["fit", "--law", "qid"], "Missing option '--data'"),
    (["eval"], "Missing argument"),
    (["predict", "--params", "ouyang2024-gptq", "--N", "lots"], "Invalid value for '--N'"),
    (["eval", "{run}/step-000002", "--json", "extra-arg"], "unexpected extra argument"),
    # train
    (["train", "--size", "huge"], "unknown model size 'huge'"),
    (["train", "--seed", "-1", *COMMON], "seed must be >= 0"),
    (["train", "--preset", "tiny", "--seed", "-1", *COMMON], "seed must be >= 0"),
    (["train", "--tokens", "-3", *COMMON], "tokens must be >= 1"),
    (["train", "--vocab-size", "100"], "vocab size must be >= 256"),
    (["train", "--batch-size", "6", "--grad-accum", "4", *COMMON], "not divisible"),
    (["train", "--lr", "0", *COMMON], "learning rate must be > 0"),
    (["train", "--schedule", "linear", *COMMON], "unknown schedule"),
    (["train", "--device", "tpu", *COMMON], "unknown device"),
    (["train", "--data", "/nonexistent/corpus.txt"], "does not exist"),
    (["train", "--data", "{binary.txt}"], "is binary"),
    (["train", "--data", "{latin1.txt}"], "not UTF-8 text"),
    (["train", "--data", "{empty.txt}"], "no text"),
    (["train", "--tokenizer", "{bad-tok.json}", *COMMON], "cannot read tokenizer"),
    (["train", "--preset", "nope", *COMMON], "unknown suite preset"),
    (["train", "--model", "{no-tokenizer}", "--out", "{out}", *COMMON], "pass --tokenizer PATH"),
    (["train", "--model", "{run}/step-000002", "--tokenizer", "{other-tok.json}", "--out", "{out}", *COMMON],
     "trained with another tokenizer"),
    (["train", "--model", "{missing-weight}", "--out", "{out}", *COMMON], "lacks 1 weight(s)"),
    (["train", "--model", "{gpt2-16pos}", "--tokenizer", "{tok.json}", "--seq-len", "32", "--out", "{out}",
      *COMMON], "supports 16 positions"),
    (["train", "--size", "xs", "--tokens", "512", "--batch-size", "8", "--seq-len", "32", "--warmup-steps", "1",
      "--data", "{other.txt}", "--tokenizer", "{tok.json}", "--out", "{run}"], "different data"),
    (["train", "--size", "xs", "--tokens", "512", "--batch-size", "8", "--seq-len", "32", "--warmup-steps", "1",
      "--lr", "0.001", "--tokenizer", "{tok.json}", "--out", "{run}", *COMMON], "different config"),
    # eval
    (["eval", "{missing}"], "does not exist"),
    (["eval", "{no-config}"], "no config.json"),
    (["eval", "{corrupt}", *COMMON], "cannot load checkpoint"),
    (["eval", "{run}/step-000002", "--windows", "0"], "--windows must be >= 1"),
    (["eval", "{run}/step-000002", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["eval", "{run}/step-000002", "--seq-len", "0"], "--seq-len must be >= 1"),
    (["eval", "{run}/step-000002", "--windows", "100000000", *COMMON], "use at most"),
    (["eval", "{run}/step-000002", "--windows", "500", *COMMON], "more would overlap"),
    (["eval", "{gpt2-16pos}", "--tokenizer", "{tok.json}", "--seq-len", "32", *COMMON], "16 positions"),
    (["eval", "{missing-weight}", *COMMON], "lacks 1 weight(s)"),
    (["eval", "{extra-weight}", *COMMON], "does not use: model.extra.weight"),
    (["eval", "{nan}", *COMMON], "NaN or Inf"),
    (["eval", "{overflow}", "--windows", "2", *COMMON], "not finite"),
    (["eval", "{qat-converted}", *COMMON], "integer codes"),
    (["eval", "{no-tokenizer}", *COMMON], "has no tokenizer"),
    (["eval", "{run}/step-000002", "--tokenizer", "{other-tok.json}", *COMMON], "another tokenizer"),
    (["eval", "{gpt2-300vocab}", "--tokenizer", "{tok.json}", *COMMON], "only 300 embeddings"),
    (["eval", "{run}/step-000002", "--data", "{binary.txt}"], "is binary"),
    # fit
    (["fit", "--law", "nope", "--data", "{points.csv}"], "unknown law"),
    (["fit", "--law", "qid", "--data", "{missing}.csv"], "data file not found"),
    (["fit", "--law", "qid", "--data", "{binary.csv}"], "not a UTF-8 CSV"),
    (["fit", "--law", "qid", "--data", "{data.xyz}"], "unknown data format"),
    (["fit", "--law", "qid", "--data", "{points.csv}", "--plot", str(ROOT_MISSING / "dir" / "x.png")],
     "does not exist"),
    (["fit", "--law", "qid", "--data", "{points.csv}", "--plot", "{out}/x.txt"], "use a .png"),
    (["fit", "--law", "qid", "--data", "{points.csv}", "--n-boot", "5"], "--n-boot must be 0 or >= 200"),
    (["fit", "--law", "qid", "--data", "{points.csv}", "--holdout", "P"], "--holdout must be N or D"),
    (["fit", "--law", "qid", "--data", "{points.csv}", "--col", "N"], "--col expects"),
    (["fit", "--law", "qid", "--data", "{points.csv}", "--where", "P = 2"], "SQLite files only"),
    (["fit", "--law", "qid", "--data", "{two.csv}"], "need more points than parameters"),
    (["fit", "--law", "qid", "--data", "{points.csv}", "--target", "loss"], "target column 'loss' not found"),
    # predict
    (["predict", "--params", "nope"], "neither a published set"),
    (["predict", "--params", "{binary.json}", "--N", "1e9"], "not a JSON file"),
    (["predict", "--params", "{text.json}", "--N", "1e9"], "not a JSON file"),
    (["predict", "--params", "{list.json}", "--N", "1e9"], "expected a JSON object"),
    (["predict", "--params", "ouyang2024-gptq", "--N", "1e9", "--D", "1e10", "--bits", "-1"], "--bits -1"),
    (["predict", "--params", "ouyang2024-gptq", "--N", "0", "--D", "1e10", "--bits", "4"], "--N 0"),
    (["predict", "--params", "ouyang2024-gptq", "--N", "1e9", "--D", "nan", "--bits", "4"], "--D nan"),
    (["predict", "--params", "chen2025-w4a4", "--N", "1e9", "--D", "1e10", "--G", "0"], "input width"),
    (["predict", "--params", "chen2025-w4a4", "--N", "1e9", "--D", "1e10", "--G", "1"], "--G 1"),
    (["predict", "--params", "ouyang2024-gptq", "--N", "1e9"], "needs --D, --bits"),
    (["predict", "--params", "ouyang2024-gptq", "--N", "1e9", "--bits", "4", "--qid", "-0.1"], "the threshold"),
    (["predict", "--params", "ouyang2024-gptq", "--N", "1e9", "--qid", "0.1", "--delta", "0.1"], "at most one"),
    (["predict", "--params", "ouyang2024-gptq", "--N", "1e9", "--qid", "0.1"], "leave exactly one of --N"),
    (["predict", "--params", "ouyang2024-gptq", "--law", "qat"], "does not match"),
    (["predict", "--params", "chen2025-w4a4", "--N", "1e9", "--bits", "4"], "not --bits"),
    # quantize / qat / export (checkpoint checks shared with eval)
    (["quantize", "{nan}", "--out", "{out}", *QDATA], "NaN or Inf"),
    (["quantize", "{missing-weight}", "--out", "{out}", *QDATA], "lacks 1 weight(s)"),
    (["quantize", "{no-tokenizer}", "--out", "{out}", "-g", "32"], "no tokenizer"),
    (["quantize", "{run}/step-000002", "--bits", "9", "--out", "{out}"], "bits"),
    (["quantize", "{run}/step-000002", "--method", "awq", "--out", "{out}"], "awq"),
    (["quantize", "{run}/step-000002", "--eval-windows", "100000000", "-g", "32", "--out", "{out}", *QDATA],
     "windows"),
    (["qat", "{run}/step-000002", "--recipe", "nope", "--out", "{out}"], "nope"),
    (["qat", "{run}/step-000002", "--seed", "-1", "--out", "{out}"], "--seed must be >= 0"),
    (["qat", "{extra-weight}", "--out", "{out}", "--data", "{other.txt}"], "does not use"),
    (["export", "{nan}", "--out", "{out}"], "not a quantized folder"),
    (["export", "{run}/step-000002", "--format", "onnx", "--out", "{out}"], "not a quantized folder"),
    (["export", "{run}/step-000002", "--format", "tflite", "--out", "{out}"], "tflite"),
    # studies
    (["study", "qid", "--preset", "tiny", "--seed", "-1", "--out", "{out}"], "seed must be >= 0"),
    (["study", "qid", "--preset", "nope", "--out", "{out}"], "unknown"),
    (["study", "qid", "--preset", "tiny", "--bits", "2,x", "--out", "{out}"], "--bits must be comma-separated"),
    (["study", "qid", "--preset", "tiny", "--bits", "9", "--out", "{out}"], "bit widths must be integers in 1..8"),
    (["study", "qid", "--preset", "tiny", "--group-size", "-1", "--out", "{out}"], "group size must be >= 0"),
    (["study", "qid", "--preset", "tiny", "--eval-windows", "100000000", "--out", "{out}"], "use at most"),
    (["study", "qat", "--preset", "tiny", "--seed", "-1", "--out", "{out}"], "seed must be >= 0"),
    (["study", "qat", "--preset", "tiny", "--groups", "x", "--out", "{out}"], "--groups must be comma-separated"),
    (["study", "qat", "--preset", "tiny", "--groups", "1", "--out", "{out}"], "log2 G = 0"),
]


def _argv(args: list[str], inputs: Path, out: Path) -> list[str]:
    names = {p.name: p for p in inputs.iterdir()} | {"missing": inputs / "missing", "out": out}
    argv = []
    for a in args:
        for name, path in names.items():
            a = a.replace("{" + name + "}", str(path))
        argv.append(a)
    return argv


def test_matrix_has_forty_cases():
    assert len(CASES) >= 40


@pytest.mark.parametrize("args, words", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(args, words, inputs, data_cfg, tmp_path, monkeypatch,
                                                            capfd):
    monkeypatch.setenv("QSCALE_CACHE", str(data_cfg.cache_dir))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = _tree(inputs)
    rc = main(_argv(args, inputs, work / "out"))
    captured = capfd.readouterr()  # file-descriptor level: library output counts too
    err = captured.err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("qscale: error: "), err
    assert "Traceback" not in err and words in err, err
    assert all(p == "out" or p.startswith("out/") for p in _tree(work)), _tree(work)  # only under --out
    assert _tree(inputs) == before  # nothing written next to the inputs (nor into the resumed run)
    assert not ROOT_MISSING.exists()


def test_usage_error_in_a_subprocess_is_one_line(tmp_path):
    """The installed entry point, end to end: real stderr, exit code 2, no traceback."""
    (tmp_path / "bad.csv").write_bytes(bytes(range(256)))
    argv = [sys.executable, "-m", "qscale.cli", "fit", "--law", "qid", "--data", str(tmp_path / "bad.csv")]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"qscale: error: {tmp_path / 'bad.csv'}: not a UTF-8 CSV text file "
                                                "(UnicodeDecodeError)"]
    assert os.listdir(tmp_path) == ["bad.csv"]


def test_help_and_version_exit_zero(capsys):
    from qscale import __version__

    assert main(["--help"]) == 0
    assert "study" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"qscale {__version__}"


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["eval", "--help"], ["fit", "--help"],
                                  ["predict", "--help"], ["study", "qid", "--help"], ["study", "qat", "--help"],
                                  ["quantize", "--help"], ["qat", "--help"], ["export", "--help"],
                                  ["predict", "--params", "chen2025-w4a4", "--N", "1e9", "--D", "1e9", "--G", "32",
                                   "--json"]])
def test_no_spec_references_in_user_facing_output(argv, capsys):
    assert main(argv) == 0
    assert "SPEC" not in capsys.readouterr().out


def test_ctrl_c_says_how_to_resume(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("qscale.cli.predict.get_law", interrupted)
    assert main(["predict", "--params", "ouyang2024-gptq", "--N", "1e9", "--D", "1e10", "--bits", "4"]) == 130
    assert capsys.readouterr().err.strip() == "qscale: interrupted — re-run the same command to resume"


def test_no_arguments_print_the_help(capsys):
    assert main([]) == 2
    captured = capsys.readouterr()
    assert "Usage:" in captured.out + captured.err


def test_a_good_command_still_exits_zero(capsys):
    assert main(["predict", "--params", "ouyang2024-gptq", "--N", "70e9", "--bits", "4", "--qid", "0.2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["solve_for"] == "D"
