"""The ``qscale`` command line: the typer app and one registration line per command.

Each command lives in its own module of :mod:`qscale.cli`; :func:`qscale.cli.common.run_command` turns bad
input into one line on stderr and exit code 2, and Ctrl-C into one line saying how to resume (exit 130).
"""

from __future__ import annotations

import sys

import typer

from qscale._version import __version__
from qscale.cli.common import run_command
from qscale.cli.eval import eval_command
from qscale.cli.export import export_command
from qscale.cli.fit import fit_command
from qscale.cli.predict import predict_command
from qscale.cli.qat import qat_command
from qscale.cli.quantize import quantize_command
from qscale.cli.study_qat import study_qat_command
from qscale.cli.study_qid import study_qid_command
from qscale.cli.train import train_command

HELP = "Quantize language models (QAT, PTQ) and fit scaling laws of quantization-induced degradation."
app = typer.Typer(
    name="qscale",
    help=HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)
study_app = typer.Typer(
    help="Run a study grid: train, quantize, evaluate, store, fit, report.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(study_app, name="study")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"qscale {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_version, help="Print the qscale version and exit."
    ),
) -> None:
    """Quantize language models (QAT, PTQ) and fit scaling laws of quantization-induced degradation."""


# --- command registrations (one line per command; keep this block sorted) ---
app.command("eval")(eval_command)
app.command("export")(export_command)
app.command("fit")(fit_command)
app.command("predict")(predict_command)
app.command("qat")(qat_command)
app.command("quantize")(quantize_command)
study_app.command("qat", short_help="QAT study: δ(N, D, G) at W4A4/W4A16/W16A4, FC2 attribution, QAT vs GPTQ.")(
    study_qat_command
)
study_app.command("qid", short_help="QiD study: train a suite, RTN/GPTQ every checkpoint, fit QiD = k·D^β/(N^α·P^γ).")(
    study_qid_command
)
app.command("train")(train_command)
# --- end of registrations ---


def main(argv: list[str] | None = None) -> int:
    """Entry point (``qscale``): run the CLI and return its exit code (0 ok, 2 bad input, 130 interrupted)."""
    return run_command(typer.main.get_command(app), argv)


if __name__ == "__main__":
    sys.exit(main())
