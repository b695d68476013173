"""The QAT study runner (Chen et al. 2025, arXiv 2505.14302; SPEC §2 protocol and findings).

1. Grid: for every (N, D) train the full-precision model once, then for every scheme (W4A4, W4A16, W16A4)
   and group size G train a QAT model FROM SCRATCH through the same code path (:func:`train_model`: same
   initialisation seed, same data order, same schedule; only ``prepare`` differs) and store
   δ = loss_QAT − loss_fp on the same held-out windows (paired SE) and the smoothed final training loss
   difference (the paper's metric). ``-fc2a8`` schemes re-run W4A4 / W16A4 with the FC2 input at 8 bits.
2. Attribution: quantization MSE and kurtosis of every linear layer's input on the trained fp, W16A4 and
   W4A4 models of one cell (``qscale.qat.input_stats``).
3. QAT vs PTQ: on the final checkpoints of a QiD suite (re-used from the QiD study's default folder when
   complete, else trained), GPTQ W4 against a short QAT fine-tune per recipe and scheme, and a
   full-precision fine-tune of the same steps (the control).
4. Report (:mod:`qscale.report.qat`).

Every trained model is one committed row; a re-run skips stored cells, so a killed study resumes.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from qscale.data import DataConfig, TokenStreams, load_token_streams
from qscale.data.batches import calibration_windows, eval_windows, train_batch
from qscale.errors import require
from qscale.evaluate import evaluate
from qscale.models import build_model, count_params, get_size, load_model
from qscale.provenance import config_hash, seed_everything, versions
from qscale.ptq import quantize_model
from qscale.qat import QATRecipeConfig, input_stats, prepare
from qscale.qat.finetune import cosine_lr, lm_loss
from qscale.qat.ste import act_spec
from qscale.study.grid import get_preset as get_qid_preset
from qscale.evaluate.noise import paired_se
from qscale.study.qat_grid import CONTROL, PtqCompare, QatGrid, get_qat_preset, get_scheme
from qscale.study.qat_store import QatStore
from qscale.train import list_checkpoints, train
from qscale.train.suite import SUITE_PRESETS, SuiteConfig

DEFAULT_ROOT = Path("qscale-runs")
SMOOTH_FRAC = 0.1  # the smoothed final training loss averages the last 10% of steps
PHASES = ("data", "fp_train", "qat_train", "eval", "attribution", "suite_train", "compare", "report")


@dataclass(frozen=True)
class QatStudy:
    """Everything a QAT study needs; ``qid_dir`` is where a QiD study may have left its suite.

    ``data`` feeds the grid; ``compare_data`` the QAT-vs-PTQ part (the QiD preset's data settings, so that the
    QiD study's checkpoints and tokenizer are re-used).
    """

    name: str
    data: DataConfig
    compare_data: DataConfig
    grid: QatGrid
    compare: PtqCompare | None
    out_dir: Path
    qid_dir: Path
    seed: int = 0
    n_boot: int = 200

    @property
    def store_path(self) -> Path:
        return self.out_dir / "study.sqlite"

    @property
    def report_dir(self) -> Path:
        return self.out_dir / "report"


@dataclass
class QatOutcome:
    """What a run did: models trained and skipped, seconds per phase, the report written."""

    store_path: Path
    report: object = None
    computed: int = 0
    skipped: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))


def build_qat_study(preset: str, out: Path | None = None, data: Path | None = None, tokenizer: Path | None = None,
                    seed: int = 0, recipes: tuple[str, ...] | None = None, sizes: tuple[str, ...] | None = None,
                    steps: tuple[int, ...] | None = None, groups: tuple[int, ...] | None = None,
                    compare: bool = True, qid_dir: Path | None = None) -> QatStudy:
    """A :class:`QatStudy` from a named preset and the user's overrides (validated by the dataclasses).

    The default folder is ``./qscale-runs/qat-<preset>``; the QiD suite is looked for in
    ``./qscale-runs/qid-<suite>`` (the QiD study's default folder).
    """
    p = get_qat_preset(preset)
    g = p.grid
    sizes, steps, groups = tuple(sizes or g.sizes), tuple(steps or g.steps), tuple(groups or g.groups)
    a_size, a_steps, a_group = g.attribution  # kept when still in the grid, else the largest size / D, first G
    grid = dataclasses.replace(
        g, seed=seed, sizes=sizes, steps=steps, groups=groups,
        fc2_steps=tuple(s for s in g.fc2_steps if s in steps) or (max(steps),),
        attribution=(a_size if a_size in sizes else sizes[-1], a_steps if a_steps in steps else max(steps),
                     a_group if a_group in groups else groups[0]))
    cmp = None
    if compare and p.compare is not None:
        cmp = dataclasses.replace(p.compare, recipes=tuple(recipes)) if recipes else p.compare
    data_cfg = DataConfig(data=data, tokenizer=tokenizer, vocab_size=p.vocab_size,
                          max_files=p.max_files if data is None else None)
    suite = cmp.suite if cmp is not None else preset
    qid = get_qid_preset(suite)
    compare_data = DataConfig(data=data, tokenizer=tokenizer, vocab_size=qid.vocab_size,
                              max_files=qid.max_files if data is None else None)
    return QatStudy(name=preset, data=data_cfg, compare_data=compare_data, grid=grid, compare=cmp,
                    out_dir=Path(out) if out is not None else DEFAULT_ROOT / f"qat-{preset}",
                    qid_dir=Path(qid_dir) if qid_dir is not None else DEFAULT_ROOT / f"qid-{suite}",
                    seed=seed, n_boot=p.n_boot)


# ---------------------------------------------------------------- the shared training path


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _autocast(device: torch.device):
    """bf16 autocast on CUDA (Chen et al. train in BF16), plain fp32 on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def train_model(model: nn.Module, recipe: QATRecipeConfig | None, batches: Callable[[int], Tensor], steps: int,
                lr: float, warmup_steps: int, weight_decay: float) -> list[float]:
    """Train ``model`` in place for ``steps`` steps on ``batches(step)``; ``recipe`` None = full precision.

    The one code path of every model in the study, so fp and QAT differ only by ``prepare``: AdamW
    (β = 0.9, 0.95), weight decay on weight matrices only (not norms, biases or quantizer parameters),
    linear warm-up then cosine decay to 10% (``qscale.qat.finetune.cosine_lr``), gradient clipping at 1.0
    (Chen et al. 2025 protocol, SPEC §2). Returns the training loss of every step.
    """
    require(steps >= 1, f"steps must be >= 1, got {steps}")
    device = next(model.parameters()).device
    if recipe is not None:
        prepare(model, recipe)
    model.train()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in named if p.ndim >= 2 and "quantizer" not in n]
    rest = [p for n, p in named if not (p.ndim >= 2 and "quantizer" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95))
    params = [p for _, p in named]
    losses = []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, lr, warmup_steps)
        with _autocast(device):
            loss, _ = lm_loss(model, batches(step).to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


def smoothed(losses: list[float], frac: float = SMOOTH_FRAC) -> float:
    """The smoothed final training loss: mean of the last ``ceil(frac · steps)`` step losses."""
    require(len(losses) > 0, "no training losses to smooth")
    k = max(1, int(np.ceil(frac * len(losses))))
    return float(np.mean(losses[-k:]))


def paired_delta(per_window_ref: np.ndarray, per_window_q: np.ndarray) -> tuple[float, float]:
    """δ = mean(q) − mean(ref) over the same windows and its paired standard error."""
    ref, q = np.asarray(per_window_ref, dtype=np.float64), np.asarray(per_window_q, dtype=np.float64)
    return float(q.mean() - ref.mean()), paired_se(ref, q)


# ---------------------------------------------------------------- the runner


def run_qat_study(study: QatStudy, progress: bool = True, streams: TokenStreams | None = None,
                  compare_streams: TokenStreams | None = None) -> QatOutcome:
    """Run (or resume) the study and write its report; returns counts and per-phase timings.

    ``streams`` / ``compare_streams``: already loaded data for the grid / the comparison (loaded from the
    study's data configs when None; the comparison re-uses the grid's when the configs are equal).
    """
    from qscale.report.qat import write_qat_report

    out = QatOutcome(study.store_path)
    device = _device()
    t0 = time.perf_counter()
    streams = streams if streams is not None else load_token_streams(study.data, progress=progress)
    if study.compare is not None and compare_streams is None:
        compare_streams = (streams if study.compare_data == study.data
                           else load_token_streams(study.compare_data, progress=progress))
    out.seconds["data"] = time.perf_counter() - t0
    with QatStore(study.store_path) as store, _progress(progress) as bar:
        grid_where = _grid(study, streams, store, out, bar, device)
        ptq_where = (_compare(study, compare_streams, store, out, bar, device) if study.compare is not None
                     else None)
        cells, fps = store.rows("qat", grid_where), store.rows("qat_fp", grid_where)
        attr = store.rows("qat_attr", {**grid_where, "model": study.grid.attribution[0],
                                       "D": study.grid.tokens(study.grid.attribution[1])})
        ptq = store.rows("qat_ptq", ptq_where) if ptq_where else []
    t0 = time.perf_counter()
    out.report = write_qat_report(cells, fps, attr, ptq, study.report_dir, n_boot=study.n_boot, seed=study.seed,
                                  title=f"QAT study '{study.name}'", context=_context(study))
    out.seconds["report"] = time.perf_counter() - t0
    return out


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    disable=not enabled)


