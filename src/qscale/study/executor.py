"""Executors: where a study's tasks run.

An executor receives picklable :class:`~qscale.study.core.Task` objects (a module-level function and its
arguments) in dependency order and reports each result back to the caller's process, where the runner
commits its rows. :class:`LocalExecutor` runs them one after another in this process; the cluster executor
(:class:`qscale.study.ray_executor.RayExecutor`) ships ``task.fn`` and ``task.args`` to workers, passes
the results of ``task.deps`` as extra arguments and calls ``on_done`` as results arrive.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from qscale.errors import QscaleError
from qscale.study.core import Row, Task

OnStart = Callable[[Task], None]
OnDone = Callable[[Task, Any, float], None]
OnFailed = Callable[[Task, str, int], None]  # (task, error, attempts)


def result_rows(task: Task, result: Any) -> list[Row]:
    """The rows a row task returned (one :class:`Row` or a list); an error if it returned none."""
    rows = [result] if isinstance(result, Row) else list(result or ())
    if not rows or not all(isinstance(r, Row) for r in rows):
        raise QscaleError(f"task {task.id!r} must return its rows, got {type(result).__name__}")
    return rows


def dependency_value(task: Task, result: Any) -> Any:
    """What dependents of ``task`` receive: the record (key and values) of its first row, or its result."""
    if not task.keys:
        return result
    row = result_rows(task, result)[0]
    return {**row.key.as_dict(), **row.record()}


class Executor(ABC):
    """Runs tasks and reports each result (with the seconds it took) back to the caller."""

    @abstractmethod
    def run(
        self,
        tasks: Sequence[Task],
        inputs: Mapping[str, Any],
        on_done: OnDone,
        on_start: OnStart | None = None,
        on_failed: OnFailed | None = None,
    ) -> None:
        """Run ``tasks`` (dependencies first). ``inputs`` holds the values of dependencies that are not in
        ``tasks`` (already stored); ``on_done(task, result, seconds)`` is called in this process as each
        task finishes, so rows are committed one by one. A task that raises stops the run, unless the
        executor retries tasks (Ray): then a task that still fails after its retries, and every task that
        depends on it, is reported to ``on_failed(task, error, attempts)`` and the others go on."""


class LocalExecutor(Executor):
    """In process, one task at a time, in the given order (deterministic on CPU)."""

    def run(
        self,
        tasks: Sequence[Task],
        inputs: Mapping[str, Any],
        on_done: OnDone,
        on_start: OnStart | None = None,
        on_failed: OnFailed | None = None,
    ) -> None:
        values = dict(inputs)
        for task in tasks:
            if on_start is not None:
                on_start(task)
            missing = [d for d in task.deps if d not in values]
            if missing:
                raise QscaleError(f"task {task.id!r} runs before its dependencies {', '.join(missing)}")
            t0 = time.perf_counter()
            result = task.fn(*task.args, *(values[d] for d in task.deps))
            seconds = time.perf_counter() - t0
            values[task.id] = dependency_value(task, result)
            on_done(task, result, seconds)
