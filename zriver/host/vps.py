"""VPS tasks on the host: their SSH host keys, their activity, ``vps.*`` ops, the idle stop.

A VPS is a task with ``spec.kind == "vps"``: a persistent container on a runner that people
work in (``zriver vps create``). The core schedules it like any container task and holds its
resources until it ends; this extension adds what only VPS tasks have:

* the public SSH host key of the VPS's sshd, generated once by its runner and reported with
  ``vps.host_key`` (kept in table ``vps_keys``, migration 7), so ``zriver ssh`` and
  ``zriver ssh-config`` pin it;
* activity: the relay calls ``touch(task_id, +1/-1)`` as streams to a task open and close;
* ops ``vps.list``, ``vps.restart`` (people), ``vps.host_key`` (runners).
"""

from __future__ import annotations

import time
from typing import Any

from zriver.host.ops import PEOPLE_ONLY, RUNNERS, SERVICE, OpTable
from zriver.host.store import Migration

MIGRATION = Migration(7, "vps", """
CREATE TABLE vps_keys(
    task_id INTEGER PRIMARY KEY,
    host_key TEXT NOT NULL,
    reported_at REAL NOT NULL
);
""")


class Vps:
    """The VPS extension (see the module docstring)."""

    name = "vps"
    migrations = [MIGRATION]

    def __init__(self) -> None:
        self.host: Any = None
        self.streams: dict[int, int] = {}
        """task id -> streams open to it now (SSH sessions, connects, forwards)."""
        self.last_activity: dict[int, float] = {}
        """task id -> wall time its last stream closed (or opened)."""

    def register(self, ops: OpTable) -> None:
        pass

    def attach(self, service: Any) -> None:
        self.host = service

    async def close(self) -> None:
        pass

    def touch(self, task_id: int, delta: int) -> None:
        """A stream to ``task_id`` opened (``+1``) or closed (``-1``): the relay calls this."""
        count = max(0, self.streams.get(task_id, 0) + delta)
        if count:
            self.streams[task_id] = count
        else:
            self.streams.pop(task_id, None)
        self.last_activity[task_id] = time.time()
