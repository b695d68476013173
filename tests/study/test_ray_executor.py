"""The Ray executor on a real local Ray (2 CPUs, no dashboard, in a temp dir; one cluster for the module):
same rows as the local executor, a worker killed mid-study loses nothing, a failing cell is recorded failed
after its retries (and its dependents with it) and a re-run resumes."""

import dataclasses
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from qscale.data import DataConfig, load_token_streams
from qscale.study.backends import open_store
from qscale.study.core import CellKey, Row, Table, Task, columns
from qscale.study.executor import LocalExecutor
from qscale.study.grid import QidGrid, get_preset
from qscale.study.qid import build_study, run_qid_study
from qscale.study.qid_cells import TABLES
from qscale.study.ray_executor import RayExecutor  # imports ray lazily: importable without it
from qscale.study.runner import run_study
from qscale.study.store import SqliteStore
from qscale.train import TrainConfig
from qscale.train.suite import SuiteConfig

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'qscale[ray]')")

TRAIN = Table("toy_train", columns("run:text model:text config_hash:text"), columns("steps:int"))
CELLS = Table("toy", columns("run:text model:text P:int config_hash:text"), columns("N:int qid:float"))


@dataclass(frozen=True)
class TrainRow(Row):
    steps: int


@dataclass(frozen=True)
class CellRow(Row):
    N: int
    qid: float


def train_size(model: str, steps: int, key: CellKey, marks: str) -> TrainRow:
    Path(marks, f"train-{model}").touch()
    return TrainRow(key, steps=steps)


def measure_cell(model: str, P: int, key: CellKey, marks: str, trained: dict) -> CellRow:
    """A cell; ``marks/<what>-<model>-<P>`` files make it die or fail, and count its attempts."""
    m = Path(marks)
    assert (m / f"train-{model}").exists() or trained["steps"] > 0  # runs after its size's training
    with open(m / f"attempts-{model}-{P}", "a") as f:
        f.write("x")
    if (m / f"kill-{model}-{P}").exists():
        (m / f"kill-{model}-{P}").unlink()
        os._exit(1)  # the worker process dies mid-task
    if (m / f"fail-{model}-{P}").exists():
        raise ValueError(f"cell {model} P={P} is broken")
    return CellRow(key, N=trained["steps"] * 10 + P, qid=round(1.0 / P + trained["steps"] / 7, 12))


class Toy:
    """Two suite sizes, each trained once, then three quantized cells of each."""

    name = "toy"

    def __init__(self, marks: Path):
        self.marks = str(marks)

    def tables(self):
        return (TRAIN, CELLS)

    def tasks(self):
        out = []
        for model, steps in (("a", 2), ("b", 3)):
            tk = CellKey.make("toy_train", {"steps": steps}, run="r", model=model)
            out.append(Task(f"train:{model}", train_size, (model, steps, tk, self.marks), keys=(tk,), phase="train"))
            for P in (2, 4, 8):
                key = CellKey.make("toy", {"P": P}, run="r", model=model, P=P)
                out.append(
                    Task(
                        f"cell:{model}:{P}",
                        measure_cell,
                        (model, P, key, self.marks),
                        deps=(f"train:{model}",),
                        keys=(key,),
                        phase="quantize",
                        cpus=1,
                    )
                )
        return out

    def report(self, store):
        return None


@pytest.fixture(scope="module")
def local_ray():
    """A Ray of 2 CPUs in a temp dir (its session files and the auth token Ray 2.60 writes under $HOME)."""
    tmp = tempfile.mkdtemp(prefix="qr")  # short: Ray's socket paths must fit in 107 bytes
    home = os.environ.get("HOME")
    os.environ["HOME"] = tmp
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    try:
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            _temp_dir=f"{tmp}/ray",
            log_to_driver=False,
            configure_logging=False,
            runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
        )  # as tests/conftest.py
        yield
    finally:
        ray.shutdown()
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        if home is None:
            os.environ.pop("HOME", None)
        else:
            os.environ["HOME"] = home
        shutil.rmtree(tmp, ignore_errors=True)


def _values(store, table):
    return sorted(tuple(sorted((k, v) for k, v in r.items() if k != "created_at")) for r in store.rows(table))


def test_rows_equal_the_local_executor_and_a_killed_worker_loses_nothing(local_ray, tmp_path):
    (tmp_path / "m1").mkdir()
    (tmp_path / "m2").mkdir()
    (tmp_path / "m2" / "kill-b-4").touch()  # this cell's worker dies on its first attempt
    with SqliteStore(tmp_path / "local.sqlite") as a, SqliteStore(tmp_path / "ray.sqlite") as b:
        run_study(Toy(tmp_path / "m1"), a, LocalExecutor(), progress=False)
        out = run_study(Toy(tmp_path / "m2"), b, RayExecutor(retries=2), progress=False)
        assert out.computed == 8 and out.failed == 0 and b.failures() == []
        assert _values(b, "toy") == _values(a, "toy") and len(_values(b, "toy")) == 6
        assert _values(b, "toy_train") == _values(a, "toy_train")
    assert (tmp_path / "m2" / "attempts-b-4").read_text() == "xx"  # killed once, retried once


