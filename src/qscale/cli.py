"""The ``qscale`` command line.

Each concern owns its commands in ``qscale/<package>/cli.py``; this module only registers them and
turns :class:`~qscale.errors.QscaleError` into one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys

import typer

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


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI and return its exit code.

    Usage errors are reported by click (usage line + message, exit 2); a
    :class:`~qscale.errors.QscaleError` from library code becomes one line on stderr and exit 2.
    """
    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name="qscale", standalone_mode=True)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except QscaleError as e:
        print(f"qscale: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("qscale: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
