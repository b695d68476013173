"""MkDocs hook: generate the command-line reference from the typer app at build time.

``docs/reference/cli.md`` holds the marker ``<!-- cli-reference -->``; this hook replaces it with one section
per command (usage, description, a table of its arguments and options), walking the click command tree of
``qscale.cli.app`` (``typer.main.get_command``). The page therefore says what the installed CLI does and
cannot drift from it. Works whether ``qscale.cli`` is a module or a package, as long as it exposes ``app``.
"""

from __future__ import annotations

import html
import importlib
import re
import sys
from pathlib import Path
from typing import Any

MARKER = "<!-- cli-reference -->"
PAGE = "reference/cli.md"


def _load_app() -> Any:
    src = Path(__file__).resolve().parents[2] / "src"
    if src.is_dir() and str(src) not in sys.path:
        sys.path.insert(0, str(src))  # a checkout without `pip install -e .` still documents its own code
    return importlib.import_module("qscale.cli").app


def _text(s: str | None) -> str:
    """Help text as Markdown: RST double backticks to code spans, HTML-sensitive characters escaped."""
    s = (s or "").replace("\b", "").strip()
    parts = re.split(r"(``.+?``|`[^`]+`)", s, flags=re.S)
    out = []
    for part in parts:
        if part.startswith("``") and part.endswith("``") and len(part) > 4:
            out.append("`" + part[2:-2] + "`")
        elif part.startswith("`") and part.endswith("`") and len(part) > 2:
            out.append(part)
        else:
            out.append(html.escape(part, quote=False).replace("*", r"\*").replace("_", r"\_"))
    return "".join(out)


def _cell(s: str) -> str:
    return " ".join(s.split()).replace("|", r"\|")


def _type_name(p: Any) -> str:
    t = getattr(p, "type", None)
    if t is not None:
        choices = getattr(t, "choices", None)
        if choices:
            return " \\| ".join(str(c) for c in choices)
        return str(getattr(t, "name", "")).upper()
    desc = getattr(p, "type_descriptor", None)
    ann = getattr(desc, "annotation", None)
    if ann is None:
        return ""
    args = getattr(ann, "__args__", None)
    if getattr(ann, "__origin__", None) in (list, tuple) and args:  # list[str] of a repeatable option
        ann = args[0]
    name = getattr(ann, "__name__", None) or str(ann).replace("typing.", "")
    return {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "bool": "BOOLEAN", "Path": "PATH"}.get(
        name, name.upper()
    )


def _default(p: Any) -> str:
    if getattr(p, "required", False):
        return "required"
    d = getattr(p, "default", None)
    if d is None or callable(d) or getattr(p, "show_default", True) is False:
        return ""
    if getattr(p, "is_flag", False):
        if getattr(p, "secondary_opts", None):
            return f"`{p.opts[0] if d else p.secondary_opts[0]}`"
        return "" if d is False else f"`{d}`"
    if isinstance(d, (list, tuple)):
        return ", ".join(f"`{x}`" for x in d) if d else ""
    return f"`{d}`"


def _param_row(p: Any) -> str | None:
    if getattr(p, "hidden", False):
        return None
    kind = type(p).__name__.lower()
    if "argument" in kind:
        name = f"`{p.name.upper()}`" + (" ..." if getattr(p, "nargs", 1) == -1 else "")
        typ = _type_name(p)
    else:
        flags = list(p.opts) + list(getattr(p, "secondary_opts", []) or [])
        name = " / ".join(f"`{f}`" for f in flags)
        typ = "" if getattr(p, "is_flag", False) else _type_name(p)
        if getattr(p, "multiple", False):
            typ += " (repeatable)"
    return f"| {name} | {_cell(typ)} | {_cell(_default(p))} | {_cell(_text(getattr(p, 'help', '')))} |"


def _usage(path: str, cmd: Any) -> str:
    pieces = [path]
    subs = getattr(cmd, "commands", None)
    if any("option" in type(p).__name__.lower() for p in cmd.params):
        pieces.append("[OPTIONS]")
    for p in cmd.params:
        if "argument" in type(p).__name__.lower():
            arg = p.name.upper() + ("..." if getattr(p, "nargs", 1) == -1 else "")
            pieces.append(arg if getattr(p, "required", False) else f"[{arg}]")
    if subs:
        pieces.append("COMMAND [ARGS]...")
    return " ".join(pieces)


def _command(path: str, cmd: Any, level: int) -> list[str]:
    lines = [f"{'#' * level} `{path}`", "", "```text", _usage(path, cmd), "```", ""]
    if cmd.help:
        lines += [_text(cmd.help), ""]
    rows = [r for r in (_param_row(p) for p in cmd.params) if r]
    rows.append("| `--help` |  |  | Show the help and exit. |")
    lines += ["| argument / option | type | default | description |", "| --- | --- | --- | --- |", *rows, ""]
    subs = getattr(cmd, "commands", None) or {}
    for name in sorted(subs):
        sub = subs[name]
        if not getattr(sub, "hidden", False):
            lines += _command(f"{path} {name}", sub, min(level + 1, 4))
    return lines


def cli_reference() -> str:
    """The Markdown of every command of ``qscale.cli.app``, top level first."""
    import typer

    root = typer.main.get_command(_load_app())
    lines: list[str] = []
    subs = getattr(root, "commands", {})
    opts = [r for r in (_param_row(p) for p in root.params) if r]
    lines += [
        "## `qscale`",
        "",
        "```text",
        "qscale [OPTIONS] COMMAND [ARGS]...",
        "```",
        "",
        _text(root.help),
        "",
        "| option | type | default | description |",
        "| --- | --- | --- | --- |",
        *opts,
        "| `--help` |  |  | Show the help and exit. |",
        "",
    ]
    lines += ["| command | what it does |", "| --- | --- |"]
    for name in sorted(subs):
        first = _text((subs[name].short_help or subs[name].help or "").split("\n\n")[0])
        lines.append(f"| [`qscale {name}`](#qscale-{name}) | {_cell(first)} |")
    lines.append("")
    for name in sorted(subs):
        lines += _command(f"qscale {name}", subs[name], 2)
    return "\n".join(lines)


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if page.file.src_uri == PAGE and MARKER in markdown:
        return markdown.replace(MARKER, cli_reference())
    return markdown
