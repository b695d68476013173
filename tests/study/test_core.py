"""The study core: cell keys, the SQLite store, the runner's skip/commit/resume and dependency rules."""

import pickle
import sqlite3
from dataclasses import dataclass

import numpy as np
import pytest

from qscale.errors import QscaleError
from qscale.laws import load_table
from qscale.study.backends import open_store
from qscale.study.core import CellKey, Row, Table, Task, columns, topological
from qscale.study.executor import LocalExecutor
from qscale.study.qat import QatDefinition, build_qat_study
from qscale.study.qid import QidDefinition, build_study
from qscale.study.runner import plan, run_study
from qscale.study.store import SqliteStore

TRAIN = Table("toy_train", columns("run:text model:text config_hash:text"), columns("steps:int seconds:float"))
CELLS = Table(
    "toy",
    columns("run:text model:text P:int config_hash:text"),
    columns("N:int qid:float per_window:array meta:json note:text?"),
)


@dataclass(frozen=True)
class TrainRow(Row):
    steps: int
    seconds: float


@dataclass(frozen=True)
class ToyRow(Row):
    N: int
    qid: float
    per_window: np.ndarray
    meta: dict
    note: str | None = None


CALLS = {"train": 0, "cell": 0, "kill_at": None}


def train_size(model: str, steps: int, key: CellKey) -> TrainRow:
    CALLS["train"] += 1
    return TrainRow(key, steps=steps, seconds=0.5)


def measure_cell(model: str, P: int, key: CellKey, trained: dict) -> ToyRow:
    CALLS["cell"] += 1
    if CALLS["cell"] == CALLS["kill_at"]:
        raise KeyboardInterrupt
    return ToyRow(key, N=trained["steps"] * 10, qid=1.0 / P, per_window=np.arange(3.0) * P, meta={"model": model})


class Toy:
    name = "toy"

    def tables(self):
        return (TRAIN, CELLS)

    def tasks(self):
        out = []
        for model, steps in (("a", 2), ("b", 4)):
            tk = CellKey.make("toy_train", {"steps": steps}, run="r", model=model)
            out.append(Task(f"train:{model}", train_size, (model, steps, tk), keys=(tk,), phase="train"))
            for P in (2, 4):
                key = CellKey.make("toy", {"P": P}, run="r", model=model, P=P)
                out.append(
                    Task(
                        f"cell:{model}:{P}",
                        measure_cell,
                        (model, P, key),
                        deps=(f"train:{model}",),
                        keys=(key,),
                        phase="quantize",
                    )
                )
        return out

    def report(self, store):
        return store.rows("toy")


@pytest.fixture(autouse=True)
def _reset():
    CALLS.update(train=0, cell=0, kill_at=None)


def test_cell_key_hash_is_stable_and_keys_are_frozen():
    a = CellKey.make("t", {"x": 1, "y": [1, 2]}, run="r", P=4)
    b = CellKey.make("t", {"y": [1, 2], "x": 1}, run="r", P=4)
    assert a == b and hash(a) == hash(b) and a.config_hash == b.config_hash and len(a.config_hash) == 12
    assert CellKey.make("t", {"x": 2}, run="r", P=4).config_hash != a.config_hash
    assert a["P"] == 4 and a.with_(layer="fc2")["layer"] == "fc2" and "layer" not in a.as_dict()
    with pytest.raises(AttributeError):
        a.table = "u"


def test_store_round_trip_types_unique_key_and_wal(tmp_path):
    path = tmp_path / "s.sqlite"
    key = CellKey.make("toy", {"P": 2}, run="r", model="a", P=2)
    with SqliteStore(path, (CELLS,)) as s:
        assert not s.has(key)
        assert s.add(ToyRow(key, N=7, qid=0.25, per_window=np.array([1.5, 2.5]), meta={"a": [1, 2]}))
        assert not s.add(ToyRow(key, N=8, qid=9.0, per_window=np.zeros(2), meta={}))  # stored cell kept
        assert s.has(key) and s.has(CellKey("toy", (("model", "a"),))) and s.count("toy") == 1
        (r,) = s.rows("toy", {"P": 2})
        assert (r["N"], r["qid"], r["meta"], r["note"]) == (7, 0.25, {"a": [1, 2]}, None)
        np.testing.assert_array_equal(r["per_window"], [1.5, 2.5])
        assert s.get(key)["N"] == 7 and s.rows("toy", {"P": 3}) == []
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert load_table(path, table="toy")["qid"].tolist() == [0.25]  # the laws engine reads it as it is


