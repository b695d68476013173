"""qscale.evaluate: held-out cross-entropy and perplexity (``loss``) and the paired noise statistics of
loss differences (``noise``)."""

from qscale.evaluate.loss import EvalResult, evaluate

__all__ = ["EvalResult", "evaluate"]
