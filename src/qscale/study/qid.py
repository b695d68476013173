"""The QiD study as a definition on the study core (Ouyang et al. 2024, arXiv 2411.17691; SPEC §1 protocol).

Suite -> checkpoints -> for each checkpoint its full-precision loss once on fixed held-out windows ->
for each PTQ method and bit width a quantized copy on the SAME windows (calibration from the TRAIN
split, fixed seed) -> QiD = loss_q - loss_fp with its paired SE -> fit and report. The suite is either
the built-in one (trained here, one task per size that its checkpoints' cells depend on) or the user's
own checkpoints (:mod:`qscale.study.checkpoints`: any HF causal-LM folders, each with its own tokenizer).
Everything resumes: a stored cell is skipped, each row is committed as soon as it is measured.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from qscale.data import DataConfig, TokenStreams, load_token_streams
from qscale.data.batches import calibration_windows, eval_windows
from qscale.errors import require
from qscale.provenance import config_hash
from qscale.report.qid import Report, ReportConfig, write_qid_report
from qscale.study.backends import open_store, study_lock
from qscale.study.checkpoints import SuiteCheckpoint, discover
from qscale.study.core import CellKey, Store, Task
from qscale.study.executor import Executor
from qscale.study.grid import QidGrid, get_preset
from qscale.study.qid_cells import TABLES, eval_checkpoint, quantize_cell, train_size
from qscale.study.runner import run_study
from qscale.train.checkpoint import checkpoint_dir
from qscale.train.suite import SUITE_PRESETS, SuiteConfig

DEFAULT_ROOT = Path("qscale-runs")


@dataclass(frozen=True)
class QidStudy:
    """Everything a QiD study needs: data, suite (built-in or the user's checkpoints), grid, report, folder.

    ``checkpoints`` set: the user's suite (``suite`` unused); held-out text from ``data.data`` tokenized with
    each checkpoint's own tokenizer, calibration text from ``calib_data`` (default: ``data.data``).
    """

    name: str
    data: DataConfig
    suite: SuiteConfig
    grid: QidGrid
    report: ReportConfig
    out_dir: Path
    checkpoints: tuple[SuiteCheckpoint, ...] | None = None
    calib_data: Path | None = None
    source: str = ""

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
    """What a run did: cells computed and skipped, seconds per phase, the report written."""

    store_path: Path
    report: Report | None
    n_rows: int
    computed: int = 0
    skipped: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


def build_study(
    preset: str,
    out: Path | None = None,
    data: Path | None = None,
    tokenizer: Path | None = None,
    seed: int = 0,
    thresholds: tuple[float, ...] | None = None,
    checkpoints: str | None = None,
    tokens_per_step: int | None = None,
    calib_data: Path | None = None,
    target: tuple[float, float, float] | None = None,
    **grid_overrides,
) -> QidStudy:
    """A :class:`QidStudy` from a named preset and the user's overrides (CLI edge; all validated here).

    ``grid_overrides`` are :class:`QidGrid` fields. The default folder is ``./qscale-runs/qid-<preset>``
    (``qid-<name of the checkpoints path>`` for a user suite).
    """
    p = get_preset(preset)
    unknown = set(grid_overrides) - {f.name for f in dataclasses.fields(QidGrid)}
    require(not unknown, f"unknown study grid option(s): {', '.join(sorted(unknown))}")
    grid = dataclasses.replace(p.grid, seed=seed, **grid_overrides)
    report = dataclasses.replace(
        p.report, thresholds=tuple(thresholds) if thresholds else p.report.thresholds, seed=seed, target=target
    )
    suite = SUITE_PRESETS[p.suite]
    suite = dataclasses.replace(suite, base=dataclasses.replace(suite.base, seed=seed))
    data_cfg = DataConfig(
        data=data, tokenizer=tokenizer, vocab_size=p.vocab_size, max_files=p.max_files if data is None else None
    )
    if checkpoints is None:
        require(
            tokens_per_step is None and calib_data is None,
            "--tokens-per-step and --calib-data apply to a suite given with --checkpoints",
        )
        return QidStudy(preset, data_cfg, suite, grid, report, Path(out) if out else DEFAULT_ROOT / f"qid-{preset}")
    require(tokenizer is None, "--tokenizer does not apply with --checkpoints: each checkpoint's own is used")
    found = discover(checkpoints, tokens_per_step)
    name = Path(str(checkpoints).rstrip("/*")).stem or "checkpoints"
    return QidStudy(
        name,
        data_cfg,
        suite,
        grid,
        report,
        Path(out) if out else DEFAULT_ROOT / f"qid-{name}",
        checkpoints=found,
        calib_data=calib_data,
        source=str(checkpoints),
    )


@dataclass
class _Inputs:
    """Held-out and calibration windows of one tokenizer, and the hash of what they were made from."""

    windows: object
    calib: object
    eval_hash: str
    calib_hash: str


class QidDefinition:
    """The QiD study on the core: tables, tasks (train sizes, fp evaluations, quantized cells), report."""

    def __init__(self, study: QidStudy, streams: TokenStreams | None = None, progress: bool = True):
        self.study, self.streams, self.progress = study, streams, progress
        self.name = f"QiD {study.name}"
        self.keys: list[CellKey] = []
        self._tasks: list[Task] | None = None

    def tables(self):
        return TABLES

    def _inputs(self, streams: TokenStreams, calib_streams: TokenStreams, extra: dict) -> _Inputs:
        g = self.study.grid
        eval_hash = config_hash(
            {
                **extra,
                "tokenizer": streams.tokenizer_hash,
                "data": streams.data_fingerprint,
                "split_sizes": [len(streams.train), len(streams.val)],
                "eval_windows": g.eval_windows,
                "eval_seq_len": g.eval_seq_len,
            }
        )
        calib_hash = config_hash(
            {
                "data": calib_streams.data_fingerprint,
                "train": len(calib_streams.train),
                "tokenizer": calib_streams.tokenizer_hash,
            }
        )
        return _Inputs(
            eval_windows(streams.val, g.eval_windows, g.eval_seq_len),
            calibration_windows(calib_streams.train, g.n_calib, g.calib_seq_len, g.seed),
            eval_hash,
            calib_hash,
        )

    def _cells(self, size: str, D: int, path: str, inp: _Inputs, N: int | None, train: Task | None) -> list[Task]:
        """The fp evaluation of one checkpoint and its quantized cells (after ``train``, if any)."""
        g, run = self.study.grid, self.study.name
        after = (train.id,) if train else ()
        fp_key = CellKey.make("qid_fp", {"eval": inp.eval_hash, "N": N}, run=run, model=size, D=D, seed=g.seed)
        fp = Task(
            f"fp:{size}:{D}",
            eval_checkpoint,
            (path, inp.windows, g.eval_batch_size, fp_key, N),
            deps=after,
            keys=(fp_key,),
            phase="fp_eval",
            label=f"{size} D={D:,}: full precision",
        )
        out = [fp]
        for method in g.methods:
            for bits in g.bits:
                cfg = g.ptq_config(method, bits)
                key = CellKey.make(
                    "qid",
                    {"eval": inp.eval_hash, "ptq": cfg, "calib": inp.calib_hash, "calib_seed": g.seed, "N": N},
                    run=run,
                    model=size,
                    D=D,
                    method=method,
                    P=bits,
                    G=g.group_size,
                    seed=g.seed,
                )
                self.keys.append(key)
                out.append(
                    Task(
                        f"q:{size}:{D}:{method}:{bits}",
                        quantize_cell,
                        (path, cfg, inp.calib, inp.windows, g.eval_batch_size, g.seed, key),
                        deps=(fp.id, *after),
                        keys=(key,),
                        phase="quantize",
                        label=f"{size} D={D:,}: {method} {bits}-bit",
                    )
                )
        return out

    def tasks(self) -> list[Task]:
        """Every task of the study (built once: loads the data and checks the grid against it)."""
        if self._tasks is None:
            self.keys = []
            self._tasks = self._suite_tasks() if self.study.checkpoints is None else self._checkpoint_tasks()
        return self._tasks

    def _suite_tasks(self) -> list[Task]:
        s, g = self.study, self.study.grid
        seq_len = s.suite.base.seq_len
        require(
            g.eval_seq_len <= seq_len and g.calib_seq_len <= seq_len,
            f"evaluation ({g.eval_seq_len}) and calibration ({g.calib_seq_len}) windows must not be longer "
            f"than the suite's training sequences ({seq_len})",
        )
        if self.streams is None:
            self.streams = load_token_streams(s.data, progress=self.progress)
        inp = self._inputs(self.streams, self.streams, {"suite": s.suite})
        tasks = []
        for size in s.suite.sizes:
            cfg = s.suite.train_config(size)
            folder = s.suite_dir / size
            key = CellKey.make(
                "qid_train",
                {"train": cfg, "tokenizer": self.streams.tokenizer_hash, "data": self.streams.data_fingerprint},
                run=s.name,
                model=size,
                seed=cfg.seed,
            )
            train = Task(
                f"train:{size}",
                train_size,
                (cfg, self.streams, str(folder), key, self.progress),
                keys=(key,),
                phase="train",
                label=f"train {size}",
                own_progress=self.progress,
            )
            tasks.append(train)
            for step in cfg.checkpoint_steps():
                D = step * cfg.tokens_per_step
                if D >= g.min_tokens:
                    tasks += self._cells(size, D, str(checkpoint_dir(folder, step)), inp, None, train)
        return tasks

    def _checkpoint_tasks(self) -> list[Task]:
        s, g = self.study, self.study.grid
        by_tok: dict[str, _Inputs] = {}
        tasks = []
        for ck in s.checkpoints:
            if ck.D < max(1, g.min_tokens):  # step0 (untrained, D = 0) has no place on a log-D law
                continue
            if ck.tokenizer not in by_tok:
                cfg = dataclasses.replace(s.data, tokenizer=Path(ck.tokenizer))
                streams = load_token_streams(cfg, progress=self.progress)
                calib = (
                    streams
                    if s.calib_data is None
                    else load_token_streams(
                        dataclasses.replace(cfg, data=s.calib_data, max_files=None), progress=self.progress
                    )
                )
                by_tok[ck.tokenizer] = self._inputs(streams, calib, {})
            inp = by_tok[ck.tokenizer]
            inp_ck = dataclasses.replace(inp, eval_hash=config_hash({"eval": inp.eval_hash, "path": ck.path}))
            tasks += self._cells(ck.size, ck.D, ck.path, inp_ck, ck.N, None)
        require(tasks, f"every checkpoint has fewer training tokens than the preset's minimum ({g.min_tokens:,})")
        return tasks

    def context(self) -> dict:
        s, g = self.study, self.study.grid
        suite = (
            s.suite_dir.name
            if s.checkpoints is None
            else f"{len(s.checkpoints)} checkpoints of {len({c.size for c in s.checkpoints})} sizes from {s.source}"
        )
        return {
            "study": s.name,
            "suite": suite,
            "group size": g.group_size or "per channel",
            "eval tokens per loss": f"{g.eval_tokens:,}",
            "calibration": f"{g.n_calib} x {g.calib_seq_len} tokens (train split"
            f"{' of ' + str(s.calib_data) if s.calib_data else ''})",
        }

    def rows(self, store: Store) -> list[dict]:
        return [r for k in self.keys if (r := store.get(k)) is not None]

    def report(self, store: Store) -> Report:
        return write_qid_report(
            self.rows(store),
            self.study.report_dir,
            self.study.report,
            title=f"QiD study '{self.study.name}'",
            context=self.context(),
        )


def run_qid_study(
    study: QidStudy,
    progress: bool = True,
    streams: TokenStreams | None = None,
    executor: Executor | None = None,
    store: Store | None = None,
    db: str | None = None,
) -> StudyOutcome:
    """Run (or resume) the study and write its report; returns counts and per-phase timings.

    ``executor``: where the tasks run (default in process); ``store``: where rows go (a given store is left
    open), else the store ``db`` names (``open_store``: a SQLite path or a postgresql:// URL; default
    ``study.store_path``, SQLite). The study folder is locked meanwhile (one study per folder).
    """
    study.grid.check_methods()
    definition = QidDefinition(study, streams, progress)
    definition.tasks()  # every check before the store is created
    with (
        study_lock(study.out_dir),
        contextlib.nullcontext(store) if store is not None else open_store(db or study.store_path) as target,
    ):
        res = run_study(definition, target, executor, progress=progress)
        n_rows = len(definition.rows(target))
    cells = res.by_table.get("qid", {"computed": 0, "skipped": 0})
    return StudyOutcome(study.store_path, res.report, n_rows, cells["computed"], cells["skipped"], res.seconds)