def _context(study: QatStudy) -> dict:
    g = study.grid
    ctx = {"study": study.name, "vocab": study.data.vocab_size, "sizes": ", ".join(g.sizes),
           "D (tokens)": ", ".join(f"{g.tokens(s):,}" for s in g.steps),
           "G": ", ".join(str(x) if x else "per channel" for x in g.groups),
           "batch": f"{g.batch_size} x {g.seq_len}", "eval tokens per loss": f"{g.eval_windows * g.seq_len:,}",
           "seed": study.seed, "device": _device().type}
    if study.compare is not None:
        ctx["QAT vs PTQ"] = (f"suite '{study.compare.suite}' (vocab {study.compare_data.vocab_size}), "
                             f"{study.compare.steps} fine-tune steps of {study.compare.batch_size} x "
                             f"{study.compare.seq_len}, lr {study.compare.lr:g}")
    return ctx


def _grid(study: QatStudy, streams, store: QatStore, out: QatOutcome, bar, device) -> dict:
    """Train every missing (N, D) fp model and QAT cell; returns the ``where`` selecting this grid's rows."""
    g = study.grid
    windows = eval_windows(streams.val, g.eval_windows, g.seq_len)
    chash = config_hash({"kind": "qat-grid", "tokenizer": streams.tokenizer_hash, "data": streams.data_fingerprint,
                         "split_sizes": [len(streams.train), len(streams.val)], "vocab": streams.vocab_size,
                         **{k: getattr(g, k) for k in ("batch_size", "seq_len", "lr", "warmup_steps", "weight_decay",
                                                       "eval_windows")}})
    where = {"run": study.name, "seed": g.seed, "config_hash": chash}
    vers = versions()
    a_size, a_steps, a_group = g.attribution
    attr_windows = windows[: g.attribution_windows, :-1]

    def cells(steps: int) -> list[tuple[str, int]]:
        schemes = (*g.schemes, *(g.fc2_schemes() if steps in g.fc2_steps else ()))
        return [(s, G) for s in schemes for G in g.groups] + ([(CONTROL, g.groups[0])] if g.control else [])

    total = sum(1 + len(cells(steps)) for steps in g.steps) * len(g.sizes)
    task = bar.add_task("QAT grid", total=total)

    def batches(step: int) -> Tensor:
        return train_batch(streams.train, step, g.batch_size, g.seq_len, g.seed)

    def fresh(size: str) -> nn.Module:
        return build_model(size, streams.vocab_size, max_seq_len=max(1024, g.seq_len), seed=g.seed).to(device)

    def attribute(model, size, D, scheme, G) -> None:
        t = time.perf_counter()
        spec = act_spec(4, G or None)
        stats = input_stats(model, [attr_windows[i:i + 1].to(device) for i in range(len(attr_windows))], spec)
        store.add_many("qat_attr", [{**where, "model": size, "D": D, "scheme": scheme, "G": G, "layer": name,
                                     "mse": s.mse, "rel_mse": s.rel_mse, "kurtosis": s.kurtosis, "n": s.n}
                                    for name, s in stats.items()])
        out.seconds["attribution"] += time.perf_counter() - t

    def measure(model) -> tuple[object, float]:
        t = time.perf_counter()
        res = evaluate(model, windows, batch_size=g.eval_batch_size)
        dt = time.perf_counter() - t
        out.seconds["eval"] += dt
        return res, dt

    for size in g.sizes:
        for steps in g.steps:
            D = g.tokens(steps)
            is_attr = (size, steps) == (a_size, a_steps)
            fp_key = {**where, "model": size, "D": D}
            need_attr = is_attr and not store.has("qat_attr", {**fp_key, "scheme": "fp", "G": a_group})
            fp = store.get("qat_fp", fp_key)
            if fp is None or need_attr:
                bar.update(task, description=f"{size} D={D:,}: full precision")
                seed_everything(g.seed)
                model = fresh(size)
                t = time.perf_counter()
                losses = train_model(model, None, batches, steps, g.lr, g.warmup_steps, g.weight_decay)
                train_s = time.perf_counter() - t
                out.seconds["fp_train"] += train_s
                if need_attr:
                    attribute(model, size, D, "fp", a_group)
                if fp is None:
                    res, eval_s = measure(model)
                    pc = count_params(model)
                    store.add("qat_fp", {**fp_key, "N": pc.non_embedding, "N_total": pc.total, "steps": steps,
                                         "loss": res.loss, "per_window": res.per_window, "train_loss": smoothed(losses),
                                         "train_s": train_s, "eval_s": eval_s})
                    fp = store.get("qat_fp", fp_key)
                    out.computed += 1
                del model
            else:
                out.skipped += 1
            bar.advance(task)
            for scheme_name, G in cells(steps):
                scheme = get_scheme(scheme_name)
                key = {**fp_key, "scheme": scheme_name, "G": G}
                need_row = not store.has("qat", key)
                need_attr = is_attr and G == a_group and scheme_name in ("W16A4", "W4A4") and not store.has("qat_attr", key)
                if not (need_row or need_attr):
                    out.skipped += 1
                    bar.advance(task)
                    continue
                bar.update(task, description=f"{size} D={D:,}: {scheme_name} G={G or 'ch'}")
                seed_everything(g.seed)
                model = fresh(size)
                t = time.perf_counter()
                losses = train_model(model, scheme.recipe(G), batches, steps, g.lr, g.warmup_steps, g.weight_decay)
                train_s = time.perf_counter() - t
                out.seconds["qat_train"] += train_s
                if need_attr:
                    attribute(model, size, D, scheme_name, G)
                if need_row:
                    res, eval_s = measure(model)
                    delta, se = paired_delta(fp["per_window"], res.per_window)
                    train_q = smoothed(losses)
                    store.add("qat", {**key, "N": fp["N"], "N_total": fp["N_total"], "steps": steps,
                                      "w_bits": scheme.w_bits, "a_bits": scheme.a_bits,
                                      "G_eff": G or get_size(size).d_model, "loss_fp": fp["loss"], "loss_q": res.loss,
                                      "delta": delta, "delta_se": se, "train_loss_fp": fp["train_loss"],
                                      "train_loss_q": train_q, "delta_train": train_q - fp["train_loss"],
                                      "per_window": res.per_window, "eval_tokens": res.n_tokens,
                                      "versions": json.dumps(vers, sort_keys=True), "train_s": train_s, "eval_s": eval_s})
                    out.computed += 1
                del model
                bar.advance(task)
    return where


