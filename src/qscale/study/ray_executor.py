"""Running a study's tasks on Ray (``--executor ray [--address auto|HOST:PORT]``; extra ``ray``).

Each task is one Ray task reserving its ``cpus``/``gpus``. Dependencies are Ray's own: a task that needs a
trained suite size gets that size's ObjectRef as an argument, so Ray starts it only when the training has
finished (no polling), on whichever node has the resources. Results come back to this (driver) process as
they finish, in completion order, and the runner commits their rows at once, so a worker, node or driver
dying loses no finished row, and a re-run skips what is stored. A task that raises or whose worker dies is
retried by Ray up to ``retries`` times; after that it, and every task depending on it, is reported failed
with its error (the runner records it in the store's ``task_failures``), and the rest of the study goes on.

Same numbers as the local executor: Ray starts workers with ``OMP_NUM_THREADS`` = the task's CPUs (1), while
the driver's torch uses every core, and a different thread count splits reductions differently (GPTQ on a
d=512 model: logits differ by 0.03 between 1 and 2 threads). Each task therefore runs with the driver's torch
thread count (``threads``), so a study on a local Ray gives the local executor's rows bit for bit; on a
cluster, pass ``threads`` = the CPUs each task reserves to avoid oversubscribing a node (rows then equal a
local run with that many threads).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from qscale.errors import QscaleError, require
from qscale.study.core import Task
from qscale.study.executor import Executor, OnDone, OnFailed, OnStart, dependency_value

try:
    import ray
    from ray.exceptions import RayError
except ImportError:  # optional extra
    ray = None


def _run(task: Task, threads: int, *deps: tuple[Any, Any, float]) -> tuple[Any, Any, float]:
    """On a worker: ``(result, value for dependents, seconds)`` of ``task`` given its dependencies' triples,
    computed with ``threads`` torch threads (the driver's: the same reduction order, the same numbers)."""
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    result = task.fn(*task.args, *(d[1] for d in deps))
    return result, dependency_value(task, result), time.perf_counter() - t0


def _error(e: BaseException) -> str:
    """A failure's message: the task's own exception (last line of its traceback) where Ray wrapped one."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException):
        return "".join(traceback.format_exception_only(type(cause), cause)).strip()
    return f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}".strip()


class RayExecutor(Executor):
    """Tasks on Ray: ``address`` None (or ``local``) follows ``ray.init()``: the cluster this host belongs to
    (``RAY_ADDRESS``, the latest ``ray start``) else a new local one; ``auto`` joins an existing cluster only,
    ``HOST:PORT`` that cluster. Connects on first use unless Ray is already initialized in this process. Each
    task reserves its own ``cpus``/``gpus``, at least ``gpus_per_task`` GPUs, and runs with ``threads`` torch
    threads (default: the driver's ``torch.get_num_threads()`` when :meth:`run` starts)."""

    def __init__(
        self, address: str | None = None, retries: int = 2, gpus_per_task: float = 0.0, threads: int | None = None
    ):
        if ray is None:
            raise QscaleError("--executor ray needs Ray: pip install 'qscale[ray]'")
        require(retries >= 0, f"retries must be >= 0, got {retries}")
        require(threads is None or threads >= 1, f"threads must be >= 1, got {threads}")
        self.address, self.retries, self.gpus_per_task, self.threads = address, retries, gpus_per_task, threads

    def _connect(self) -> None:
        if ray.is_initialized():
            return
        try:
            ray.init(address=None if self.address in (None, "local") else self.address, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise QscaleError(
                f"cannot connect to the Ray cluster at {self.address or '(ray.init default)'}: {str(e).splitlines()[0]}"
            ) from e

    def run(
        self,
        tasks: Sequence[Task],
        inputs: Mapping[str, Any],
        on_done: OnDone,
        on_start: OnStart | None = None,
        on_failed: OnFailed | None = None,
    ) -> None:
        self._connect()
        remote = ray.remote(_run)
        threads = self.threads or torch.get_num_threads()
        refs: dict[str, Any] = {}
        owner: dict[Any, Task] = {}
        for task in tasks:  # dependency order: every dependency already has a ref or a stored value
            missing = [d for d in task.deps if d not in refs and d not in inputs]
            if missing:
                raise QscaleError(f"task {task.id!r} runs before its dependencies {', '.join(missing)}")
            deps = [refs[d] if d in refs else (None, inputs[d], 0.0) for d in task.deps]
            ref = remote.options(
                num_cpus=task.cpus,
                num_gpus=max(task.gpus, self.gpus_per_task),
                max_retries=self.retries,
                retry_exceptions=True,
                name=task.label or task.id,
            ).remote(task, threads, *deps)
            refs[task.id], owner[ref] = ref, task
            if on_start is not None:
                on_start(task)
        errors: dict[str, RayError] = {}
        pending = list(owner)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            task = owner[ready[0]]
            try:
                result, _, seconds = ray.get(ready[0])
            except RayError as e:
                errors[task.id] = e
                continue
            on_done(task, result, seconds)
        failed: set[str] = set()
        for task in tasks:  # dependency order: a dependency's failure is known before its dependents'
            if task.id in errors:
                dep = next((d for d in task.deps if d in failed), None)
                if dep:
                    error, attempts = f"dependency {dep} failed", 0
                else:
                    error, attempts = _error(errors[task.id]), self.retries + 1
                if on_failed is None:
                    raise QscaleError(f"task {task.id} failed after {attempts} attempt(s): {error}")
                on_failed(task, error, attempts)
                failed.add(task.id)
