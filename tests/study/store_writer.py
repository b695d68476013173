"""Writes rows into a study store from its own process (for the concurrent-writer tests).

    python store_writer.py WORKER N START_FILE DB [DB ...]

Opens every DB, signals it is ready (creates START_FILE.WORKER) and waits for the other writer's signal, then
adds, to each DB in turn, N cells one transaction each: cells ``0..N-1`` of its own (``worker=WORKER``)
interleaved with the shared cells ``0..N-1`` (``worker=-1``) that the other writer adds too; prints how many
rows were new in each DB.
"""

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from qscale.study.backends import open_store
from qscale.study.core import CellKey, Row, Table, columns

TABLE = Table("w", columns("run:text worker:int i:int"), columns("value:float"))


@dataclass(frozen=True)
class WRow(Row):
    value: float


def main() -> None:
    worker, n, start, dbs = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4:]
    stores = [open_store(db, [TABLE]) for db in dbs]
    Path(f"{start}.{worker}").touch()
    while not Path(f"{start}.{1 - worker}").exists():
        time.sleep(0.005)
    counts = []
    for store in stores:
        new = 0
        for i in range(n):
            new += store.add(WRow(CellKey.make("w", run="r", worker=worker, i=i), value=worker + i / n))
            new += store.add(WRow(CellKey.make("w", run="r", worker=-1, i=i), value=float(i)))
        store.close()
        counts.append(new)
    print(*counts)


if __name__ == "__main__":
    main()
