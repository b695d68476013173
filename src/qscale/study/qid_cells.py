"""The QiD study's tables, typed rows and cell functions (Ouyang et al. 2024, arXiv 2411.17691; SPEC §1).

Three kinds of task, each a module-level function so that any executor can ship it:

- :func:`train_size`: train (or resume) one size of the built-in suite; its row records the seconds;
- :func:`eval_checkpoint`: the full-precision loss of one checkpoint on the study's fixed held-out
  windows (per-window losses stored, measured once);
- :func:`quantize_cell`: quantize a copy of the checkpoint (calibration windows from the TRAIN split,
  fixed seed), evaluate it on the SAME windows and store QiD = loss_q - loss_fp with the paired SE.
"""

from __future__ import annotations

import copy
import functools
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from qscale.errors import require
from qscale.evaluate import evaluate
from qscale.evaluate.noise import paired_se
from qscale.models import count_params, load_model
from qscale.models.load import model_positions
from qscale.provenance import seed_everything, versions
from qscale.ptq import PTQConfig, quantize_model
from qscale.study.core import CellKey, Row, Table, columns
from qscale.train import TrainConfig, train
from qscale.train.engine import device_for

KEY = "run:text model:text D:int"
TRAIN_TABLE = Table(
    "qid_train", columns("run:text model:text seed:int config_hash:text"), columns("steps:int seconds:float")
)
FP_TABLE = Table(
    "qid_fp",
    columns(f"{KEY} seed:int config_hash:text"),
    columns("N:int N_total:int loss_fp:float per_window:array eval_tokens:int eval_s:float path:text"),
)
QID_TABLE = Table(
    "qid",
    columns(f"{KEY} method:text P:int G:int seed:int config_hash:text"),
    columns(
        "N:int N_total:int loss_fp:float loss_q:float qid:float qid_se:float eval_tokens:int "
        "versions:json train_s:float quantize_s:float eval_s:float"
    ),
)
TABLES = (TRAIN_TABLE, FP_TABLE, QID_TABLE)


@dataclass(frozen=True)
class TrainRow(Row):
    """One trained size of the built-in suite (the seconds of the run that finished it)."""

    steps: int
    seconds: float


@dataclass(frozen=True)
class FpRow(Row):
    """Full-precision loss of one checkpoint on the study's fixed held-out windows."""

    N: int
    N_total: int
    loss_fp: float
    per_window: np.ndarray
    eval_tokens: int
    eval_s: float
    path: str


@dataclass(frozen=True)
class QidRow(Row):
    """One quantized checkpoint: QiD = loss_q - loss_fp (SPEC §1) and its paired standard error."""

    N: int
    N_total: int
    loss_fp: float
    loss_q: float
    qid_se: float
    eval_tokens: int
    versions: dict
    train_s: float
    quantize_s: float
    eval_s: float

    def extra(self) -> dict:
        return {"qid": self.loss_q - self.loss_fp}


def device() -> torch.device:
    """Where studies measure: CUDA when available, else CPU (the training engine's rule)."""
    return device_for("auto")


@functools.lru_cache(maxsize=1)
def _cached(path: str, stamp: float) -> torch.nn.Module:
    return load_model(path).to(device())


def checkpoint_model(path: str) -> torch.nn.Module:
    """The checkpoint at ``path``, loaded once for the consecutive cells of one checkpoint (do not modify)."""
    folder = Path(path)
    require((folder / "config.json").is_file(), f"checkpoint folder is missing or incomplete: {folder}")
    stamp = max(p.stat().st_mtime for p in folder.iterdir() if p.is_file())
    return _cached(str(folder), stamp)


def train_size(cfg: TrainConfig, streams, folder: str, key: CellKey, progress: bool = False) -> TrainRow:
    """Train (or resume) one size of the suite into ``folder``; all its checkpoints exist afterwards."""
    t0 = time.perf_counter()
    ckpts = train(cfg, streams, folder, progress=progress)
    require(ckpts and ckpts[-1].step == cfg.total_steps, f"training of {folder} did not finish")
    return TrainRow(key, steps=cfg.total_steps, seconds=time.perf_counter() - t0)


def eval_checkpoint(
    path: str, windows: torch.Tensor, batch_size: int, key: CellKey, N: int | None = None, *_after
) -> FpRow:
    """Full-precision loss and per-window losses of the checkpoint at ``path`` (N counted unless given)."""
    model = checkpoint_model(path)
    positions = model_positions(model)
    require(
        positions is None or positions >= windows.shape[1] - 1,
        f"checkpoint {path} handles {positions} positions, shorter than the evaluation windows "
        f"({windows.shape[1] - 1}); lower the preset's window length",
    )
    require(
        int(windows.max()) < model.get_input_embeddings().num_embeddings,
        f"the held-out tokens do not fit the vocabulary of {path}: is the tokenizer the checkpoint's own?",
    )
    t = time.perf_counter()
    res = evaluate(model, windows, batch_size=batch_size)
    pc = count_params(model)
    return FpRow(
        key,
        N=N or pc.non_embedding,
        N_total=pc.total,
        loss_fp=res.loss,
        per_window=res.per_window,
        eval_tokens=res.n_tokens,
        eval_s=time.perf_counter() - t,
        path=path,
    )


def quantize_cell(
    path: str,
    cfg: PTQConfig,
    calib: torch.Tensor,
    windows: torch.Tensor,
    batch_size: int,
    seed: int,
    key: CellKey,
    fp: dict,
    trained: dict | None = None,
) -> QidRow:
    """Quantize a copy of the checkpoint per ``cfg``, evaluate it on the fp windows, return its QiD row."""
    seed_everything(seed)
    model = copy.deepcopy(checkpoint_model(path))
    t = time.perf_counter()
    quantize_model(model, cfg, calib.to(device()), progress=False)
    quantize_s = time.perf_counter() - t
    t = time.perf_counter()
    res = evaluate(model, windows, batch_size=batch_size)
    eval_s = time.perf_counter() - t
    return QidRow(
        key,
        N=fp["N"],
        N_total=fp["N_total"],
        loss_fp=fp["loss_fp"],
        loss_q=res.loss,
        qid_se=paired_se(fp["per_window"], res.per_window),
        eval_tokens=res.n_tokens,
        versions=versions(),
        train_s=trained["seconds"] if trained else 0.0,
        quantize_s=quantize_s,
        eval_s=eval_s,
    )
