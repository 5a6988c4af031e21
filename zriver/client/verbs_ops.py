"""Verbs for whoever runs the cluster: ``zriver backup FILE``.

``backup``: the host makes a consistent copy of its store while it runs (``backup.start``,
``zriver.host.backup``), the client fetches it in chunks into a temporary file beside FILE,
checks its size, SHA-256 and ``PRAGMA integrity_check``, and only then renames it to FILE.
An existing FILE is kept unless ``--force``; a failed backup leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import apsw

from zriver.client.registry import Context, arg, command
from zriver.errors import Conflict, InvalidArgument, Unavailable

BACKUP_TIMEOUT = 3600.0
"""Seconds the client waits for the host to make the copy (a large store takes a while)."""


@command("backup", "copy the host's store (tasks, keys, envs...) to FILE while it runs",
         arg("file", metavar="FILE", help="where to write the backup (an SQLite database)"),
         arg("--force", action="store_true", help="overwrite FILE when it exists"),
         description="Copy the host's store (host.db) to FILE on this machine while the host "
                     "runs (admins only). FILE is written only once the copy is complete and "
                     "checked. Restoring: docs/operations.md.")
def backup(ctx: Context, args) -> int:
    target = Path(args.file)
    check_target(target, args.force)
    client = ctx.client
    made = client.call("backup.start", {}, timeout=max(ctx.timeout, BACKUP_TIMEOUT))
    temporary = target.parent / f".{target.name}.part-{os.getpid()}"
    try:
        fetch(client, made, temporary)
        check_copy(temporary)
        os.replace(temporary, target)
        sync_folder(target.parent)
    finally:
        temporary.unlink(missing_ok=True)
        client.call("backup.done", {"name": made["name"]})
    ctx.print(f"{target}: {made['size']:,} bytes, tasks up to {made['last_task_id']}")
    return 0


def check_target(target: Path, force: bool) -> None:
    """Refuse a FILE that exists (unless ``force``), is a folder, or has no folder."""
    if target.is_dir():
        raise InvalidArgument(f"{target} is a directory")
    if target.exists() and not force:
        raise Conflict(f"{target} exists; use --force to overwrite it")
    if not target.parent.is_dir():
        raise InvalidArgument(f"{target.parent} is not a directory")


def fetch(client, made: dict, path: Path) -> None:
    """Write backup ``made`` into ``path`` chunk by chunk; check its size and digest."""
    digest, offset = hashlib.sha256(), 0
    with open(path, "wb") as handle:
        while offset < made["size"]:
            data = client.call("backup.fetch", {"name": made["name"], "offset": offset})["data"]
            if not data:
                raise Unavailable(f"the backup ended at {offset} of {made['size']} bytes")
            handle.write(data)
            digest.update(data)
            offset += len(data)
        handle.flush()
        os.fsync(handle.fileno())
    if offset != made["size"] or digest.hexdigest() != made["sha256"]:
        raise Unavailable("the backup arrived damaged (size or SHA-256 differ); try again")


def check_copy(path: Path) -> None:
    """``PRAGMA integrity_check`` of the fetched file; raise when it is not ``ok``."""
    connection = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        result = [row[0] for row in connection.execute("PRAGMA integrity_check")]
    finally:
        connection.close()
    if result != ["ok"]:
        raise Unavailable(f"the backup failed its integrity check: {'; '.join(result[:5])}")


def sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
