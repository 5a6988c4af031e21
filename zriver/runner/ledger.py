"""The runner's small local database: the update outbox and the tasks it has started.

* ``outbox``: task state updates not yet acknowledged by the host, in order, one row per
  loop tick (``seq``: the runner numbers rows itself, so that a tick's updates can leave
  before the row is written; see ``Runner._flush``). A row is deleted once the host has
  acknowledged every update in it, so a host restart or a dropped message loses no result
  (the host applies resends idempotently). Rows written by older releases hold one update.
* ``started``: task id -> pid and the process's start time, so that a runner restarted after a
  crash can find and end the native process groups its previous life left behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import apsw
import msgpack

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox(seq INTEGER PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS started(task_id INTEGER PRIMARY KEY, pid INTEGER, start_time REAL);
"""


class Ledger:
    """One APSW connection owned by the runner's loop thread."""

    def __init__(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.conn = apsw.Connection(str(path))
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        with self.conn:
            self.conn.execute(SCHEMA)
        last = self.conn.execute("SELECT max(seq) FROM outbox").fetchall()[0][0]
        self._next_seq = (last or 0) + 1

    def close(self) -> None:
        self.conn.close()

    def new_seq(self) -> int:
        """Number the next outbox row (numbers are never reused within one run)."""
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def append(self, seq: int, updates: list[dict[str, Any]]) -> None:
        """Persist one tick's updates as row ``seq`` (in the caller's transaction)."""
        self.conn.execute("INSERT INTO outbox(seq, body) VALUES (?, ?)",
                          (seq, msgpack.packb(updates)))

    def acknowledge(self, seqs: list[int]) -> None:
        """Drop the rows of acknowledged updates (in the caller's transaction)."""
        if seqs:
            seqs = sorted(set(seqs))
            self.conn.execute(
                f"DELETE FROM outbox WHERE seq IN ({','.join('?' * len(seqs))})", seqs
            )

    def pending(self) -> list[tuple[int, dict[str, Any]]]:
        """Every unacknowledged update with the seq of its row, oldest first."""
        result = []
        for seq, body in self.conn.execute("SELECT seq, body FROM outbox ORDER BY seq"):
            updates = msgpack.unpackb(body, raw=False)
            for update in updates if isinstance(updates, list) else [updates]:
                result.append((seq, update))
        return result

    def record_start(self, task_id: int, pid: int, start_time: float) -> None:
        self.conn.execute("INSERT OR REPLACE INTO started VALUES (?, ?, ?)",
                          (task_id, pid, start_time))

    def forget(self, task_ids: list[int]) -> None:
        if task_ids:
            self.conn.execute(
                f"DELETE FROM started WHERE task_id IN ({','.join('?' * len(task_ids))})",
                task_ids,
            )

    def started(self) -> list[tuple[int, int, float]]:
        return self.conn.execute("SELECT task_id, pid, start_time FROM started").fetchall()
