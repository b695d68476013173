"""The QiD study runner (Ouyang et al. 2024, arXiv 2411.17691; SPEC §1 protocol):

train a suite of model sizes with log-spaced checkpoints -> evaluate each checkpoint in full precision
once on fixed held-out windows -> for each PTQ method and bit width quantize a copy (calibration windows
from the TRAIN split, fixed seed) and evaluate it on the SAME windows -> store QiD = loss_q - loss_fp
with its paired standard error -> fit the unified law and write the report.

Every step is resumable: training re-uses finished checkpoints, the full-precision loss of a checkpoint
is stored once, each quantized cell is committed as soon as it is measured and skipped when present,
and the report is rewritten atomically from the store.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from qscale.data import DataConfig, TokenStreams, load_token_streams
from qscale.data.batches import calibration_windows, check_eval_windows, eval_windows
from qscale.errors import require
from qscale.evaluate import evaluate
from qscale.models import count_params, load_model
from qscale.provenance import config_hash, seed_everything, versions
from qscale.ptq import quantize_model
from qscale.report.qid import Report, ReportConfig, write_qid_report
from qscale.study.grid import QidGrid, get_preset
from qscale.evaluate.noise import paired_se
from qscale.study.qid_store import CellKey, CheckpointEval, QidRow, Store
from qscale.train import train
from qscale.train.suite import SUITE_PRESETS, SuiteConfig

DEFAULT_ROOT = Path("qscale-runs")


@dataclass(frozen=True)
class QidStudy:
    """Everything a QiD study needs: data, suite, PTQ grid, report settings and where to write."""

    name: str
    data: DataConfig
    suite: SuiteConfig
    grid: QidGrid
    report: ReportConfig
    out_dir: Path

    @property
    def store_path(self) -> Path:
        return self.out_dir / "study.sqlite"

    @property
    def suite_dir(self) -> Path:
        return self.out_dir / f"suite-{self.suite.name}-seed{self.suite.base.seed}"

    @property
    def report_dir(self) -> Path:
        return self.out_dir / "report"


@dataclass
class StudyOutcome:
    """What a run did: rows computed and skipped, seconds per phase, the report written."""

    store_path: Path
    report: Report | None
    n_rows: int
    computed: int = 0
    skipped: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


def build_study(preset: str, out: Path | None = None, data: Path | None = None, tokenizer: Path | None = None,
                seed: int = 0, thresholds: tuple[float, ...] | None = None, **grid_overrides) -> QidStudy:
    """A :class:`QidStudy` from a named preset and the user's overrides (CLI edge; all validated here).

    ``grid_overrides`` are :class:`QidGrid` fields (methods, bits, group_size, eval_windows, ...).
    The default folder is ``./qscale-runs/qid-<preset>``.
    """
    p = get_preset(preset)
    unknown = set(grid_overrides) - {f.name for f in dataclasses.fields(QidGrid)}
    require(not unknown, f"unknown study grid option(s): {', '.join(sorted(unknown))}")
    grid = dataclasses.replace(p.grid, seed=seed, **grid_overrides)
    report = dataclasses.replace(p.report, thresholds=tuple(thresholds) if thresholds else p.report.thresholds,
                                 seed=seed)
    suite = SUITE_PRESETS[p.suite]
    suite = dataclasses.replace(suite, base=dataclasses.replace(suite.base, seed=seed))
    data_cfg = DataConfig(data=data, tokenizer=tokenizer, vocab_size=p.vocab_size,
                          max_files=p.max_files if data is None else None)
    out_dir = Path(out) if out is not None else DEFAULT_ROOT / f"qid-{preset}"
    return QidStudy(name=preset, data=data_cfg, suite=suite, grid=grid, report=report, out_dir=out_dir)


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def run_qid_study(study: QidStudy, progress: bool = True, streams: TokenStreams | None = None) -> StudyOutcome:
    """Run (or resume) the study and write its report; returns counts and per-phase timings."""
    grid = study.grid
    grid.check_methods()
    seq_len = study.suite.base.seq_len
    require(grid.eval_seq_len <= seq_len and grid.calib_seq_len <= seq_len,
            f"evaluation ({grid.eval_seq_len}) and calibration ({grid.calib_seq_len}) windows must not be longer "
            f"than the suite's training sequences ({seq_len})")
    out = StudyOutcome(study.store_path, report=None, n_rows=0,
                       seconds={k: 0.0 for k in ("data", "train", "fp_eval", "quantize", "q_eval", "report")})
    t0 = time.perf_counter()
    streams = streams if streams is not None else load_token_streams(study.data, progress=progress)
    check_eval_windows(len(streams.val), grid.eval_windows, grid.eval_seq_len)  # before hours of training
    out.seconds["data"] = time.perf_counter() - t0

    with Store(study.store_path) as store:
        checkpoints = _train_suite(study, streams, store, out, progress)
        keys = _measure(study, streams, checkpoints, store, out, progress)
        rows = store.qid_rows(keys)

    t0 = time.perf_counter()
    context = {"study": study.name, "suite": study.suite_dir.name, "group size": grid.group_size or "per channel",
               "eval tokens per loss": f"{grid.eval_tokens:,}",
               "calibration": f"{grid.n_calib} x {grid.calib_seq_len} tokens (train split)"}
    out.report = write_qid_report(rows, study.report_dir, study.report, title=f"QiD study '{study.name}'",
                                  context=context)
    out.seconds["report"] = time.perf_counter() - t0
    out.n_rows = len(rows)
    return out


def _train_suite(study: QidStudy, streams, store: Store, out: StudyOutcome, progress: bool) -> dict[str, list]:
    """Train (or resume) each size of the suite; the seconds spent are added to the store per size."""
    checkpoints = {}
    for size in study.suite.sizes:
        t0 = time.perf_counter()
        checkpoints[size] = train(study.suite.train_config(size), streams, study.suite_dir / size, progress=progress)
        elapsed = time.perf_counter() - t0
        store.add_train_seconds(study.name, size, study.suite.base.seed, elapsed)
        out.seconds["train"] += elapsed
    require(any(checkpoints.values()), "the training suite produced no checkpoints")
    return checkpoints


def _measure(study: QidStudy, streams, checkpoints: dict[str, list], store: Store, out: StudyOutcome,
             progress: bool) -> list[CellKey]:
    """Measure every missing cell of every checkpoint, committing each row; returns all the grid's keys."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    grid = study.grid
    checkpoints = {size: [ck for ck in ckpts if ck.tokens >= grid.min_tokens] for size, ckpts in checkpoints.items()}
    windows = eval_windows(streams.val, grid.eval_windows, grid.eval_seq_len)
    calib = calibration_windows(streams.train, grid.n_calib, grid.calib_seq_len, grid.seed)
    eval_hash = config_hash({"suite": study.suite, "tokenizer": streams.tokenizer_hash,
                             "data": streams.data_fingerprint, "split_sizes": [len(streams.train), len(streams.val)],
                             "eval_windows": grid.eval_windows, "eval_seq_len": grid.eval_seq_len})
    cells = [(m, p, grid.ptq_config(m, p)) for m in grid.methods for p in grid.bits]
    cell_hash = {(m, p): config_hash({"eval": eval_hash, "ptq": cfg, "calib_seed": grid.seed}) for m, p, cfg in cells}
    vers, device, keys = versions(), _device(), []

    total = sum(len(c) for c in checkpoints.values()) * len(cells)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  disable=not progress) as bar:
        task = bar.add_task("QiD cells", total=total)
        for size, ckpts in checkpoints.items():
            train_s = store.train_seconds(study.name, size, study.suite.base.seed)
            for ck in ckpts:
                ck_keys = {(m, p): CellKey(study.name, size, int(ck.tokens), m, p, grid.group_size, grid.seed,
                                           cell_hash[(m, p)]) for m, p, _ in cells}
                keys.extend(ck_keys.values())
                todo = [(m, p, cfg) for m, p, cfg in cells if not store.has_qid(ck_keys[(m, p)])]
                out.skipped += len(cells) - len(todo)
                bar.advance(task, len(cells) - len(todo))
                if not todo:
                    continue
                bar.update(task, description=f"{size} D={ck.tokens:,}: full precision")
                model = load_model(ck.path).to(device)
                fp = _full_precision(store, study.name, size, ck, eval_hash, model, windows, grid, out)
                for method, bits, cfg in todo:
                    bar.update(task, description=f"{size} D={ck.tokens:,}: {method} {bits}-bit")
                    seed_everything(grid.seed)
                    qmodel = copy.deepcopy(model)
                    t = time.perf_counter()
                    quantize_model(qmodel, cfg, calib, progress=False)
                    quantize_s = time.perf_counter() - t
                    t = time.perf_counter()
                    res = evaluate(qmodel, windows, batch_size=grid.eval_batch_size)
                    eval_s = time.perf_counter() - t
                    del qmodel
                    store.add_qid(QidRow(
                        key=ck_keys[(method, bits)], N=fp.N, N_total=fp.N_total, loss_fp=fp.loss_fp,
                        loss_q=res.loss, qid_se=paired_se(fp.per_window, res.per_window), eval_tokens=res.n_tokens,
                        versions=vers, train_s=train_s, quantize_s=quantize_s, eval_s=eval_s,
                    ))
                    out.seconds["quantize"] += quantize_s
                    out.seconds["q_eval"] += eval_s
                    out.computed += 1
                    bar.advance(task)
                del model
    return keys


def _full_precision(store: Store, run: str, size: str, ck, eval_hash: str, model, windows, grid: QidGrid,
                    out: StudyOutcome) -> CheckpointEval:
    """The checkpoint's full-precision loss on the study windows: from the store, or measured and stored."""
    fp = store.get_checkpoint(run, size, int(ck.tokens), grid.seed, eval_hash)
    if fp is not None:
        return fp
    t = time.perf_counter()
    res = evaluate(model, windows, batch_size=grid.eval_batch_size)
    eval_s = time.perf_counter() - t
    out.seconds["fp_eval"] += eval_s
    pc = count_params(model)
    fp = CheckpointEval(run, size, int(ck.tokens), grid.seed, eval_hash, pc.non_embedding, pc.total, res.loss,
                        res.per_window, res.n_tokens, eval_s, str(ck.path))
    store.add_checkpoint(fp)
    return fp
