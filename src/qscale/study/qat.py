"""The QAT study as a definition on the study core (Chen et al. 2025, arXiv 2505.14302; SPEC §2).

1. Grid: for every (N, D) one task trains the full-precision model; each scheme (W4A4, W4A16, W16A4) and
   group size G is one task that trains a QAT model from scratch through the same code path and depends
   on it (δ = loss_QAT − loss_fp on the same windows, plus the smoothed final training-loss δ).
   ``-fc2a8`` schemes re-run W4A4 / W16A4 with the FC2 input at 8 bits; W8A8 is the training-noise control.
2. Attribution: input statistics of every linear layer of the fp, W16A4 and W4A4 models of one cell.
3. QAT vs PTQ on the final checkpoints of a suite: the QiD study's (re-used when complete, else trained;
   one task per size that the comparison jobs depend on) or the user's own (``--checkpoints``).
4. Report (:mod:`qscale.report.qat`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

from qscale.data import DataConfig, TokenStreams, load_token_streams
from qscale.data.batches import calibration_windows, eval_windows
from qscale.errors import require
from qscale.provenance import config_hash
from qscale.report.qat import write_qat_report
from qscale.study.backends import open_store, study_lock
from qscale.study.checkpoints import SuiteCheckpoint, discover
from qscale.study.core import CellKey, Store, Task
from qscale.study.executor import Executor
from qscale.study.grid import get_preset as get_qid_preset
from qscale.study.qat_cells import TABLES, compare_job, fp_cell, qat_cell, suite_checkpoint, user_checkpoint
from qscale.study.qat_grid import CONTROL, PtqCompare, QatGrid, get_qat_preset
from qscale.study.qid_cells import device
from qscale.study.runner import run_study
from qscale.train.suite import SUITE_PRESETS

DEFAULT_ROOT = Path("qscale-runs")


@dataclass(frozen=True)
class QatStudy:
    """Everything a QAT study needs; ``qid_dir`` is where a QiD study may have left its suite.

    ``data`` feeds the grid; ``compare_data`` the QAT-vs-PTQ part (the QiD preset's data settings, so that the
    QiD study's checkpoints and tokenizer are re-used). ``checkpoints``: the user's suite for that part.
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
    checkpoints: tuple[SuiteCheckpoint, ...] | None = None

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
    seconds: dict[str, float] = field(default_factory=dict)


def build_qat_study(
    preset: str,
    out: Path | None = None,
    data: Path | None = None,
    tokenizer: Path | None = None,
    seed: int = 0,
    recipes: tuple[str, ...] | None = None,
    sizes: tuple[str, ...] | None = None,
    steps: tuple[int, ...] | None = None,
    groups: tuple[int, ...] | None = None,
    compare: bool = True,
    qid_dir: Path | None = None,
    checkpoints: str | None = None,
    tokens_per_step: int | None = None,
) -> QatStudy:
    """A :class:`QatStudy` from a named preset and the user's overrides (validated by the dataclasses).

    The default folder is ``./qscale-runs/qat-<preset>``; the QiD suite is looked for in
    ``./qscale-runs/qid-<suite>`` (the QiD study's default folder) unless ``checkpoints`` names the user's.
    """
    p = get_qat_preset(preset)
    g = p.grid
    sizes, steps, groups = tuple(sizes or g.sizes), tuple(steps or g.steps), tuple(groups or g.groups)
    a_size, a_steps, a_group = g.attribution  # kept when still in the grid, else the largest size / D, first G
    grid = dataclasses.replace(
        g,
        seed=seed,
        sizes=sizes,
        steps=steps,
        groups=groups,
        fc2_steps=tuple(s for s in g.fc2_steps if s in steps) or (max(steps),),
        attribution=(
            a_size if a_size in sizes else sizes[-1],
            a_steps if a_steps in steps else max(steps),
            a_group if a_group in groups else groups[0],
        ),
    )
    cmp = None
    if compare and p.compare is not None:
        cmp = dataclasses.replace(p.compare, recipes=tuple(recipes)) if recipes else p.compare
    require(checkpoints is None or cmp is not None, "--checkpoints is for the QAT-vs-PTQ part: drop --no-compare")
    require(checkpoints is not None or tokens_per_step is None, "--tokens-per-step applies with --checkpoints")
    found = discover(checkpoints, tokens_per_step) if checkpoints is not None else None
    data_cfg = DataConfig(
        data=data, tokenizer=tokenizer, vocab_size=p.vocab_size, max_files=p.max_files if data is None else None
    )
    suite = cmp.suite if cmp is not None else preset
    qid = get_qid_preset(suite)
    compare_data = DataConfig(
        data=data, tokenizer=tokenizer, vocab_size=qid.vocab_size, max_files=qid.max_files if data is None else None
    )
    return QatStudy(
        name=preset,
        data=data_cfg,
        compare_data=compare_data,
        grid=grid,
        compare=cmp,
        out_dir=Path(out) if out is not None else DEFAULT_ROOT / f"qat-{preset}",
        qid_dir=Path(qid_dir) if qid_dir is not None else DEFAULT_ROOT / f"qid-{suite}",
        seed=seed,
        n_boot=p.n_boot,
        checkpoints=found,
    )


class QatDefinition:
    """The QAT study on the core: grid cells, attribution, QAT-vs-PTQ jobs and the report."""

    def __init__(
        self,
        study: QatStudy,
        streams: TokenStreams | None = None,
        compare_streams: TokenStreams | None = None,
        progress: bool = True,
    ):
        self.study, self.streams, self.compare_streams, self.progress = study, streams, compare_streams, progress
        self.name = f"QAT {study.name}"
        self.grid_where: dict = {}
        self.ptq_where: list[dict] = []
        self._tasks: list[Task] | None = None

    def tables(self):
        return TABLES

    def tasks(self) -> list[Task]:
        """Every task of the study (built once: loads the data and checks the grid against it)."""
        if self._tasks is None:
            if self.streams is None:
                self.streams = load_token_streams(self.study.data, progress=self.progress)
            self._tasks = self._grid_tasks() + (self._compare_tasks() if self.study.compare is not None else [])
        return self._tasks

    def _grid_tasks(self) -> list[Task]:
        s, g, streams = self.study, self.study.grid, self.streams
        windows = eval_windows(streams.val, g.eval_windows, g.seq_len)
        chash = config_hash(
            {
                "kind": "qat-grid",
                "tokenizer": streams.tokenizer_hash,
                "data": streams.data_fingerprint,
                "split_sizes": [len(streams.train), len(streams.val)],
                "vocab": streams.vocab_size,
                **{
                    k: getattr(g, k)
                    for k in ("batch_size", "seq_len", "lr", "warmup_steps", "weight_decay", "eval_windows")
                },
            }
        )
        self.grid_where = {"run": s.name, "seed": g.seed, "config_hash": chash}
        a_size, a_steps, a_group = g.attribution
        data = (streams.vocab_size, streams.train, windows)
        tasks = []
        for size in g.sizes:
            for steps in g.steps:
                D, is_attr = g.tokens(steps), (size, steps) == (a_size, a_steps)
                fp_key = CellKey.make("qat_fp", run=s.name, model=size, D=D, seed=g.seed, config_hash=chash)
                attr = CellKey.make("qat_attr", **fp_key.as_dict(), scheme="fp", G=a_group) if is_attr else None
                fp = Task(
                    f"fp:{size}:{D}",
                    fp_cell,
                    (g, size, steps, *data, fp_key, attr),
                    keys=(fp_key, *((attr,) if attr else ())),
                    phase="fp_train",
                    label=f"{size} D={D:,}: fp",
                )
                tasks.append(fp)
                schemes = (*g.schemes, *(g.fc2_schemes() if steps in g.fc2_steps else ()))
                cells = [(sc, G) for sc in schemes for G in g.groups] + ([(CONTROL, g.groups[0])] if g.control else [])
                for scheme, G in cells:
                    key = CellKey.make(
                        "qat", run=s.name, model=size, D=D, scheme=scheme, G=G, seed=g.seed, config_hash=chash
                    )
                    attr = (
                        CellKey.make("qat_attr", **key.as_dict())
                        if is_attr and G == a_group and scheme in ("W16A4", "W4A4")
                        else None
                    )
                    tasks.append(
                        Task(
                            f"qat:{size}:{D}:{scheme}:{G}",
                            qat_cell,
                            (g, size, steps, scheme, *data, key, attr),
                            deps=(fp.id,),
                            keys=(key, *((attr,) if attr else ())),
                            phase="qat_train",
                            label=f"{size} D={D:,}: {scheme} G={G or 'ch'}",
                        )
                    )
        return tasks

    def _compare_tasks(self) -> list[Task]:
        s, c = self.study, self.study.compare
        jobs = [
            ("checkpoint", "W16A16"),
            ("gptq", "W4A16"),
            ("fp-finetune", "W16A16"),
            *((r, sc) for r in c.recipes for sc in c.schemes),
        ]
        if s.checkpoints is None:
            suite = SUITE_PRESETS[c.suite]
            suite = dataclasses.replace(suite, base=dataclasses.replace(suite.base, seed=s.seed))
            if self.compare_streams is None:
                self.compare_streams = (
                    self.streams
                    if s.compare_data == s.data
                    else load_token_streams(s.compare_data, progress=self.progress)
                )
            finals = [
                (
                    size,
                    suite.train_config(size).total_steps * suite.train_config(size).tokens_per_step,
                    self.compare_streams,
                    Task(
                        f"ckpt:{size}",
                        suite_checkpoint,
                        (str(s.qid_dir), str(s.out_dir), suite, size, self.compare_streams),
                        phase="suite_train",
                        label=f"QAT vs PTQ {size}: checkpoint",
                    ),
                )
                for size in c.sizes
            ]
            extra = {"suite": suite}
        else:
            last = {}
            for ck in s.checkpoints:
                last[ck.size] = ck if ck.size not in last or ck.D > last[ck.size].D else last[ck.size]
            by_tok: dict[str, TokenStreams] = {}
            finals = []
            for size, ck in last.items():
                if ck.tokenizer not in by_tok:
                    by_tok[ck.tokenizer] = load_token_streams(
                        dataclasses.replace(s.compare_data, tokenizer=Path(ck.tokenizer)), progress=self.progress
                    )
                finals.append((size, ck.D, by_tok[ck.tokenizer], Task(f"ckpt:{size}", user_checkpoint, (ck,))))
            extra = {"checkpoints": {size: ck.path for size, ck in last.items()}}
        tasks, self.ptq_where = [], []
        for size, D, streams, ck_task in finals:
            windows = eval_windows(streams.val, c.eval_windows, c.seq_len)
            calib = calibration_windows(streams.train, c.n_calib, c.calib_seq_len, s.seed)
            chash = config_hash(
                {
                    "kind": "qat-vs-ptq",
                    "compare": c,
                    **extra,
                    "tokenizer": streams.tokenizer_hash,
                    "split_sizes": [len(streams.train), len(streams.val)],
                }
            )
            where = {"run": s.name, "model": size, "D": D, "seed": s.seed, "config_hash": chash}
            self.ptq_where.append(where)
            tasks.append(ck_task)
            for method, scheme in jobs:
                key = CellKey.make("qat_ptq", **where, method=method, scheme=scheme)
                tasks.append(
                    Task(
                        f"ptq:{size}:{method}:{scheme}",
                        compare_job,
                        (c, method, scheme, windows, calib, streams.train, s.seed, key),
                        deps=(ck_task.id,),
                        keys=(key,),
                        phase="compare",
                        label=f"QAT vs PTQ {size}: {method} {scheme}",
                    )
                )
        return tasks

    def context(self) -> dict:
        s, g = self.study, self.study.grid
        ctx = {
            "study": s.name,
            "vocab": s.data.vocab_size,
            "sizes": ", ".join(g.sizes),
            "D (tokens)": ", ".join(f"{g.tokens(x):,}" for x in g.steps),
            "G": ", ".join(str(x) if x else "per channel" for x in g.groups),
            "batch": f"{g.batch_size} x {g.seq_len}",
            "eval tokens per loss": f"{g.eval_windows * g.seq_len:,}",
            "seed": s.seed,
            "device": device().type,
        }
        if s.compare is not None:
            c = s.compare
            suite = (
                f"suite '{c.suite}' (vocab {s.compare_data.vocab_size})"
                if s.checkpoints is None
                else f"{len({ck.size for ck in s.checkpoints})} sizes of the user's checkpoints"
            )
            ctx["QAT vs PTQ"] = f"{suite}, {c.steps} fine-tune steps of {c.batch_size} x {c.seq_len}, lr {c.lr:g}"
        return ctx

    def report(self, store: Store):
        g = self.study.grid
        w = self.grid_where
        ptq = [r for where in self.ptq_where for r in store.rows("qat_ptq", where)]
        attr = store.rows("qat_attr", {**w, "model": g.attribution[0], "D": g.tokens(g.attribution[1])})
        return write_qat_report(
            store.rows("qat", w),
            store.rows("qat_fp", w),
            attr,
            ptq,
            self.study.report_dir,
            n_boot=self.study.n_boot,
            seed=self.study.seed,
            title=f"QAT study '{self.study.name}'",
            context=self.context(),
        )


def run_qat_study(
    study: QatStudy,
    progress: bool = True,
    streams: TokenStreams | None = None,
    compare_streams: TokenStreams | None = None,
    executor: Executor | None = None,
    store: Store | None = None,
    db: str | None = None,
) -> QatOutcome:
    """Run (or resume) the study and write its report; returns counts and per-phase timings.

    ``streams`` / ``compare_streams``: already loaded data for the grid / the comparison (loaded from the
    study's data configs when None; the comparison re-uses the grid's when the configs are equal).
    ``executor``: where the tasks run (default in process); ``store``: where rows go (default
    ``study.store_path``, SQLite; a given store is left open).
    """
    t0 = time.perf_counter()
    definition = QatDefinition(study, streams, compare_streams, progress)
    definition.tasks()  # every check before the store is created
    with (
        study_lock(study.out_dir),
        contextlib.nullcontext(store) if store is not None else open_store(db or study.store_path) as target,
    ):
        res = run_study(definition, target, executor, progress=progress)
    seconds = {"total": time.perf_counter() - t0, **res.seconds}
    return QatOutcome(study.store_path, res.report, res.computed, res.skipped, seconds)
