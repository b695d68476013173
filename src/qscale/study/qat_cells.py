"""The QAT study's tables, typed rows and cell functions (Chen et al. 2025, arXiv 2505.14302; SPEC §2).

Every model of the grid is trained FROM SCRATCH through :func:`train_model` (same initialisation seed,
same data order, same schedule; full precision and QAT differ only by ``prepare``) and evaluated on the
same held-out windows, so δ = loss_QAT − loss_fp is a paired difference. Per-window losses are stored
as float64 arrays so every δ can be re-paired with its reference. Task functions are module level so
that any executor can ship them.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import Tensor, nn

from qscale.data import TokenStreams
from qscale.data.batches import train_batch
from qscale.errors import require
from qscale.evaluate import evaluate
from qscale.evaluate.noise import paired_delta
from qscale.models import build_model, count_params, get_size
from qscale.provenance import seed_everything, versions
from qscale.ptq import quantize_model
from qscale.qat import QATRecipeConfig, get_recipe, input_stats, prepare
from qscale.qat.ste import act_spec
from qscale.study.checkpoints import SuiteCheckpoint
from qscale.study.core import CellKey, Row, Table, columns
from qscale.study.qat_grid import PtqCompare, QatGrid, get_scheme
from qscale.study.qid_cells import checkpoint_model, device
from qscale.train import list_checkpoints, train
from qscale.train.engine import OptimConfig
from qscale.train.engine import train_model as engine_train
from qscale.train.suite import SuiteConfig

SMOOTH_FRAC = 0.1  # the smoothed final training loss averages the last 10% of steps
_RUN = "run:text model:text D:int"
FP_TABLE = Table(
    "qat_fp",
    columns(f"{_RUN} seed:int config_hash:text"),
    columns("N:int N_total:int steps:int loss:float per_window:array train_loss:float train_s:float eval_s:float"),
)
QAT_TABLE = Table(
    "qat",
    columns(f"{_RUN} scheme:text G:int seed:int config_hash:text"),
    columns(
        "N:int N_total:int steps:int w_bits:int a_bits:int G_eff:int loss_fp:float loss_q:float "
        "delta:float delta_se:float train_loss_fp:float train_loss_q:float delta_train:float "
        "per_window:array eval_tokens:int versions:json train_s:float eval_s:float"
    ),
)
ATTR_TABLE = Table(
    "qat_attr",
    columns(f"{_RUN} scheme:text G:int seed:int config_hash:text layer:text"),
    columns("mse:float rel_mse:float kurtosis:float n:int"),
)
PTQ_TABLE = Table(
    "qat_ptq",
    columns(f"{_RUN} method:text scheme:text seed:int config_hash:text"),
    columns("N:int G:int steps:int loss:float per_window:array train_loss:float? seconds:float checkpoint:text"),
)
TABLES = (FP_TABLE, QAT_TABLE, ATTR_TABLE, PTQ_TABLE)


@dataclass(frozen=True)
class FpRow(Row):
    N: int
    N_total: int
    steps: int
    loss: float
    per_window: np.ndarray
    train_loss: float
    train_s: float
    eval_s: float


@dataclass(frozen=True)
class QatRow(Row):
    N: int
    N_total: int
    steps: int
    w_bits: int
    a_bits: int
    G_eff: int
    loss_fp: float
    loss_q: float
    delta: float
    delta_se: float
    train_loss_fp: float
    train_loss_q: float
    delta_train: float
    per_window: np.ndarray
    eval_tokens: int
    versions: dict
    train_s: float
    eval_s: float


@dataclass(frozen=True)
class AttrRow(Row):
    mse: float
    rel_mse: float
    kurtosis: float
    n: int


@dataclass(frozen=True)
class PtqRow(Row):
    N: int
    G: int
    steps: int
    loss: float
    per_window: np.ndarray
    train_loss: float | None
    seconds: float
    checkpoint: str


def train_model(
    model: nn.Module,
    recipe: QATRecipeConfig | None,
    batches: Callable[[int], Tensor],
    steps: int,
    lr: float,
    warmup_steps: int,
    weight_decay: float,
) -> list[float]:
    """Train ``model`` in place for ``steps`` steps on ``batches(step)``; ``recipe`` None = full precision.

    The one code path of every model in the study, so fp and QAT differ only by ``prepare``: qscale's
    training engine (``qscale.train.engine``: AdamW β = 0.9, 0.95, weight decay on weight matrices only --
    not norms, biases or quantizer parameters -- linear warm-up then cosine decay to 10%, gradient clipping
    at 1.0; Chen et al. 2025 protocol, SPEC §2). Returns the training loss of every step.
    """
    hooks = None
    if recipe is not None:
        kind = get_recipe(recipe.recipe)
        teacher = copy.deepcopy(model).eval().requires_grad_(False) if kind.needs_teacher else None
        prepare(model, recipe)
        hooks = kind.hooks(model, recipe, teacher)  # the recipe's own step (SAM, extra loss terms, rank decay)
    return engine_train(
        model, OptimConfig(lr=lr, warmup=warmup_steps, weight_decay=weight_decay), batches, steps, hooks=hooks
    )


def smoothed(losses: list[float], frac: float = SMOOTH_FRAC) -> float:
    """The smoothed final training loss: mean of the last ``ceil(frac · steps)`` step losses."""
    require(len(losses) > 0, "no training losses to smooth")
    k = max(1, int(np.ceil(frac * len(losses))))
    return float(np.mean(losses[-k:]))


def _attribution(model: nn.Module, windows: Tensor, G: int, key: CellKey) -> list[AttrRow]:
    """Per-layer input statistics (quantization MSE at A4, kurtosis) of a trained model."""
    stats = input_stats(model, [windows[i : i + 1].to(device()) for i in range(len(windows))], act_spec(4, G or None))
    return [
        AttrRow(key.with_(layer=name), mse=s.mse, rel_mse=s.rel_mse, kurtosis=s.kurtosis, n=s.n)
        for name, s in stats.items()
    ]


def _train_fresh(
    g: QatGrid, size: str, steps: int, vocab: int, train_tokens: np.ndarray, recipe: QATRecipeConfig | None
) -> tuple[nn.Module, list[float], float]:
    seed_everything(g.seed)
    model = build_model(size, vocab, max_seq_len=max(1024, g.seq_len), seed=g.seed).to(device())
    t = time.perf_counter()
    losses = train_model(
        model,
        recipe,
        lambda s: train_batch(train_tokens, s, g.batch_size, g.seq_len, g.seed),
        steps,
        g.lr,
        g.warmup_steps,
        g.weight_decay,
    )
    return model, losses, time.perf_counter() - t


def fp_cell(
    g: QatGrid,
    size: str,
    steps: int,
    vocab: int,
    train_tokens: np.ndarray,
    windows: Tensor,
    key: CellKey,
    attr_key: CellKey | None,
) -> list[Row]:
    """Train the full-precision model of one (N, D) and measure it (and its attribution, if asked)."""
    model, losses, train_s = _train_fresh(g, size, steps, vocab, train_tokens, None)
    rows: list[Row] = []
    t = time.perf_counter()
    res = evaluate(model, windows, batch_size=g.eval_batch_size)
    pc = count_params(model)
    rows.append(
        FpRow(
            key,
            N=pc.non_embedding,
            N_total=pc.total,
            steps=steps,
            loss=res.loss,
            per_window=res.per_window,
            train_loss=smoothed(losses),
            train_s=train_s,
            eval_s=time.perf_counter() - t,
        )
    )
    if attr_key is not None:
        rows += _attribution(model, windows[: g.attribution_windows, :-1], attr_key["G"], attr_key)
    return rows


def qat_cell(
    g: QatGrid,
    size: str,
    steps: int,
    scheme_name: str,
    vocab: int,
    train_tokens: np.ndarray,
    windows: Tensor,
    key: CellKey,
    attr_key: CellKey | None,
    fp: dict,
) -> list[Row]:
    """Train one QAT model from scratch and store δ against the fp model of its (N, D) on the same windows."""
    scheme, G = get_scheme(scheme_name), key["G"]
    model, losses, train_s = _train_fresh(g, size, steps, vocab, train_tokens, scheme.recipe(G))
    t = time.perf_counter()
    res = evaluate(model, windows, batch_size=g.eval_batch_size)
    delta, se = paired_delta(fp["per_window"], res.per_window)
    train_q = smoothed(losses)
    rows: list[Row] = [
        QatRow(
            key,
            N=fp["N"],
            N_total=fp["N_total"],
            steps=steps,
            w_bits=scheme.w_bits,
            a_bits=scheme.a_bits,
            G_eff=G or get_size(size).d_model,
            loss_fp=fp["loss"],
            loss_q=res.loss,
            delta=delta,
            delta_se=se,
            train_loss_fp=fp["train_loss"],
            train_loss_q=train_q,
            delta_train=train_q - fp["train_loss"],
            per_window=res.per_window,
            eval_tokens=res.n_tokens,
            versions=versions(),
            train_s=train_s,
            eval_s=time.perf_counter() - t,
        )
    ]
    if attr_key is not None:
        rows += _attribution(model, windows[: g.attribution_windows, :-1], G, attr_key)
    return rows


def compare_job(
    c: PtqCompare,
    method: str,
    scheme: str,
    windows: Tensor,
    calib: Tensor,
    train_tokens: np.ndarray,
    seed: int,
    key: CellKey,
    ck: dict,
) -> PtqRow:
    """One QAT-vs-PTQ measurement on a final checkpoint: as is, GPTQ W4, fp fine-tune, or a QAT fine-tune."""
    base = checkpoint_model(ck["path"])
    seed_everything(seed)
    t = time.perf_counter()
    model, train_loss, steps = base, None, 0
    if method == "gptq":
        model = copy.deepcopy(base)
        quantize_model(model, c.gptq_config(), calib.to(device()))
    elif method != "checkpoint":
        model = copy.deepcopy(base)
        recipe = None if method == "fp-finetune" else get_scheme(scheme).recipe(c.group_size, method, group_acts=False)
        start = int(ck["step"])
        losses = train_model(
            model,
            recipe,
            lambda s: train_batch(train_tokens, start + s, c.batch_size, c.seq_len, seed),
            c.steps,
            c.lr,
            c.warmup_steps,
            0.0,
        )
        train_loss, steps = smoothed(losses), c.steps
    res = evaluate(model, windows, batch_size=c.eval_batch_size)
    return PtqRow(
        key,
        N=ck["N"] or count_params(base).non_embedding,
        G=c.group_size,
        steps=steps,
        loss=res.loss,
        per_window=res.per_window,
        train_loss=train_loss,
        seconds=time.perf_counter() - t,
        checkpoint=str(ck["path"]),
    )


def suite_checkpoint(qid_dir: str, out_dir: str, suite: SuiteConfig, size: str, streams: TokenStreams) -> dict:
    """The suite's final checkpoint of ``size``: the QiD study's if complete and same tokenizer, else ours."""
    total = suite.train_config(size).total_steps
    sub = f"suite-{suite.name}-seed{suite.base.seed}"
    for folder in (Path(qid_dir) / sub / size, Path(out_dir) / sub / size):
        if folder.is_dir():
            cks = list_checkpoints(folder)
            if cks and cks[-1].step == total and cks[-1].meta.get("tokenizer_hash") == streams.tokenizer_hash:
                return {"path": str(cks[-1].path), "step": cks[-1].step, "N": None}
    cks = train(suite.train_config(size), streams, Path(out_dir) / sub / size, progress=False)
    require(cks and cks[-1].step == total, f"training suite {suite.name!r} size {size} did not finish")
    return {"path": str(cks[-1].path), "step": cks[-1].step, "N": None}


def user_checkpoint(ck: SuiteCheckpoint) -> dict:
    """A user's checkpoint as the comparison jobs take it (the data order restarts at step 0)."""
    return {"path": ck.path, "step": 0, "N": ck.N}
