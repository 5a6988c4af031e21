"""Live log chunks: tail the log files of the followed tasks running here, publish what they add.

Each chunk is published on ``log.<task id>`` as ``{"id", "stream", "offset", "data"}``: the
byte offset lets a follower that joined late or missed a chunk (PUB/SUB is lossy) notice the
gap and re-read it from the file through ``task.logs``. Bytes stay bytes end to end.

Which tasks are followed is what the host subscribed to on the runner's publishing socket
(an XPUB connected to the host's XSUB, ``subscription``): the host subscribes ``log.<id>``
while someone follows task ``id`` and unsubscribes when nobody does; ZeroMQ replays the
subscriptions after every reconnection. A subscription that covers every log topic (``""``,
``"log."``: what a host that does not track followers sends) follows every task.

A task is *tailed* while it runs here (``watch`` .. ``finish``) and is followed: its two files
are watched with inotify (``zriver.runner.inotify``), so a write wakes the loop at once and the
new bytes leave in the same turn. Where inotify is unavailable (or a file does not exist yet,
as a container's before its output is copied), the tailed files alone are polled every
``poll_interval``. Tasks nobody follows cost nothing: no watch, no ``stat``, no timer.

Offsets: a task followed from its start is tailed from byte 0. One that becomes followed while
it runs is tailed from ``BACKLOG`` bytes before its current end: the follower reads the file
up to its end through ``task.logs`` while the follow reaches this runner, and the re-sent
overlap (which it skips by offset) covers that race. ``finish`` publishes the tail of a
followed task that just ended, before its final state is reported.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from typing import Callable

import structlog

from zriver.runner.inotify import Inotify

CHUNK = 64 * 1024
BACKLOG = 64 * 1024
STREAMS = ("stdout", "stderr")
TOPIC = b"log."

log = structlog.get_logger("zriver.runner")


@dataclass(slots=True)
class _Tailed:
    paths: dict[str, str]
    sent: dict[str, int]
    wds: dict[str, int] = field(default_factory=dict)
    fds: dict[str, int] = field(default_factory=dict)
    """Open read-only while tailed (a file that does not exist yet is opened when it does)."""


class LogTail:
    """Publishes new bytes of followed, running tasks through ``publish(topic, body)``.

    ``start`` (on the running loop) opens inotify, ``close`` releases it; without ``start``
    (or with ``use_inotify=False``) tailed files are polled."""

    def __init__(self, publish: Callable[[str, dict], None], poll_interval: float = 0.005,
                 use_inotify: bool = True) -> None:
        self._publish = publish
        self.poll_interval = poll_interval
        self._use_inotify = use_inotify
        self._running: dict[int, dict[str, str]] = {}
        self._followed: set[int] = set()
        self._everything: set[bytes] = set()
        self._tailed: dict[int, _Tailed] = {}
        self._by_wd: dict[int, set[tuple[int, str]]] = {}
        self._polled: set[tuple[int, str]] = set()
        self._notify: Inotify | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    # ---- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if not self._use_inotify:
            return
        try:
            self._notify = Inotify()
        except OSError as exc:
            log.warning("runner.no_inotify", error=str(exc),
                        detail=f"followed logs are polled every {self.poll_interval} s")
            return
        self._loop.add_reader(self._notify.fileno(), self._on_notified)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._notify is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._notify.fileno())
            self._notify.close()
            self._notify = None

    # ---- what runs here ----------------------------------------------------------------
    def watch(self, task_id: int, stdout: str, stderr: str) -> None:
        """Task ``task_id`` runs here now, writing these files (from their start)."""
        self._end(task_id)
        self._running[task_id] = {"stdout": stdout, "stderr": stderr}
        if self.is_followed(task_id):
            self._begin(task_id, from_start=True)

    def finish(self, task_id: int) -> None:
        """The task ended: publish what it wrote since the last chunk (if followed), forget it."""
        if task_id in self._tailed:
            self._send_all(task_id)
        self._end(task_id)
        self._running.pop(task_id, None)

    # ---- what is followed --------------------------------------------------------------
    def subscription(self, message: bytes) -> None:
        """An (un)subscription the host sent to the publishing socket: ``\\x01`` or ``\\x00``
        and a topic prefix. Prefixes that are not about logs (``hb.``) are ignored."""
        if not message or message[0] not in (0, 1):
            return
        on, prefix = message[0] == 1, message[1:]
        if TOPIC.startswith(prefix):
            self._follow_everything(prefix, on)
        elif prefix.startswith(TOPIC):
            try:
                task_id = int(prefix[len(TOPIC):])
            except ValueError:
                return
            if on:
                self.follow(task_id)
            else:
                self.unfollow(task_id)

    def follow(self, task_id: int) -> None:
        self._followed.add(task_id)
        if task_id in self._running and task_id not in self._tailed:
            self._begin(task_id, from_start=False)

    def unfollow(self, task_id: int) -> None:
        self._followed.discard(task_id)
        if not self.is_followed(task_id):
            self._end(task_id)

    def unfollow_all(self) -> None:
        """Nothing is followed any more (a new publishing socket: the host tells again)."""
        self._followed.clear()
        self._everything.clear()
        for task_id in list(self._tailed):
            self._end(task_id)

    def is_followed(self, task_id: int) -> bool:
        return bool(self._everything) or task_id in self._followed

    def tailed(self) -> set[int]:
        """The tasks whose files are tailed now (followed and running here)."""
        return set(self._tailed)

    def polled(self) -> set[tuple[int, str]]:
        """The tailed streams read by polling (no inotify watch), as ``(task, stream)``."""
        return set(self._polled)

    def _follow_everything(self, prefix: bytes, on: bool) -> None:
        if on:
            self._everything.add(prefix)
            for task_id in self._running:
                if task_id not in self._tailed:
                    self._begin(task_id, from_start=False)
        else:
            self._everything.discard(prefix)
            for task_id in list(self._tailed):
                if not self.is_followed(task_id):
                    self._end(task_id)

    # ---- tailing -----------------------------------------------------------------------
    def _begin(self, task_id: int, from_start: bool) -> None:
        paths = self._running[task_id]
        sent = {}
        for stream, path in paths.items():
            sent[stream] = 0 if from_start else max(0, _size(path) - BACKLOG)
        tailed = self._tailed[task_id] = _Tailed(paths, sent)
        for stream in STREAMS:
            if not (_open(tailed, stream) and self._add_watch(task_id, tailed, stream)):
                self._polled.add((task_id, stream))
        if self._polled:
            self._arm_poll()
        self._send_all(task_id)  # what came before the watches (and the backlog)

    def _add_watch(self, task_id: int, tailed: _Tailed, stream: str) -> bool:
        if self._notify is None:
            return False
        try:
            wd = self._notify.add(tailed.paths[stream])
        except OSError:  # no such file yet, or out of watches: polled
            return False
        tailed.wds[stream] = wd
        self._by_wd.setdefault(wd, set()).add((task_id, stream))
        return True

    def _end(self, task_id: int) -> None:
        tailed = self._tailed.pop(task_id, None)
        if tailed is None:
            return
        for stream, wd in tailed.wds.items():
            users = self._by_wd.get(wd, set())
            users.discard((task_id, stream))
            if not users:
                self._by_wd.pop(wd, None)
                if self._notify is not None:
                    self._notify.remove(wd)
        for stream in STREAMS:
            self._polled.discard((task_id, stream))
        for fd in tailed.fds.values():
            os.close(fd)

    def _on_notified(self) -> None:
        if self._notify is None:
            return
        for wd in self._notify.read():
            for task_id, stream in list(self._by_wd.get(wd, ())):
                self._send(task_id, stream)

    def _arm_poll(self) -> None:
        if self._timer is None and self._loop is not None:
            self._timer = self._loop.call_later(self.poll_interval, self._poll)

    def _poll(self) -> None:
        """Read the polled streams; a file that appeared since gets its inotify watch."""
        self._timer = None
        for task_id, stream in list(self._polled):
            tailed = self._tailed.get(task_id)
            if tailed is None:
                self._polled.discard((task_id, stream))
                continue
            if _open(tailed, stream) and self._add_watch(task_id, tailed, stream):
                self._polled.discard((task_id, stream))
            self._send(task_id, stream)
        if self._polled:
            self._arm_poll()

    def poll(self) -> None:
        """Read every tailed stream now (what a timer or a notification would do)."""
        for task_id in list(self._tailed):
            self._send_all(task_id)

    def _send_all(self, task_id: int) -> None:
        for stream in STREAMS:
            self._send(task_id, stream)

    def _send(self, task_id: int, stream: str) -> None:
        tailed = self._tailed.get(task_id)
        if tailed is None:
            return
        fd = tailed.fds.get(stream)
        if fd is None:
            return
        offset = tailed.sent[stream]
        try:
            size = os.fstat(fd).st_size
            while offset < size:
                data = os.pread(fd, min(CHUNK, size - offset), offset)
                if not data:
                    break
                self._publish(f"log.{task_id}", {"id": task_id, "stream": stream,
                                                 "offset": offset, "data": data})
                offset += len(data)
        except OSError:
            pass
        tailed.sent[stream] = offset


def _open(tailed: _Tailed, stream: str) -> bool:
    """Open the stream's file for tailing (once); whether it is open."""
    if stream in tailed.fds:
        return True
    try:
        tailed.fds[stream] = os.open(tailed.paths[stream], os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    return True


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
