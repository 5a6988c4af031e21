"""Live log chunks: watch running tasks' log files and publish what they add.

Each chunk is published on ``log.<task id>`` as ``{"id", "stream", "offset", "data"}``: the
byte offset lets a follower that joined late or missed a chunk (PUB/SUB is lossy) notice the
gap and re-read it from the file through ``task.logs``. Bytes stay bytes end to end.

Files are polled (one ``stat`` per stream per interval), which costs nothing measurable for the
handful of tasks a node runs at once and needs no inotify. ``finish`` publishes the tail of a
task that just ended, before its final state is reported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

CHUNK = 64 * 1024


@dataclass(slots=True)
class _Watched:
    paths: dict[str, str]
    sent: dict[str, int] = field(default_factory=lambda: {"stdout": 0, "stderr": 0})


class LogTail:
    """Publishes new bytes of watched tasks through ``publish(topic, body)``."""

    def __init__(self, publish: Callable[[str, dict], None]) -> None:
        self._publish = publish
        self._watched: dict[int, _Watched] = {}

    def watch(self, task_id: int, stdout: str, stderr: str) -> None:
        self._watched[task_id] = _Watched({"stdout": stdout, "stderr": stderr})

    def poll(self) -> None:
        for task_id, watched in list(self._watched.items()):
            self._send_new(task_id, watched)

    def finish(self, task_id: int) -> None:
        watched = self._watched.pop(task_id, None)
        if watched is not None:
            self._send_new(task_id, watched)

    def _send_new(self, task_id: int, watched: _Watched) -> None:
        for stream, path in watched.paths.items():
            try:
                size = os.stat(path).st_size
            except OSError:
                continue
            offset = watched.sent[stream]
            if size <= offset:
                continue
            with open(path, "rb") as handle:
                handle.seek(offset)
                while offset < size:
                    data = handle.read(min(CHUNK, size - offset))
                    if not data:
                        break
                    self._publish(f"log.{task_id}", {"id": task_id, "stream": stream,
                                                     "offset": offset, "data": data})
                    offset += len(data)
            watched.sent[stream] = offset
