"""Held-out loss: mean next-token cross-entropy (nats/token) and perplexity on fixed windows."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from qscale.errors import require


@dataclass
class EvalResult:
    """Mean CE over all predicted tokens, ``exp`` of it, token count and per-window mean CE."""

    loss: float
    ppl: float
    n_tokens: int
    per_window: np.ndarray


@torch.no_grad()
def evaluate(model, windows: torch.LongTensor, batch_size: int = 16, progress: bool = False) -> EvalResult:
    """Cross-entropy of predicting ``windows[:, 1:]`` from ``windows[:, :-1]``, in batches.

    Every window has the same length, so the mean over windows equals the mean over tokens; the
    per-window means allow paired comparisons (same windows before and after quantization).
    """
    from rich.progress import Progress

    require(
        windows.ndim == 2 and windows.shape[1] >= 2, f"windows must be [n, T+1] with T >= 1, got {tuple(windows.shape)}"
    )
    require(batch_size >= 1, f"batch size must be >= 1, got {batch_size}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    try:
        with Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task("evaluating", total=len(windows))
            for i in range(0, len(windows), batch_size):
                batch = windows[i : i + batch_size].to(device)
                logits = model(input_ids=batch[:, :-1], use_cache=False).logits.float()
                # rows of [B·T, V] (contiguous): ~5x faster on CPU than the class axis of logits.transpose(1, 2)
                ce = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="none")
                out.append(ce.view(len(batch), -1).mean(dim=1).double().cpu())
                bar.advance(task, len(batch))
    finally:
        model.train(was_training)
    per_window = torch.cat(out).numpy()
    loss = float(per_window.mean())
    return EvalResult(loss, math.exp(loss), int(windows.shape[0] * (windows.shape[1] - 1)), per_window)
