"""User-facing errors.

Library code raises :class:`QscaleError` (or a subclass) for bad input: missing data, an unknown
name, an invalid number, a corrupt checkpoint. The CLI prints its message as one line and exits
with code 2; anything else is a bug and keeps its traceback.
"""


class QscaleError(ValueError):
    """Bad input from the user; the message names the problem in one line."""


class ConvergenceError(QscaleError):
    """A numerical fit did not converge; the message says how the optimiser stopped."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`QscaleError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise QscaleError(message)
