"""The CLI entry: help, version, exit codes (0 ok, 2 bad input, 130 interrupted), user text printed literally."""

import json
import os
import subprocess
import sys

import pytest

from qscale.cli import main
from qscale.cli.common import console


def test_usage_error_in_a_subprocess_is_one_line(tmp_path):
    """The installed entry point, end to end: real stderr, exit code 2, no traceback."""
    (tmp_path / "bad.csv").write_bytes(bytes(range(256)))
    argv = [sys.executable, "-m", "qscale.cli", "fit", "--law", "qid", "--data", str(tmp_path / "bad.csv")]
    proc = subprocess.run(
        argv, capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONWARNINGS": "ignore"}
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"qscale: error: {tmp_path / 'bad.csv'}: not a UTF-8 CSV text file (UnicodeDecodeError)"
    ]
    assert os.listdir(tmp_path) == ["bad.csv"]


def test_help_and_version_exit_zero(capsys):
    from qscale import __version__

    assert main(["--help"]) == 0
    assert "study" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"qscale {__version__}"


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["train", "--help"],
        ["eval", "--help"],
        ["fit", "--help"],
        ["predict", "--help"],
        ["study", "qid", "--help"],
        ["study", "qat", "--help"],
        ["quantize", "--help"],
        ["qat", "--help"],
        ["export", "--help"],
        ["predict", "--params", "chen2025-w4a4", "--N", "1e9", "--D", "1e9", "--G", "32", "--json"],
    ],
)
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


def test_user_text_is_printed_literally(capsys):
    """Rich markup is off: a path such as runs/[v2] or an extra name qscale[ray] is not eaten as a style tag."""
    console().print("model runs/[v2]/w4 [bold]x[/] qscale[postgres]")
    assert capsys.readouterr().out.strip() == "model runs/[v2]/w4 [bold]x[/] qscale[postgres]"
    assert main(["study", "qid", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "qscale[postgres]" in text and "qscale[ray]" in text


@pytest.mark.parametrize(
    "argv, words",
    [
        (["quantize", "--help"], ["rtn", "gptq", "learned-round", "qllm", "last 5%"]),
        (["export", "--help"], ["onnx"]),
        (["train", "--help"], ["--no-progress"]),
        (["qat", "--help"], ["--redo", "last 5%"]),
        (["study", "qat", "--help"], ["ray.init()"]),
    ],
)
def test_help_names_every_choice(argv, words, capsys):
    assert main(argv) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert all(w in text for w in words), [w for w in words if w not in text]
