"""Verbs for whoever runs the cluster: ``zriver backup FILE`` and ``zriver init service``.

``backup``: the host makes a consistent copy of its store while it runs (``backup.start``,
``zriver.host.backup``), the client fetches it in chunks into a temporary file beside FILE,
checks its size, SHA-256 and ``PRAGMA integrity_check``, and only then renames it to FILE.
An existing FILE is kept unless ``--force``; a failed backup leaves nothing behind.

``init service --host|--runner``: a systemd unit for that role (``zriver.units``), printed or
written to ``--output`` (an existing file only with ``--force``).
"""

from __future__ import annotations

import getpass
import hashlib
import os
from pathlib import Path

import apsw

from zriver import config as cfg
from zriver import units
from zriver.client.registry import Context, arg, command
from zriver.durable import sync_dir
from zriver.errors import Conflict, InvalidArgument, Unavailable, ZriverError

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
        sync_dir(target.parent)
    except BaseException:
        temporary.unlink(missing_ok=True)
        forget(client, made["name"])  # best effort: the error that stopped us is the news
        raise
    client.call("backup.done", {"name": made["name"]})
    ctx.print(f"{target}: {made['size']:,} bytes, tasks up to {made['last_task_id']}")
    return 0


def forget(client, name: str) -> None:
    """Ask the host to remove its copy, saying nothing if it cannot be reached (it removes an
    unfetched copy after an hour anyway)."""
    try:
        client.call("backup.done", {"name": name})
    except ZriverError:
        pass


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


@command(
    "init service", "print (or write) a systemd unit for a host or a runner",
    arg("--host", dest="role", action="store_const", const="host", help="zriver-host.service"),
    arg("--runner", dest="role", action="store_const", const="runner",
        help="zriver-runner.service (stop and restart leave its tasks running)"),
    arg("--config", help="the role's config file (default: $ZRIVER_HOME/<role>.toml)"),
    arg("--user", help="the account the role runs as (default: yours; a runner needs root to "
                       "run tasks as their owners' accounts)"),
    arg("--output", "-o", help="write the unit there (default: print it)"),
    arg("--force", action="store_true", help="overwrite an existing --output file"),
    description="Print a systemd unit that runs this zriver (the binary or interpreter this "
                "command runs with) as a host or a runner. A runner's unit has KillMode=process: "
                "systemctl stop and restart end the runner only, never its tasks. "
                "See docs/deploy.md.",
    needs_cluster=False,
)
def init_service(ctx: Context, args) -> int:
    if args.role is None:
        raise InvalidArgument("say which unit: --host or --runner")
    home = cfg.zriver_home().absolute()
    config = Path(args.config).absolute() if args.config else home / f"{args.role}.toml"
    command = units.zriver_command()
    spec = units.UnitSpec(args.role, command, str(config), args.user or getpass.getuser(),
                          str(home), units.package_root() if "-m" in command else None)
    text = units.render(spec)
    if not config.exists():
        print(f"zriver: note: {config} does not exist yet (zriver init config --{args.role} "
              f"writes one)", file=ctx.err)
    if not args.output or args.output == "-":
        ctx.out.write(text)
        return 0
    path = Path(args.output)
    if path.is_dir():
        raise InvalidArgument(f"{path} is a directory")
    if path.exists() and not args.force:
        raise Conflict(f"{path} exists; use --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.part-{os.getpid()}"
    temporary.write_text(text)
    os.replace(temporary, path)
    ctx.print(str(path))
    return 0