# ---------------------------------------------------------------- QAT vs PTQ


def _final_checkpoint(study: QatStudy, suite: SuiteConfig, size: str, streams, out: QatOutcome):
    """The suite's final checkpoint of ``size``: the QiD study's if complete and same tokenizer, else ours."""
    total = suite.train_config(size).total_steps
    sub = f"suite-{suite.name}-seed{suite.base.seed}"
    for folder in (study.qid_dir / sub / size, study.out_dir / sub / size):
        if folder.is_dir():
            cks = list_checkpoints(folder)
            if cks and cks[-1].step == total and cks[-1].meta.get("tokenizer_hash") == streams.tokenizer_hash:
                return cks[-1]
    t = time.perf_counter()
    cks = train(suite.train_config(size), streams, study.out_dir / sub / size, progress=False)
    out.seconds["suite_train"] += time.perf_counter() - t
    require(cks and cks[-1].step == total, f"training suite {suite.name!r} size {size} did not finish")
    return cks[-1]


def _compare(study: QatStudy, streams, store: QatStore, out: QatOutcome, bar, device) -> dict:
    """GPTQ W4 vs QAT fine-tunes vs the fp fine-tune control on each size's final checkpoint."""
    c = study.compare
    suite = SUITE_PRESETS[c.suite]
    suite = dataclasses.replace(suite, base=dataclasses.replace(suite.base, seed=study.seed))
    windows = eval_windows(streams.val, c.eval_windows, c.seq_len)
    calib = calibration_windows(streams.train, c.n_calib, c.calib_seq_len, study.seed)
    chash = config_hash({"kind": "qat-vs-ptq", "compare": c, "suite": suite, "tokenizer": streams.tokenizer_hash,
                         "split_sizes": [len(streams.train), len(streams.val)]})
    where = {"run": study.name, "seed": study.seed, "config_hash": chash}
    jobs = [("checkpoint", "W16A16"), ("gptq", "W4A16"), ("fp-finetune", "W16A16"),
            *((r, s) for r in c.recipes for s in c.schemes)]
    task = bar.add_task("QAT vs PTQ", total=len(jobs) * len(c.sizes))
    for size in c.sizes:
        bar.update(task, description=f"QAT vs PTQ {size}: checkpoint")
        ck = _final_checkpoint(study, suite, size, streams, out)
        base = {**where, "model": size, "D": int(ck.tokens)}
        todo = [j for j in jobs if not store.has("qat_ptq", {**base, "method": j[0], "scheme": j[1]})]
        out.skipped += len(jobs) - len(todo)
        bar.advance(task, len(jobs) - len(todo))
        if not todo:
            continue
        model = load_model(ck.path).to(device)
        N = count_params(model).non_embedding

        def batches(step: int, start=int(ck.step)) -> Tensor:
            return train_batch(streams.train, start + step, c.batch_size, c.seq_len, study.seed)

        for method, scheme in todo:
            bar.update(task, description=f"QAT vs PTQ {size}: {method} {scheme}")
            seed_everything(study.seed)
            t = time.perf_counter()
            m, train_loss, steps = model, None, 0
            if method == "gptq":
                m = copy.deepcopy(model)
                quantize_model(m, c.gptq_config(), calib.to(device))
            elif method != "checkpoint":
                m = copy.deepcopy(model)
                recipe = None if method == "fp-finetune" else get_scheme(scheme).recipe(c.group_size, method,
                                                                                      group_acts=False)
                train_loss = smoothed(train_model(m, recipe, batches, c.steps, c.lr, c.warmup_steps, 0.0))
                steps = c.steps
            res = evaluate(m, windows, batch_size=c.eval_batch_size)
            seconds = time.perf_counter() - t
            out.seconds["compare"] += seconds
            store.add("qat_ptq", {**base, "method": method, "scheme": scheme, "N": N, "G": c.group_size,
                                  "steps": steps, "loss": res.loss, "per_window": res.per_window,
                                  "train_loss": train_loss, "seconds": seconds, "checkpoint": str(ck.path)})
            out.computed += 1
            bar.advance(task)
            if m is not model:
                del m
        del model
    return where
