"""The runner's small local database: the update outbox and the tasks it has started.

* ``outbox``: task state updates not yet acknowledged by the host, in order. An update is
  written here before it is sent and deleted when the host's reply arrives, so a host restart,
  a dropped message or a runner crash loses no result (the host applies resends idempotently).
* ``started``: task id -> pid and the process's start time, so that a runner restarted after a
  crash can find and end the native process groups its previous life left behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import apsw
import msgpack

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox(seq INTEGER PRIMARY KEY AUTOINCREMENT, body BLOB NOT NULL);
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

    def close(self) -> None:
        self.conn.close()

    def append(self, updates: list[dict[str, Any]]) -> list[int]:
        """Persist updates (in the caller's transaction); return their sequence numbers."""
        seqs = []
        for update in updates:
            self.conn.execute("INSERT INTO outbox(body) VALUES (?)", (msgpack.packb(update),))
            seqs.append(self.conn.last_insert_rowid())
        return seqs

    def acknowledge(self, seqs: list[int]) -> None:
        """Drop acknowledged updates (in the caller's transaction)."""
        if seqs:
            self.conn.execute(
                f"DELETE FROM outbox WHERE seq IN ({','.join('?' * len(seqs))})", seqs
            )

    def pending(self) -> list[tuple[int, dict[str, Any]]]:
        rows = self.conn.execute("SELECT seq, body FROM outbox ORDER BY seq").fetchall()
        return [(seq, msgpack.unpackb(body, raw=False)) for seq, body in rows]

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
