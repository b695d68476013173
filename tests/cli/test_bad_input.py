"""The CLI entry: every bad input exits 2 with one line on stderr, no traceback, and writes nothing.

The matrix runs ``qscale.cli.main`` in-process from an empty working folder; the inputs (a tiny trained
checkpoint and broken and quantized variants of it, binary files, tokenizers; ``tests/cli/conftest.py``) are built
once per module. ``{ro}`` is a folder nothing can be written in. Error rows are numbered as a user counts them:
``data row 1`` is the first row under a CSV header.
"""

import re
import uuid
from pathlib import Path

import pytest

from qscale.cli import main

ROOT_MISSING = Path(f"/qscale-missing-{uuid.uuid4().hex[:8]}")  # must never be created
COMMON = ["--max-files", "40"]
QDATA = ["--calib-data", "{other.txt}", "--eval-data", "{other.txt}"]  # small: no stdlib tokenization


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
    (["train", "--preset", "tiny", "--tokens", "999", "--lr", "1e-3", *COMMON], "--tokens, --lr: a --preset suite"),
    (["train", "--model", "{no-tokenizer}", "--out", "{out}", *COMMON], "pass --tokenizer PATH"),
    (
        ["train", "--model", "{run}/step-000002", "--tokenizer", "{other-tok.json}", "--out", "{out}", *COMMON],
        "trained with another tokenizer",
    ),
    (["train", "--model", "{missing-weight}", "--out", "{out}", *COMMON], "lacks 1 weight(s)"),
    (
        ["train", "--model", "{gpt2-16pos}", "--tokenizer", "{tok.json}", "--seq-len", "32", "--out", "{out}", *COMMON],
        "supports 16 positions",
    ),
    (
        [
            "train",
            "--size",
            "xs",
            "--tokens",
            "512",
            "--batch-size",
            "8",
            "--seq-len",
            "32",
            "--warmup-steps",
            "1",
            "--data",
            "{other.txt}",
            "--tokenizer",
            "{tok.json}",
            "--out",
            "{run}",
        ],
        "different data",
    ),
    (
        [
            "train",
            "--size",
            "xs",
            "--tokens",
            "512",
            "--batch-size",
            "8",
            "--seq-len",
            "32",
            "--warmup-steps",
            "1",
            "--lr",
            "0.001",
            "--tokenizer",
            "{tok.json}",
            "--out",
            "{run}",
            *COMMON,
        ],
        "different config",
    ),
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
    (
        ["fit", "--law", "qid", "--data", "{points.csv}", "--plot", str(ROOT_MISSING / "dir" / "x.png")],
        "does not exist",
    ),
    (["fit", "--law", "qid", "--data", "{points.csv}", "--plot", "{out}/x.txt"], "use a .png"),
    (["fit", "--law", "qid", "--data", "{points.csv}", "--n-boot", "5"], "--n-boot must be 0 or >= 200"),
    (["fit", "--law", "qid", "--data", "{points.csv}", "--validate", "P"], "--validate must be N, D or N,D"),
    (["fit", "--law", "qid", "--data", "{points.csv}", "--validate-plot", "v.png"], "--validate-plot needs --validate"),
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
    (["quantize", "{run}/step-000002", "--eval-windows", "100000000", "-g", "32", "--out", "{out}", *QDATA], "windows"),
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
G32 = ["-g", "32"]
ISSUE20 = [  # refused before any work: nothing at all is written, not even under --out
    # tracebacks before
    (["predict", "--params", "{bad-params.json}", "--N", "1e9", "--D", "1e10", "--bits", "4"], "'k' is \"abc\", not a"),
    (["train", "--out", "{other.txt}", *COMMON], "is a file, not a folder"),
    (["study", "qid", "--preset", "tiny", "--out", "{other.txt}"], "is a file, not a folder"),
    (["quantize", "{run}/step-000002", "--out", "{ro}/q", *G32, *QDATA], "cannot write in"),
    (["study", "qid", "--preset", "tiny", "--out", "{ro}/st"], "cannot write in"),
    (["study", "qat", "--preset", "tiny", "--out", "{ro}/st"], "cannot write in"),
    (["study", "qid", "--preset", "tiny", "--out", "{out}", "--db", "{ro}/s.sqlite"], "--db"),
    (["fit", "--law", "qid", "--data", "{points.csv}", "--plot", "{ro}/fit.png"], "cannot write in"),
    (["train", "--out", "{ro}/run", *COMMON], "cannot write in"),
    (["QSCALE_CACHE={ro}/cache", "eval", "{run}/step-000002", "--data", "{other.txt}"], "set QSCALE_CACHE"),
    (["quantize", "{compressed-tensors}", "--out", "{out}", *QDATA], "is already quantized"),
    (["quantize", "{gptq}", "--out", "{out}", *QDATA], "is already quantized"),
    (["train", "--model", "{compressed-tensors}", "--out", "{out}", *COMMON], "is already quantized"),
    (["train", "--model", "{gptq}", "--out", "{out}", *COMMON], "is already quantized"),
    # accepted and ignored, or misleading, before
    (
        ["quantize", "{run}/step-000002", "--method", "rtn", "--act-order", "--out", "{out}", *G32, *QDATA],
        "--act-order applies to --method gptq only",
    ),
    (
        ["quantize", "{run}/step-000002", "--method", "rtn", "--calib-windows", "8", "--out", "{out}", *G32],
        "--calib-windows: --method rtn uses no calibration data",
    ),
    (
        ["quantize", "{run}/step-000002", "--method", "rtn", "--out", "{out}", *G32, *QDATA],
        "--calib-data: --method rtn uses no calibration data",
    ),
    (["quantize", "{run}/step-000002", "--out", "{out}", *QDATA], "--group-size 128 does not divide the 64"),
    (["quantize", "{run}/step-000002", "--format", "all", "-g", "48", "--out", "{out}", *QDATA], "does not divide"),
    (["qat", "{run}/step-000002", "--format", "compressed-tensors", "--out", "{out}"], "does not divide the 64"),
    (
        [
            "qat",
            "{run}/step-000002",
            "--recipe",
            "ste",
            "--a-bits",
            "8",
            "--format",
            "compressed-tensors",
            *G32,
            "--out",
            "{out}",
        ],
        "--format qscale only",
    ),
    (["qat", "{run}/step-000002", "--format", "onnx", "--out", "{out}"], "--format must be one of"),
    (["qat", "{run}/step-000002", "--recipe", "lsq", "--rank", "4", "--out", "{out}"], "--rank applies to"),
    (["qat", "{run}/step-000002", "--recipe", "lsq", "--joint-bits", "8,4", "--out", "{out}"], "--joint-bits"),
    (["qat", "{run}/step-000002", "--recipe", "ste", "--samples", "8", "--out", "{out}"], "--samples applies"),
    (["eval", "{lying}", *COMMON], "config.json does not describe these weights"),
    (["quantize", "{run}/step-000002", "--out", "{run}/step-000002/q", *G32, *QDATA], "inside the model folder"),
    (["qat", "{run}/step-000002", "--out", "{run}/step-000002/q"], "inside the model folder"),
    (["export", "{compressed-tensors}", "--out", "{compressed-tensors}/x"], "inside the source folder"),
    (["quantize", "{run}/step-000002", "--out", "{other.txt}", *G32, *QDATA], "is a file, not a folder"),
    (["fit", "--law", "qid", "--data", "{bad-row.csv}"], "column 'qid' data row 3: 'abc' is not a number"),
    (
        ["quantize", "{run}/step-000002", "--method", "learned-round", "--avg-bits", "9", "--out", "{out}", *QDATA],
        "--avg-bits must be in 2..8",
    ),
    (["quantize", "{run}/step-000002", "--avg-bits", "3", "--out", "{out}", *QDATA], "--avg-bits (mixed precision)"),
    (["export", "{compressed-tensors}", "--format", "foo", "--out", "{out}"], "qscale, all, onnx"),
    (
        ["quantize", "{run}/step-000002", "--gptq-order", "layer", "--out", "{out}", *G32, *QDATA],
        "--gptq-order must be one of sequential, block, got 'layer'",
    ),
    (
        ["quantize", "{run}/step-000002", "--method", "rtn", "--gptq-order", "block", "--out", "{out}", *G32, *QDATA],
        "--gptq-order applies to --method gptq only",
    ),
    (["study", "qid", "--preset", "tiny", "--gptq-order", "layer", "--out", "{out}"], "GPTQ order (--gptq-order)"),
]
CASES += ISSUE20


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def _argv(args: list[str], inputs: Path, out: Path, read_only: Path | None) -> tuple[dict, list[str]]:
    """(environment, argv): leading ``NAME=value`` items are environment variables, ``{name}`` a path."""
    names = {p.name: p for p in inputs.iterdir()} | {"missing": inputs / "missing", "out": out, "ro": read_only}
    env, argv = {}, []
    for a in args:
        for name, path in names.items():
            a = a.replace("{" + name + "}", str(path))
        if not argv and re.match(r"^[A-Z_]+=", a):
            env.update([a.split("=", 1)])
        else:
            argv.append(a)
    return env, argv


def test_matrix_has_forty_cases():
    assert len(CASES) >= 40 and len(ISSUE20) >= 30


@pytest.mark.parametrize("args, words", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    args, words, inputs, read_only, data_cfg, tmp_path, monkeypatch, capfd
):
    if any("{ro}" in a for a in args) and read_only is None:
        pytest.skip("no read-only folder on this machine")
    monkeypatch.setenv("QSCALE_CACHE", str(data_cfg.cache_dir))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = _tree(inputs)
    env, argv = _argv(args, inputs, work / "out", read_only)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    rc = main(argv)
    captured = capfd.readouterr()  # file-descriptor level: library output counts too
    err = captured.err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("qscale: error: "), err
    assert "Traceback" not in err and words in err, err
    assert all(p == "out" or p.startswith("out/") for p in _tree(work)), _tree(work)  # only under --out
    assert (args, words) not in ISSUE20 or not _tree(work), _tree(work)  # checked before any work: nothing at all
    assert _tree(inputs) == before  # nothing written next to the inputs (nor into the resumed run)
    assert not ROOT_MISSING.exists()
