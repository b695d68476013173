"""qscale.evaluate: held-out cross-entropy and perplexity."""

from qscale.evaluate.loss import EvalResult, evaluate

__all__ = ["EvalResult", "evaluate"]
