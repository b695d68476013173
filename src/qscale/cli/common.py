"""What every command shares: the error contract (one ``qscale: error: ...`` line, exit 2; Ctrl-C exit 130),
consoles that print user text literally, and the ``--progress`` flag."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

try:  # typer >= 0.20 vendors click; older versions use click itself
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover
    from click import exceptions as click_exceptions

from qscale.errors import QscaleError

BAD_INPUT = 2
INTERRUPTED = 130
INTERRUPTED_MESSAGE = "qscale: interrupted — re-run the same command to resume"
PROGRESS_OPTION = typer.Option(True, "--progress/--no-progress", help="Progress bars on stderr.")


def console(stderr: bool = False) -> Console:
    """A rich console that prints text as given: no markup, so ``[v2]`` in a path stays ``[v2]``."""
    return Console(stderr=stderr, markup=False, highlight=False, emoji=False)


def one_line(text: str) -> str:
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


def error_line(message: str) -> str:
    return f"qscale: error: {one_line(message)}"


def _usage_error(e: click_exceptions.UsageError) -> str:
    """``qscale: error: <command>: <message> (see '<command> --help')`` in one line."""
    path = e.ctx.command_path if e.ctx is not None else "qscale"
    where = path.removeprefix("qscale").strip()
    return error_line(f"{where + ': ' if where else ''}{one_line(e.format_message())} (see '{path} --help')")


def run_command(command, argv: list[str] | None) -> int:
    """Run ``command`` and map what it raises to the exit code: bad input (click usage errors,
    :class:`~qscale.errors.QscaleError`) prints one line on stderr and exits 2; Ctrl-C prints how to resume
    and exits 130; no arguments print the help (exit 2)."""
    try:
        code = command.main(args=argv, prog_name="qscale", standalone_mode=False)
    except click_exceptions.NoArgsIsHelpError as e:
        e.show()
        return BAD_INPUT
    except click_exceptions.UsageError as e:
        print(_usage_error(e), file=sys.stderr)
        return BAD_INPUT
    except click_exceptions.ClickException as e:
        print(error_line(e.format_message()), file=sys.stderr)
        return BAD_INPUT
    except QscaleError as e:
        print(error_line(str(e)), file=sys.stderr)
        return BAD_INPUT
    except (KeyboardInterrupt, typer.Abort):
        code = INTERRUPTED
    except SystemExit as e:  # click exits by itself on a closed stdout (EPIPE)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    if code == INTERRUPTED:  # typer turns Ctrl-C inside a command into exit code 130
        print(INTERRUPTED_MESSAGE, file=sys.stderr)
    return code if isinstance(code, int) else 0


def given(ctx: typer.Context, name: str) -> bool:
    """Whether the user typed option ``name`` (typer vendors click: compare the source by name)."""
    return getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"