def test_store_rejects_bad_rows_with_one_line_errors(tmp_path):
    key = CellKey.make("toy", {"P": 2}, run="r", model="a", P=2)
    with SqliteStore(tmp_path / "s.sqlite", (CELLS,)) as s:
        with pytest.raises(QscaleError, match="NaN"):
            s.add(ToyRow(key, N=1, qid=float("nan"), per_window=np.zeros(2), meta={}))
        with pytest.raises(QscaleError, match="unknown store table"):
            s.rows("nope")
        with pytest.raises(QscaleError, match="unknown column"):
            s.rows("toy", {"bogus": 1})
        with pytest.raises(QscaleError, match="missing"):
            s.add(ToyRow(key, N=None, qid=1.0, per_window=np.zeros(2), meta={}))
        assert s.count("toy") == 0
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"not a database" * 100)
    with pytest.raises(QscaleError, match="cannot open study store"):
        SqliteStore(bad, (CELLS,))
    with pytest.raises(QscaleError, match="unsupported store"):
        open_store("mysql://x/y")


def test_runner_commits_each_row_resumes_after_a_kill_and_skips_stored_cells(tmp_path):
    path = tmp_path / "s.sqlite"
    CALLS["kill_at"] = 3  # killed while measuring the third cell
    with SqliteStore(path) as s, pytest.raises(KeyboardInterrupt):
        run_study(Toy(), s, progress=False)
    with SqliteStore(path, (CELLS, TRAIN)) as s:
        assert s.count("toy") == 2 and s.count("toy_train") == 2
    CALLS.update(train=0, cell=0, kill_at=None)
    with SqliteStore(path) as s:
        out = run_study(Toy(), s, progress=False)
    # the stored training rows are not re-run: the cells of "b" got the stored record as their dependency
    assert (CALLS["train"], CALLS["cell"]) == (0, 2) and (out.computed, out.skipped) == (2, 4)
    assert out.by_table == {"toy_train": {"computed": 0, "skipped": 2}, "toy": {"computed": 2, "skipped": 2}}
    assert sorted((r["model"], r["P"], r["N"]) for r in out.report) == [
        ("a", 2, 20),
        ("a", 4, 20),
        ("b", 2, 40),
        ("b", 4, 40),
    ]
    assert set(out.seconds) == {"plan", "quantize", "report"}
    with SqliteStore(path) as s:
        again = run_study(Toy(), s, progress=False)
    assert (again.computed, again.tasks_run, CALLS["cell"]) == (0, 0, 2)


def test_a_task_without_keys_runs_only_for_dependents_that_run(tmp_path):
    ran = []
    tasks = [
        Task("dep", ran.append, ("dep",)),
        Task(
            "cell",
            measure_cell,
            ("a", 2, CellKey.make("toy", {}, run="r", model="a", P=2)),
            deps=("dep",),
            keys=(CellKey.make("toy", {}, run="r", model="a", P=2),),
        ),
    ]
    with SqliteStore(tmp_path / "s.sqlite", (CELLS,)) as s:
        todo, inputs, n_stored = plan(tasks, s)
        assert [t.id for t in todo] == ["dep", "cell"] and n_stored == [] and inputs == {}
        s.add(ToyRow(tasks[1].keys[0], N=1, qid=1.0, per_window=np.zeros(1), meta={}))
        assert plan(tasks, s)[0] == []


def test_tasks_are_picklable_and_ordered_by_dependency():
    tasks = Toy().tasks()
    assert pickle.loads(pickle.dumps(tasks))[1].keys == tasks[1].keys
    order = [t.id for t in topological(list(reversed(tasks)))]
    assert order.index("train:a") < order.index("cell:a:2") and order.index("train:b") < order.index("cell:b:4")
    with pytest.raises(QscaleError, match="cycle"):
        topological([Task("x", print, deps=("y",)), Task("y", print, deps=("x",))])
    with pytest.raises(QscaleError, match="unknown task"):
        topological([Task("x", print, deps=("z",))])


def test_local_executor_passes_dependency_values_in_order():
    seen = []
    ex = LocalExecutor()
    ex.run(
        [Task("a", lambda: 3), Task("b", lambda x, y: x + y, (1,), deps=("a",))],
        {},
        lambda t, r, s: seen.append((t.id, r)),
    )
    assert seen == [("a", 3), ("b", 4)]


def test_study_tasks_pickle_for_a_remote_executor(streams, tmp_path):
    """QiD and QAT tasks (functions, configs, token windows, dependency ids) survive pickling."""
    qid = QidDefinition(build_study("tiny", out=tmp_path / "qid"), streams, progress=False).tasks()
    qat = QatDefinition(
        build_qat_study("tiny", out=tmp_path / "qat", qid_dir=tmp_path / "none"), streams, streams, progress=False
    ).tasks()
    for tasks in (qid, qat):
        back = pickle.loads(pickle.dumps(tasks))
        assert [(t.id, t.fn.__name__, t.deps, t.keys) for t in back] == [
            (t.id, t.fn.__name__, t.deps, t.keys) for t in tasks
        ]
    train = [t for t in qid if t.phase == "train"]
    assert train and all(t.deps for t in qid if t.phase == "quantize")  # cells depend on their size's training
    assert {d for t in qid if t.phase == "fp_eval" for d in t.deps} == {t.id for t in train}
