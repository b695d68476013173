"""Comma-separated list options of the study commands, parsed with one-line errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from qscale.errors import QscaleError

T = TypeVar("T")


def comma_list(text: str | None, convert: Callable[[str], T], what: str, kind: str) -> tuple[T, ...] | None:
    """``"2, 3,4"`` -> ``(2, 3, 4)`` with ``convert``; None or empty text -> None (the preset's default)."""
    if not text:
        return None
    try:
        return tuple(convert(x.strip()) for x in text.split(",") if x.strip())
    except ValueError:
        raise QscaleError(f"{what} must be comma-separated {kind}, got {text!r}") from None


def ints(text: str | None, what: str) -> tuple[int, ...] | None:
    return comma_list(text, int, what, "integers")


def floats(text: str | None, what: str) -> tuple[float, ...] | None:
    return comma_list(text, float, what, "numbers")


def names(text: str | None) -> tuple[str, ...] | None:
    return comma_list(text, str, "names", "names")