def test_a_failing_cell_is_recorded_after_its_retries_and_a_rerun_resumes(local_ray, tmp_path):
    marks = tmp_path / "m"
    marks.mkdir()
    (marks / "fail-a-4").touch()
    with SqliteStore(tmp_path / "s.sqlite") as s:
        out = run_study(Toy(marks), s, RayExecutor(retries=1), progress=False)
        assert out.failed == 1 and out.computed == 7  # every other cell is stored
        [f] = s.failures()
        assert f["task_id"] == "cell:a:4" and f["attempts"] == 2 and "ValueError: cell a P=4 is broken" in f["error"]
        assert (marks / "attempts-a-4").read_text() == "xx"
        assert not s.has(CellKey.make("toy", {"P": 4}, run="r", model="a", P=4))
        (marks / "fail-a-4").unlink()  # fixed: the re-run computes only the missing cell
        out = run_study(Toy(marks), s, RayExecutor(retries=1), progress=False)
        assert (out.computed, out.skipped, out.failed) == (1, 7, 0) and s.failures() == [] and s.count("toy") == 6


def test_a_failed_training_fails_its_cells_but_not_the_others(local_ray, tmp_path):
    marks = tmp_path / "m"
    marks.mkdir()
    with SqliteStore(tmp_path / "s.sqlite") as s:
        study = Toy(marks)
        tasks = study.tasks()
        tasks[0] = Task("train:a", _broken_training, (), keys=tasks[0].keys, phase="train")
        study.tasks = lambda: tasks
        out = run_study(study, s, RayExecutor(retries=0), progress=False)
        failures = {f["task_id"]: f for f in s.failures()}
        assert set(failures) == {"train:a", "cell:a:2", "cell:a:4", "cell:a:8"} and out.computed == 4
        assert "RuntimeError: no GPU today" in failures["train:a"]["error"] and failures["train:a"]["attempts"] == 1
        assert failures["cell:a:2"]["error"] == "dependency train:a failed"


def _broken_training(*_):
    raise RuntimeError("no GPU today")


def _tiny_qid(out):
    """2 sizes x 3 checkpoints (steps 1, 2, 4 of 4 x 16 tokens), RTN and GPTQ at 2 and 4 bits."""
    suite = SuiteConfig(
        "test", ("xs", "s"), TrainConfig(tokens=4 * 4 * 16, batch_size=4, seq_len=16, warmup_steps=1, eval_windows=2)
    )
    grid = QidGrid(
        methods=("rtn", "gptq"),
        bits=(2, 4),
        group_size=32,
        eval_windows=8,
        eval_seq_len=16,
        n_calib=2,
        calib_seq_len=16,
    )
    return dataclasses.replace(build_study("tiny", out=out), suite=suite, grid=grid)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_tiny_qid_study_on_ray_into_postgres_equals_local(local_ray, request, tmp_path):
    """The real QiD study: trained on Ray workers, quantized there, rows committed to PostgreSQL (SQLite
    where no server can start), equal to the local executor's rows in SQLite, losses bit for bit."""
    p = get_preset("tiny")
    streams = load_token_streams(
        DataConfig(vocab_size=p.vocab_size, max_files=p.max_files, cache_dir=tmp_path / "c"), progress=False
    )
    try:
        db = request.getfixturevalue("pg_url")
    except pytest.skip.Exception:
        db = str(tmp_path / "ray.sqlite")
    local = run_qid_study(_tiny_qid(tmp_path / "local"), progress=False, streams=streams)
    remote = run_qid_study(
        _tiny_qid(tmp_path / "ray"), progress=False, streams=streams, db=db, executor=RayExecutor(retries=0)
    )
    assert local.n_rows == remote.n_rows == 24 and remote.computed == 24
    measured = ("model", "D", "method", "P", "N", "N_total", "loss_fp", "loss_q", "qid", "qid_se", "eval_tokens")
    with SqliteStore(tmp_path / "local" / "study.sqlite", TABLES) as a, open_store(db, TABLES) as b:
        rows_a = sorted(tuple(r[k] for k in measured) for r in a.rows("qid"))
        rows_b = sorted(tuple(r[k] for k in measured) for r in b.rows("qid"))
    assert rows_a == rows_b


def _threaded_sum(n: int) -> tuple[int, float]:
    """(torch threads, a float32 sum whose value depends on how many threads split it)."""
    x = torch.randn(n, generator=torch.Generator().manual_seed(0))
    return torch.get_num_threads(), x.sum().item()


def test_ray_tasks_run_with_the_drivers_thread_count_and_give_its_numbers(local_ray):
    """Ray starts workers with OMP_NUM_THREADS=1 (the fixture says so too); a task must compute with the
    driver's thread count, or a reduction splits differently and the rows differ from a local run."""
    tasks = [Task(f"sum{i}", _threaded_sum, (2**20,)) for i in range(2)]

    def collect(executor):
        got = {}
        executor.run(tasks, {}, lambda task, result, seconds: got.__setitem__(task.id, result))
        return got

    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        local, remote = collect(LocalExecutor()), collect(RayExecutor(retries=0))
        one = collect(RayExecutor(retries=0, threads=1))
    finally:
        torch.set_num_threads(previous)
    assert remote == local and {r[0] for r in remote.values()} == {2}
    assert {r[0] for r in one.values()} == {1} and one["sum0"][1] != local["sum0"][1]  # the difference it avoids
