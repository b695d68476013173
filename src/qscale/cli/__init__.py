"""qscale's command line, the top layer: the only package that parses flags, prints tables and maps errors to
exit codes. One module per command (``quantize``, ``qat``, ``export``, ``eval``, ``fit``, ``predict``,
``train``, ``study_qid``, ``study_qat``); ``app`` registers them, ``common`` holds the error contract."""

from qscale.cli.app import app, main

__all__ = ["app", "main"]
