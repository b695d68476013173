"""The one layer-selection grammar of qscale (PTQ ``skip``, QAT ``exclude`` and ``LayerRule`` patterns).

Layer names are qualified module names (``model.layers.0.mlp.down_proj``). A pattern is an ``fnmatch``
glob matched against the whole name (``*.down_proj``, ``*lm_head``) or, with the prefix ``re:``, a regular
expression that must match the whole name (``re:.*layers\\.[0-3]\\..*``).
"""

from __future__ import annotations

import fnmatch
import re

from qscale.errors import QscaleError, require


def check_pattern(pattern: str) -> None:
    """Raise ``QscaleError`` for an empty pattern or an invalid ``re:`` expression."""
    require(isinstance(pattern, str) and pattern != "", f"a layer pattern must be a non-empty string, got {pattern!r}")
    if pattern.startswith("re:"):
        try:
            re.compile(pattern[3:])
        except re.error as e:
            raise QscaleError(f"invalid regular expression {pattern[3:]!r}: {e}") from None


def name_matches(pattern: str, name: str) -> bool:
    """Whether a qualified module name matches a glob or a ``re:`` regular expression (full match)."""
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)
