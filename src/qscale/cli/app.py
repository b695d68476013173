"""The ``qscale`` command line.

Each concern owns its commands in ``qscale/<package>/cli.py``; this module only registers them and
turns bad input (a :class:`~qscale.errors.QscaleError` or a usage error) into one line on stderr and
exit code 2, and Ctrl-C into one line saying how to resume.
"""

from __future__ import annotations

import sys

import typer

try:  # typer >= 0.20 vendors click; older versions use click itself
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover
    from click import exceptions as click_exceptions

from qscale._version import __version__
from qscale.errors import QscaleError

app = typer.Typer(
    name="qscale",
    help="Quantize language models (QAT, PTQ) and fit scaling laws of quantization-induced degradation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
study_app = typer.Typer(help="Run a study grid: train, quantize, evaluate, store, fit, report.", no_args_is_help=True)
app.add_typer(study_app, name="study")
INTERRUPTED = 130


def _version(value: bool) -> None:
    if value:
        typer.echo(f"qscale {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", is_eager=True, callback=_version,
                                       help="Print the qscale version and exit.")) -> None:
    """Quantize language models (QAT, PTQ) and fit scaling laws of quantization-induced degradation."""

# --- command registrations (one line per command; keep this block sorted) ---
from qscale.commands.export import export_command  # noqa: E402
from qscale.commands.qat import qat_command as qat_finetune_command  # noqa: E402
from qscale.commands.quantize import quantize_command  # noqa: E402
from qscale.evaluate.cli import eval_command  # noqa: E402
from qscale.laws.cli import fit_command, predict_command  # noqa: E402
from qscale.study.cli import qid_command  # noqa: E402
from qscale.study.qat_cli import qat_command  # noqa: E402
from qscale.train.cli import train_command  # noqa: E402

app.command("eval")(eval_command)
app.command("export")(export_command)
app.command("fit")(fit_command)
app.command("predict")(predict_command)
app.command("qat")(qat_finetune_command)
app.command("quantize")(quantize_command)
study_app.command("qat", short_help="QAT study: δ(N, D, G) at W4A4/W4A16/W16A4, FC2 attribution, QAT vs GPTQ.")(qat_command)
study_app.command("qid", short_help="QiD study: train a suite, RTN/GPTQ every checkpoint, fit QiD = k·D^β/(N^α·P^γ).")(qid_command)
app.command("train")(train_command)
# --- end of registrations ---


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _usage_error(e: click_exceptions.UsageError) -> str:
    """``qscale: error: <command>: <message> (see '<command> --help')`` in one line."""
    path = e.ctx.command_path if e.ctx is not None else "qscale"
    where = path.removeprefix("qscale").strip()
    return f"qscale: error: {where + ': ' if where else ''}{_one_line(e.format_message())} (see '{path} --help')"


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI and return its exit code.

    Bad input, from click (usage) or library code (:class:`~qscale.errors.QscaleError`), prints one line
    on stderr and exits 2; Ctrl-C prints how to resume and exits 130; no arguments print the help.
    """
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="qscale", standalone_mode=False)
    except click_exceptions.NoArgsIsHelpError as e:
        e.show()
        return 2
    except click_exceptions.UsageError as e:
        print(_usage_error(e), file=sys.stderr)
        return 2
    except click_exceptions.ClickException as e:
        print(f"qscale: error: {_one_line(e.format_message())}", file=sys.stderr)
        return 2
    except QscaleError as e:
        print(f"qscale: error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, typer.Abort):
        code = INTERRUPTED
    except SystemExit as e:  # click exits by itself on a closed stdout (EPIPE)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    if code == INTERRUPTED:  # typer turns Ctrl-C inside a command into exit code 130
        print("qscale: interrupted — re-run the same command to resume", file=sys.stderr)
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
