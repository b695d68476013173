"""The one study runner: skip stored cells, run the rest on an executor, commit each row as it arrives,
time phases, draw a progress bar, then write the definition's report from the store."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from qscale.study.core import Store, StudyDefinition, Task, topological
from qscale.study.executor import Executor, LocalExecutor, result_rows


@dataclass
class Outcome:
    """What a run did: row tasks computed and skipped (in all and per table of their first key), tasks run,
    seconds per phase, the report."""

    computed: int = 0
    skipped: int = 0
    failed: int = 0  # tasks recorded in the store's task_failures (retried by the next run)
    tasks_run: int = 0
    by_table: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    report: Any = None


def plan(tasks: list[Task], store: Store) -> tuple[list[Task], dict[str, Any], list[Task]]:
    """(tasks to run in order, stored values their dependencies need, the stored row tasks).

    A row task runs unless all its keys are stored; a task without keys runs only if a task that runs
    depends on it; a stored dependency hands on its stored record instead of running.
    """
    ordered = topological(tasks)
    by_id = {t.id: t for t in ordered}
    stored = {t.id for t in ordered if t.keys and all(store.has(k) for k in t.keys)}
    needed: set[str] = set()

    def need(t: Task) -> None:
        if t.id in needed or t.id in stored:
            return
        needed.add(t.id)
        for d in t.deps:
            need(by_id[d])

    for t in ordered:
        if t.keys:
            need(t)
    inputs = {d: store.get(by_id[d].keys[0]) for t in needed for d in by_id[t].deps if d in stored}
    return [t for t in ordered if t.id in needed], inputs, [t for t in ordered if t.id in stored]


def run_study(study: StudyDefinition, store: Store, executor: Executor | None = None, progress: bool = True) -> Outcome:
    """Run (or resume) ``study`` against ``store`` and write its report; returns counts and timings."""
    out = Outcome()
    store.create(study.tables())
    t0 = time.perf_counter()
    tasks = study.tasks()
    todo, inputs, stored = plan(tasks, store)
    for t in tasks:
        if t.keys:
            out.by_table.setdefault(t.keys[0].table, {"computed": 0, "skipped": 0})
    for t in stored:
        out.by_table[t.keys[0].table]["skipped"] += 1
    out.skipped = len(stored)
    out.seconds["plan"] += time.perf_counter() - t0
    n_rows = sum(1 for t in tasks if t.keys)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), disable=not progress
    ) as bar:
        task_id = bar.add_task(f"{study.name} cells", total=n_rows, completed=out.skipped)

        def on_start(task: Task) -> None:
            bar.update(task_id, description=task.label or task.id)
            if task.own_progress and progress:
                bar.stop()

        def on_done(task: Task, result: Any, seconds: float) -> None:
            if task.own_progress and progress:
                bar.start()
            out.seconds[task.phase] += seconds
            out.tasks_run += 1
            if task.keys:
                store.add_many(result_rows(task, result))
                out.computed += 1
                out.by_table[task.keys[0].table]["computed"] += 1
                bar.advance(task_id)
            if task.id in failed_before:
                store.clear_failure(task.id)

        def on_failed(task: Task, error: str, attempts: int) -> None:
            store.record_failure(task.id, task.label or task.id, error, attempts)
            out.failed += 1

        failed_before = {f["task_id"] for f in store.failures()}
        (executor or LocalExecutor()).run(todo, inputs, on_done, on_start, on_failed)
    t0 = time.perf_counter()
    out.report = study.report(store)
    out.seconds["report"] += time.perf_counter() - t0
    out.seconds = dict(out.seconds)
    return out
