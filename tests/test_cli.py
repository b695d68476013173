"""The CLI entry: usage errors and bad input exit 2 with a message, never a traceback."""

import pytest

from qscale.cli import main


def test_help_exits_zero(capsys):
    assert main(["--help"]) == 0
    assert "study" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["train", "--tokens", "many"], ["no-such-command"], ["study", "qid", "--bogus"]])
def test_usage_errors_exit_two_without_traceback(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "Usage:" in err


def test_bad_input_is_one_line_with_exit_two(capsys):
    assert main(["train", "--size", "huge"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "qscale: error: unknown model size 'huge' (choose from xs, s, m, l, xl)"
