"""One owner per data directory: an exclusive ``flock`` on a lock file inside it.

A host locks ``<data_dir>/host.lock``, a runner ``<data_dir>/runner.lock`` (so a host and a
runner may share a directory, two hosts or two runners may not). The owner writes
``{"pid": ..., "role": ...}`` into the file after taking the lock; a refused process reads it
to say who holds the directory.

Contracts:

* ``acquire`` never blocks: it takes the lock or raises ``DirectoryInUse`` at once, having
  changed nothing but creating the directory and an empty lock file when they are missing.
* The lock belongs to this process's open file description only. Its descriptor is
  close-on-exec, so tasks a runner spawns (``posix_spawn``/``exec``) never inherit it, and the
  kernel releases it when the process dies however it dies: a lock file left behind by a
  SIGKILLed owner (stale pid inside) never blocks the next start.
* ``DirLock.release`` (or leaving ``with acquire(...):``) empties the file and releases the
  lock; the file itself is left in place (unlinking a ``flock`` file races with a process
  that has just opened it).
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zriver.errors import Conflict, ZriverError

#: Lock file names by kind (the role whose state the directory holds).
LOCK_NAMES = {"host": "host.lock", "runner": "runner.lock"}


class DirectoryInUse(Conflict):
    """Another live process holds this data directory's lock (``holder``: what it wrote)."""

    def __init__(self, directory: Path, holder: dict[str, Any] | None) -> None:
        self.directory = directory
        self.holder = holder
        super().__init__(
            f"{directory} is in use by {describe(holder)}; stop it first, or give this one "
            f"another data directory (--config / ZRIVER_HOME)"
        )


def describe(holder: dict[str, Any] | None) -> str:
    """``zriver up (pid 1234)``, or a vaguer phrase when the holder wrote nothing yet."""
    if not holder or "pid" not in holder:
        return "another zriver process (pid not written yet)"
    return f"{holder.get('role') or 'zriver'} (pid {holder['pid']})"


def lock_path(directory: str | Path, kind: str) -> Path:
    """The lock file of ``kind`` (``host`` or ``runner``) in ``directory``."""
    return Path(directory) / LOCK_NAMES[kind]


@dataclass
class DirLock:
    """A held lock; ``release`` it (or end the ``with`` block it is used in, or let the
    process end) to free the directory."""

    path: Path
    fd: int

    def __enter__(self) -> "DirLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        """Empty the lock file and release the lock. Idempotent."""
        if self.fd < 0:
            return
        fd, self.fd = self.fd, -1
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the only descriptor releases the flock


def acquire(directory: str | Path, kind: str, role: str) -> DirLock:
    """Lock ``directory`` for ``kind`` on behalf of ``role`` (e.g. ``"zriver up"``).

    Creates the directory when missing. Raises ``DirectoryInUse`` (naming the holder's pid
    and role) when another open lock holds it, even one in this same process; raises
    ``ZriverError`` when the lock file cannot be opened at all (permissions, read-only).
    """
    path = lock_path(directory, kind)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise ZriverError(f"cannot lock data directory {path.parent}: {exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read(fd)
        os.close(fd)
        raise DirectoryInUse(path.parent, holder) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "role": role}).encode() + b"\n", 0)
    return DirLock(path, fd)


def holder(directory: str | Path, kind: str) -> dict[str, Any] | None:
    """What the lock file says (pid, role), or None when it is missing or empty.

    This only reads the file: a stale one left by a killed owner still names that owner.
    """
    try:
        fd = os.open(lock_path(directory, kind), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        return _read(fd)
    finally:
        os.close(fd)


def held(directory: str | Path, kind: str) -> dict[str, Any] | None:
    """What the holder of ``kind``'s lock in ``directory`` wrote (``{}`` before it has written
    anything) while a live process holds it; None when nobody does (a stale file left by a
    killed owner does not count). Asks with a shared ``flock`` that it drops at once: an
    ``acquire`` in that same instant is refused as if the directory were in use."""
    try:
        fd = os.open(lock_path(directory, kind), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read(fd) or {}
    else:
        return None
    finally:
        os.close(fd)


def _read(fd: int) -> dict[str, Any] | None:
    """The JSON map at the start of ``fd``, or None when empty or not (yet) complete."""
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"null")
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
