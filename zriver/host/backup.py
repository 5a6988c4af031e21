"""Backups of a running host's store: a consistent copy made on the host, fetched in chunks.

A host extension (``host.backup``), admins only:

* ``backup.start {}`` -> ``{name, size, sha256, last_task_id}``: copies ``host.db`` with
  SQLite's online backup (``apsw.Connection.backup``) into ``<data_dir>/backups/<name>.db``.
  The copy runs in a worker thread on connections of its own (a reader of ``host.db`` and the
  new file; APSW lets a connection be used from any thread, and neither is the host's), as one
  ``step(-1)``: one read transaction, so the copy is one committed snapshot of the store. In
  WAL mode that reader blocks no writer: the host's loop keeps answering requests and writing
  its ticks while the copy runs (checkpoints only wait for the snapshot to be released).
  Stepping a few pages at a time instead would restart the copy at every tick the host commits
  meanwhile (a source written by another connection restarts an online backup), which under
  load may never finish. The copy is switched to ``journal_mode=DELETE`` so it is one
  self-contained file (the host that opens it turns WAL on again);
* ``backup.fetch {name, offset}`` -> ``{data, offset, size}``: at most ``CHUNK`` bytes of it;
* ``backup.done {name}``: removes it. A backup nobody fetched is removed ``KEEP`` seconds
  after it was made (at the next ``backup.start``), and every file left in ``backups/`` by
  an earlier life of the host is removed when the host starts.

The client (``zriver backup FILE``, ``zriver.client.verbs_ops``) checks size, SHA-256 and
``PRAGMA integrity_check`` and renames its temporary file into place.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw
import structlog

from zriver.errors import InvalidArgument, NotFound
from zriver.host.ops import ADMINS, SERVICE, OpTable
from zriver.protocol import arg

log = structlog.get_logger("zriver.host")

CHUNK = 1024 * 1024
"""Bytes per ``backup.fetch`` reply (far under the default 8 MiB message cap)."""
KEEP = 3600.0
"""Seconds an unfetched backup stays on the host."""


@dataclass(frozen=True)
class Made:
    """One backup file on the host."""

    path: Path
    size: int
    sha256: str
    made_at: float


def copy_store(source: Path, target: Path) -> tuple[int, str, int]:
    """Copy the database ``source`` to ``target`` (which must not exist) as one snapshot;
    return ``(size, sha256, last task id)`` of the copy. Blocking: run it in a thread."""
    reader = apsw.Connection(str(source))
    reader.setbusytimeout(5000)
    copy = apsw.Connection(str(target))
    try:
        with copy.backup("main", reader, "main") as backup:
            while not backup.done:
                backup.step(-1)
        copy.execute("PRAGMA journal_mode=DELETE")
        last = copy.execute("SELECT coalesce(max(id), 0) FROM tasks").fetchall()[0][0]
    finally:
        copy.close()
        reader.close()
    digest = hashlib.sha256()
    with open(target, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return target.stat().st_size, digest.hexdigest(), last


def read_chunk(path: Path, offset: int) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(offset)
        return handle.read(CHUNK)


class Backups:
    """The backup extension (see the module docstring)."""

    name = "backup"
    migrations: list = []

    def __init__(self) -> None:
        self.host: Any = None
        self.made: dict[str, Made] = {}
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    @property
    def folder(self) -> Path:
        return Path(self.host.data_dir) / "backups"

    def register(self, ops: OpTable) -> None:
        ops.add("backup.start", self.start, ADMINS, SERVICE)
        ops.add("backup.fetch", self.fetch, ADMINS, SERVICE)
        ops.add("backup.done", self.done, ADMINS, SERVICE)

    def attach(self, service: Any) -> None:
        self.host = service
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="zriver-backup")
        for left in self.folder.glob("*.db*") if self.folder.is_dir() else []:
            left.unlink(missing_ok=True)  # an earlier life's: nobody can fetch it now

    async def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        for name in list(self.made):
            self._remove(name)

    async def _blocking(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # ---- ops -----------------------------------------------------------------------------
    async def start(self, service: Any, request: Any, body: dict) -> dict:
        """``backup.start``: make a backup; its name, size, digest and newest task id."""
        self._expire(time.time())
        self.folder.mkdir(parents=True, exist_ok=True)
        name = secrets.token_hex(8)
        path = self.folder / f"{name}.db"
        started = time.monotonic()
        try:
            size, sha256, last = await self._blocking(
                copy_store, Path(self.host.data_dir) / "host.db", path)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        self.made[name] = Made(path, size, sha256, time.time())
        log.info("backup.made", name=name, bytes=size, last_task_id=last,
                 seconds=round(time.monotonic() - started, 3), by=request.principal.name)
        return {"name": name, "size": size, "sha256": sha256, "last_task_id": last}

    async def fetch(self, service: Any, request: Any, body: dict) -> dict:
        """``backup.fetch {name, offset}``: the next chunk of a backup."""
        made = self._made(body)
        offset = arg(body, "offset", int)
        if not 0 <= offset <= made.size:
            raise InvalidArgument(f"offset must be between 0 and {made.size}")
        data = await self._blocking(read_chunk, made.path, offset)
        return {"data": data, "offset": offset, "size": made.size}

    def done(self, service: Any, request: Any, body: dict) -> dict:
        """``backup.done {name}``: the client has its copy; remove the host's."""
        self._made(body)
        self._remove(arg(body, "name", str))
        return {}

    # ---- files ---------------------------------------------------------------------------
    def _made(self, body: dict) -> Made:
        name = arg(body, "name", str)
        made = self.made.get(name)
        if made is None:
            raise NotFound(f"no backup {name!r} on the host (finished, or older than "
                           f"{KEEP:.0f} s)")
        return made

    def _remove(self, name: str) -> None:
        made = self.made.pop(name, None)
        if made is not None:
            made.path.unlink(missing_ok=True)

    def _expire(self, now: float) -> None:
        for name, made in list(self.made.items()):
            if now - made.made_at > KEEP:
                self._remove(name)
