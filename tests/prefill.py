"""A store filled with many queued tasks before its host starts (faster than submitting them).

``prefill(data_dir, count)`` writes ``count`` pending tasks of one batch into the host database
under ``data_dir``, with the row shape ``handlers.submit`` writes (its spec on the wire, a
"submitted" event each), through the host's own migrations (core and extensions).
"""

from __future__ import annotations

import time
from pathlib import Path

from zriver.config import HostSettings
from zriver.host.service import Host
from zriver.host.store import Store
from zriver.spec import TaskSpec


def prefill(data_dir: Path, count: int, *, name: str = "job", owner: str = "test",
            command: tuple[str, ...] = ("true",), cores: int = 1,
            user: str | None = None) -> list[int]:
    """Insert ``count`` pending tasks (one batch, names ``{name}{i}``, run as ``user`` in
    ``data_dir``); return their ids."""
    data_dir.mkdir(parents=True, exist_ok=True)
    host = Host(HostSettings(data_dir=str(data_dir)))  # its migrations only: nothing starts
    store = Store(data_dir / "host.db", host.migrations)
    now = time.time()
    first = store.last_task_id() + 1
    ids = list(range(first, first + count))
    wire = TaskSpec.from_wire({"command": list(command), "owner": owner, "cores": cores,
                               "workdir": str(data_dir), "backend": "native",
                               "user": user}).to_wire()
    batch = first if count > 1 else None
    try:
        with store.batch():
            for i, task_id in enumerate(ids):
                store.insert_task({"id": task_id, "name": f"{name}{i}", "owner": owner,
                                   "state": "pending", "spec": {**wire, "name": f"{name}{i}"},
                                   "submitted_at": now, "batch_id": batch})
                store.add_event(task_id, "pending", now, "submitted")
    finally:
        store.close()
    return ids
