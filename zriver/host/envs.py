"""Docker environments on the host: the env ops, their metadata, pinning, pruning.

An env is a persistent container on the host's Docker that people shape interactively
(``zriver env shell``) and snapshot (``zriver env commit``) into immutable, content-addressed
**versions**. A version is a ``docker save`` archive ``<store>/<env>/<version>.tar`` where
``<store>`` is ``<shared_dir>/envs`` when the cluster has a shared directory, else
``<data_dir>/envs``, and ``<version>`` is the first 12 hex digits of the archive's sha256.
Runners load versions into their own Docker (``zriver.runner.envsync``).

Metadata lives in two tables this module creates on the host's database connection (the
lead's ``Store`` owns the rest of that file; these tables are ours):

* ``envs(name, source, base_image, container, config, created_at)``
* ``env_versions(name, version, sha256, size, image_id, archive, message, created_at)``

Invariants: a task's spec names the version it was submitted with (``pin_version``); a version
a pending or running task needs is never pruned or removed. Slow Docker work runs in a worker
thread (``zriver.host.envdocker``); handlers touching the database do so on the loop thread,
inside the tick's transaction (``host.begin()``).

Ops: ``env.create``, ``env.upload``, ``env.commit``, ``env.list``, ``env.rm``, ``env.shell``
(clients); ``env.version``, ``env.fetch`` (runners syncing; a client is refused);
``env.syncing`` (runners: progress shown as the detail of the tasks that wait for it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import socket
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import structlog

from zriver.errors import BadRequest, Conflict, InvalidArgument, NotFound
from zriver import lifecycle as lc
from zriver.protocol import arg, arg_list

log = structlog.get_logger("zriver.host")

NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
TOKEN = re.compile(r"^[0-9a-f]{16,64}$")
VERSION = re.compile(r"^[0-9a-f]{12}$")
FETCH_MAX = 1 << 20
UPLOAD_MAX = 4 << 20

SCHEMA = """
CREATE TABLE IF NOT EXISTS envs(
    name TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    base_image TEXT NOT NULL,
    container TEXT,
    config BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS env_versions(
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    image_id TEXT NOT NULL,
    archive TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    PRIMARY KEY(name, version)
);
"""

_EXECUTOR = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="zriver-env")


@dataclass
class _State:
    """Per-host env state that is not in the database."""

    docker: Any = None
    schema: bool = False
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    busy: set[str] = field(default_factory=set)
    newest: dict[str, str | None] = field(default_factory=dict)


_STATES: "weakref.WeakKeyDictionary[Any, _State]" = weakref.WeakKeyDictionary()


def _state(host) -> _State:
    state = _STATES.get(host)
    if state is None:
        state = _STATES[host] = _State()
    if not state.schema:
        # Trusted only once seen committed: a handler that raises rolls its SAVEPOINT back,
        # tables created in it included.
        conn = host.store.conn
        found = conn.execute("SELECT count(*) FROM sqlite_master WHERE type='table' AND "
                             "name IN ('envs', 'env_versions')").fetchall()[0][0]
        if found == 2 and not conn.in_transaction:
            state.schema = True
        elif found < 2:
            with conn:
                conn.execute(SCHEMA)
    return state


def store_dir(host) -> Path:
    """Where version archives live: the shared directory when there is one."""
    shared = host.settings.shared_dir
    return Path(shared) / "envs" if shared else Path(host.settings.data_dir) / "envs"


def _docker(host):
    state = _state(host)
    if state.docker is None:
        from zriver.host.envdocker import EnvDocker

        shared = host.settings.shared_dir
        state.docker = EnvDocker(host.settings.docker_host, host.settings.env_image_prefix,
                                 store_dir(host), Path(shared) / "shared_data" if shared else None)
    return state.docker


async def _blocking(fn, *args):
    return await asyncio.get_running_loop().run_in_executor(_EXECUTOR, fn, *args)


# ---- metadata ------------------------------------------------------------------------------
def _env(host, name: str) -> dict[str, Any]:
    rows = host.store.conn.execute(
        "SELECT name, source, base_image, container, config, created_at FROM envs WHERE name=?",
        (name,)).fetchall()
    if not rows:
        known = [r[0] for r in host.store.conn.execute("SELECT name FROM envs ORDER BY name")]
        raise NotFound(f"unknown env {name!r}; known: {', '.join(known) or 'none'} "
                       f"(`zriver env create` makes one)")
    name, source, base, container, config, created = rows[0]
    return {"name": name, "source": source, "base_image": base, "container": container,
            "config": msgpack.unpackb(config, raw=False), "created_at": created}


def _versions(host, name: str) -> list[dict[str, Any]]:
    """Versions of ``name``, newest first."""
    rows = host.store.conn.execute(
        "SELECT version, sha256, size, image_id, archive, message, created_at FROM env_versions "
        "WHERE name=? ORDER BY created_at DESC, rowid DESC", (name,)).fetchall()
    keys = ("version", "sha256", "size", "image_id", "archive", "message", "created_at")
    return [dict(zip(keys, row)) for row in rows]


def _version(host, name: str, version: str) -> dict[str, Any]:
    for row in _versions(host, name):
        if row["version"] == version:
            return row
    raise NotFound(f"env {name} has no version {version} (removed or pruned); "
                   f"`zriver env list` shows the versions it has")


def _in_use(host, name: str, version: str | None = None) -> list[int]:
    """Ids of unfinished tasks that need env ``name`` (at ``version`` when given)."""
    return sorted(t.id for t in host.tasks.values()
                  if t.spec.backend == "docker" and t.spec.container == name
                  and (version is None or t.spec.env_version == version)
                  and not lc.is_final(t.state))


def _check_name(name: str) -> str:
    if not NAME.match(name or ""):
        raise InvalidArgument(f"bad env name {name!r}: 1-64 lowercase letters, digits, "
                              f"_ . - (starting with a letter or digit)")
    return name


def pin_version(host, spec) -> None:
    """Fix the env version a docker task runs in: the newest unless the spec names one.

    ``NotFound`` for an unknown env (or version), ``InvalidArgument`` for an env with no
    committed version yet."""
    state = _state(host)
    name = spec.container
    if not name:
        raise InvalidArgument("a container task needs an env: --container NAME "
                              "(`zriver env list` shows them)")
    if spec.env_version:
        _env(host, name)
        _version(host, name, spec.env_version)
        return
    if name not in state.newest:
        _env(host, name)
        versions = _versions(host, name)
        state.newest[name] = versions[0]["version"] if versions else None
    newest = state.newest[name]
    if newest is None:
        raise InvalidArgument(f"env {name} has no committed version yet: "
                              f"run `zriver env commit {name}` first")
    spec.env_version = newest


# ---- client ops ----------------------------------------------------------------------------
async def upload(host, caller, body: dict) -> dict:
    """Append a chunk to an upload (a rootfs tarball or a build context) at ``offset``."""
    token = arg(body, "token", str)
    if not TOKEN.match(token):
        raise InvalidArgument("upload token must be 16-64 lowercase hex digits")
    offset, data = arg(body, "offset", int), arg(body, "data", bytes)
    if len(data) > UPLOAD_MAX:
        raise InvalidArgument(f"upload chunks are at most {UPLOAD_MAX} bytes")
    path = _upload_path(host, token)

    def append() -> int:
        path.parent.mkdir(parents=True, exist_ok=True)
        size = path.stat().st_size if path.exists() else 0
        if offset != size:
            raise Conflict(f"upload {token} has {size} bytes, not {offset}: resume at {size}")
        with open(path, "ab") as handle:
            handle.write(data)
        return size + len(data)

    return {"size": await _blocking(append)}


def _upload_path(host, token: str) -> Path:
    return Path(host.settings.data_dir) / "uploads" / f"{token}.part"


async def create(host, caller, body: dict) -> dict:
    """Make env ``name`` from ``image``, an uploaded tarball, or an uploaded build context;
    then (unless ``commit`` is false) commit its first version."""
    state = _state(host)
    name = _check_name(arg(body, "name", str))
    image, token = arg(body, "image", str, None), arg(body, "upload", str, None)
    dockerfile = arg(body, "dockerfile", str, None)
    if (image is None) == (token is None):
        raise InvalidArgument("give exactly one of an image or an uploaded tarball/context")
    if token is not None and not TOKEN.match(token):
        raise InvalidArgument("upload token must be 16-64 lowercase hex digits")
    exists = host.store.conn.execute("SELECT 1 FROM envs WHERE name=?", (name,)).fetchall()
    if exists or name in state.busy:
        raise Conflict(f"env {name} already exists (`zriver env rm {name}` first)")
    docker = _docker(host)
    state.busy.add(name)
    try:
        if image is not None:
            made = await _blocking(docker.from_image, name, image)
            source = f"image {image}"
        else:
            path = _upload_path(host, token)
            if not path.exists():
                raise NotFound(f"no upload {token}")
            try:
                if dockerfile is None:
                    made = await _blocking(docker.from_tar, name, path)
                    source = "tarball"
                else:
                    made = await _blocking(docker.from_build, name, path, dockerfile)
                    source = f"build of {dockerfile}"
            finally:
                path.unlink(missing_ok=True)
        host.begin()
        with host.store.conn:
            host.store.conn.execute(
                "INSERT INTO envs(name, source, base_image, container, config, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (name, source, made.image, made.container, msgpack.packb(made.config),
                 time.time()))
        state.newest[name] = None
        log.info("env.created", env=name, source=source, container=made.container[:12])
    finally:
        state.busy.discard(name)
    reply = {"name": name, "container": made.container, "source": source}
    if arg(body, "commit", bool, True):
        reply["version"] = await _commit(host, name, "created")
    return reply


async def commit(host, caller, body: dict) -> dict:
    name = arg(body, "name", str)
    _env(host, name)
    version = await _commit(host, name, arg(body, "message", str, ""))
    return {"name": name, **version}


async def _commit(host, name: str, message: str) -> dict:
    state = _state(host)
    lock = state.locks.setdefault(name, asyncio.Lock())
    async with lock:
        env = _env(host, name)
        docker = _docker(host)
        archive = await _blocking(docker.commit, name, env["container"], env["config"], message)
        now = time.time()
        host.begin()
        with host.store.conn:
            same = host.store.conn.execute(
                "SELECT sha256 FROM env_versions WHERE name=? AND version=?",
                (name, archive.version)).fetchall()
            if same and same[0][0] != archive.sha256:
                raise Conflict(f"version {archive.version} of {name} exists with other content")
            host.store.conn.execute(
                "INSERT OR REPLACE INTO env_versions(name, version, sha256, size, image_id, "
                "archive, message, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (name, archive.version, archive.sha256, archive.size, archive.image_id,
                 archive.archive, message, now))
        state.newest[name] = archive.version
        pruned = await _prune(host, name)
        log.info("env.committed", env=name, version=archive.version, size=archive.size,
                 pruned=pruned)
        return {"version": archive.version, "sha256": archive.sha256, "size": archive.size,
                "created_at": now, "pruned": pruned}


async def _prune(host, name: str) -> list[str]:
    """Drop versions beyond ``env_keep_versions`` that no unfinished task needs."""
    keep = max(1, host.settings.env_keep_versions)
    drop = [v for v in _versions(host, name)[keep:] if not _in_use(host, name, v["version"])]
    await _forget_versions(host, name, drop)
    return [v["version"] for v in drop]


async def _forget_versions(host, name: str, versions: list[dict]) -> None:
    """Forget versions: rows first (no task can pin them any more), then archives and tags."""
    if not versions:
        return
    host.begin()
    with host.store.conn:
        for v in versions:
            host.store.conn.execute("DELETE FROM env_versions WHERE name=? AND version=?",
                                    (name, v["version"]))
    docker = _docker(host)
    for v in versions:
        _tell_runners(host, name, v["version"])
    for v in versions:
        await _blocking(docker.remove_version, name, v["version"], v["archive"])


def _tell_runners(host, name: str, version: str | None) -> None:
    """Ask online runners to drop their local copy (best effort; they also prune by count)."""
    for node in host.nodes.values():
        if node.registered and node.state != "offline":
            host.command(node.name, "env.forget", {"name": name, "version": version})


async def remove(host, caller, body: dict) -> dict:
    """``env rm NAME [--version V]``: refused while a pending or running task needs it."""
    state = _state(host)
    name = arg(body, "name", str)
    version = arg(body, "version", str, None)
    env = _env(host, name)
    lock = state.locks.setdefault(name, asyncio.Lock())
    async with lock:
        users = _in_use(host, name, version)
        if users:
            what = f"version {version} of env {name}" if version else f"env {name}"
            raise Conflict(f"{what} is needed by unfinished tasks {_ids(users)}; "
                           f"kill them or wait for them first")
        docker = _docker(host)
        if version is not None:
            await _forget_versions(host, name, [_version(host, name, version)])
            versions = _versions(host, name)
            state.newest[name] = versions[0]["version"] if versions else None
            return {"removed": [version]}
        versions = _versions(host, name)
        await _forget_versions(host, name, versions)
        host.begin()
        with host.store.conn:
            host.store.conn.execute("DELETE FROM envs WHERE name=?", (name,))
        state.newest.pop(name, None)
        await _blocking(docker.remove_env, name, env["container"], env["base_image"])
        _tell_runners(host, name, None)
        log.info("env.removed", env=name)
        return {"removed": [v["version"] for v in versions], "env": name}


def _ids(ids: list[int]) -> str:
    return ", ".join(map(str, ids[:10])) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")


async def shell(host, caller, body: dict) -> dict:
    """Where to ``docker exec`` for an interactive shell: the env container, running."""
    name = arg(body, "name", str)
    env = _env(host, name)
    docker = _docker(host)
    versions = _versions(host, name)
    image = docker.version_tag(name, versions[0]["version"]) if versions else env["base_image"]
    lock = _state(host).locks.setdefault(name, asyncio.Lock())
    async with lock:
        container = await _blocking(docker.ensure_running, name, env["container"], image)
        if container != env["container"]:
            host.begin()
            with host.store.conn:
                host.store.conn.execute("UPDATE envs SET container=? WHERE name=?",
                                        (container, name))
    return {"name": name, "container": container, "hostname": socket.gethostname(),
            "docker_host": host.settings.docker_host}


async def list_envs(host, caller, body: dict) -> dict:
    """Every env (or one), its versions, its container's state, and what each node has."""
    _state(host)
    only = arg(body, "name", str, None)
    names = [only] if only else [r[0] for r in host.store.conn.execute(
        "SELECT name FROM envs ORDER BY name")]
    envs = []
    for name in names:
        env = _env(host, name)
        versions = _versions(host, name)
        for v in versions:
            v["tasks"] = len(_in_use(host, name, v["version"]))
            v.pop("archive")
        envs.append({"name": name, "source": env["source"], "base_image": env["base_image"],
                     "container": env["container"], "created_at": env["created_at"],
                     "versions": versions, "nodes": _nodes_having(host, name)})
    docker = _docker(host)
    status = await _blocking(docker.ping)
    if status["available"] and envs:
        states = await _blocking(lambda: [docker.state(e["container"]) for e in envs])
    else:
        states = ["unknown (Docker unavailable)"] * len(envs)
    for env, state in zip(envs, states):
        env["container_state"] = state
    return {"envs": envs, "store": str(store_dir(host)), "docker": status}


def _nodes_having(host, name: str) -> dict[str, dict[str, Any]]:
    """From heartbeats: per node, the versions of ``name`` it has and the one it syncs."""
    result = {}
    for node in sorted(host.nodes.values(), key=lambda n: n.name):
        status = node.heartbeat.get("docker") or {}
        have = (status.get("images") or {}).get(name, [])
        syncing = (status.get("syncing") or {}).get(name)
        if have or syncing:
            result[node.name] = {"versions": have, "syncing": syncing}
    return result


# ---- runner ops ----------------------------------------------------------------------------
def version_info(host, caller, body: dict) -> dict:
    """What a runner needs to sync one version: digest, size and archive location."""
    _runner_only(caller)
    _state(host)
    name, version = arg(body, "name", str), arg(body, "version", str)
    row = _version(host, name, version)
    return {"name": name, "version": version, "sha256": row["sha256"], "size": row["size"],
            "image_id": row["image_id"], "archive": row["archive"],
            "created_at": row["created_at"]}


async def fetch(host, caller, body: dict) -> dict:
    """A slice of a version archive (at most 1 MiB), with the archive's size and digest."""
    _runner_only(caller)
    _state(host)
    name, version = arg(body, "name", str), arg(body, "version", str)
    offset = arg(body, "offset", int)
    limit = min(arg(body, "limit", int, FETCH_MAX), FETCH_MAX)
    if offset < 0 or limit <= 0:
        raise InvalidArgument("offset must not be negative and limit must be positive")
    row = _version(host, name, version)
    path = store_dir(host) / row["archive"]

    def read() -> bytes:
        with open(path, "rb") as handle:
            handle.seek(offset)
            return handle.read(limit)

    try:
        data = await _blocking(read)
    except FileNotFoundError:
        raise NotFound(f"the archive of {name} version {version} is missing on the host "
                       f"({path})") from None
    return {"data": data, "offset": offset, "size": row["size"], "sha256": row["sha256"]}


def syncing(host, caller, body: dict) -> dict:
    """A runner says tasks wait for an env sync: show it as their detail."""
    node = _runner_only(caller)
    name, version = arg(body, "name", str), arg(body, "version", str)
    phase = arg(body, "phase", str)
    detail = f"syncing env {name} {version} on {node}: {phase}"
    for task_id in arg_list(body, "tasks", int, []):
        task = host.tasks.get(task_id)
        if task is not None and task.node == node and task.state == lc.ASSIGNED:
            host.store.update_task(task_id, detail=detail)
    return {}


def _runner_only(caller) -> str:
    """The calling runner's node name; ``BadRequest`` for a client."""
    if caller.node is None:
        raise BadRequest("only runners may send this op")
    return caller.node


ENV_HANDLERS = {
    "env.create": create,
    "env.upload": upload,
    "env.commit": commit,
    "env.list": list_envs,
    "env.rm": remove,
    "env.shell": shell,
    "env.version": version_info,
    "env.fetch": fetch,
    "env.syncing": syncing,
}
