"""Where task logs live and how a slice of one is read (shared by the host and runners).

A task's output is ``<dir>/<id>.out`` and ``<dir>/<id>.err`` where ``<dir>`` is
``<shared_dir>/logs`` when the cluster has a shared directory, else ``<runner data>/logs``.
"""

from __future__ import annotations

from pathlib import Path

SUFFIX = {"stdout": "out", "stderr": "err"}


def log_path(base: str | Path, task_id: int, stream: str) -> str:
    """The log file of one stream of a task (a plain string: it is built for every start)."""
    return f"{base}/{task_id}.{SUFFIX[stream]}"


def read_slice(path: str | Path, offset: int, limit: int) -> dict:
    """``limit`` bytes of ``path`` from ``offset``, and the file's current size.

    A missing file reads as empty (the task has not written yet)."""
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, 2)
            handle.seek(min(offset, size))
            data = handle.read(limit)
    except FileNotFoundError:
        return {"data": b"", "offset": offset, "size": 0}
    return {"data": data, "offset": offset, "size": size}
