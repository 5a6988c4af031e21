"""Docker environments on the host: the env ops, their metadata, pinning, pruning.

An env is a persistent container on the host's Docker that people shape interactively
(``zriver env shell``) and snapshot (``zriver env commit``) into immutable, content-addressed
**versions**. A version is a ``docker save`` archive ``<store>/<env>/<version>.tar`` where
``<store>`` is ``<shared_dir>/envs`` when the cluster has a shared directory, else
``<data_dir>/envs``, and ``<version>`` is the first 12 hex digits of the archive's sha256.
Runners load versions into their own Docker (``zriver.runner.envsync``).

``Environments`` is an extension of the host (``zriver.host.extension``): it brings its ops
(with the roles that may call them), its migration and its SQL (``zriver.host.envstore``),
and keeps its state (Docker client, locks, newest versions) on itself. A user may create envs
and act on their own; admins on any. Runners fetch versions.

Invariants: a task's spec names the version it was submitted with (``pin_version``); a version
a pending or running task needs is never pruned or removed. Slow Docker work runs in a worker
thread (``zriver.host.envdocker``); handlers touching the database do so on the loop thread,
inside the tick's transaction (``host.begin()``).

Ops: ``env.create``, ``env.upload``, ``env.commit``, ``env.list``, ``env.rm``, ``env.shell``,
``env.sync`` (clients); ``env.version``, ``env.fetch`` (runners syncing; a client is refused);
``env.syncing`` (runners: progress shown as the detail of the tasks that wait for it, and
kept per node for ``env.sync``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import socket
import time
from pathlib import Path
from typing import Any, Callable

import structlog

from zriver import lifecycle as lc
from zriver.errors import Conflict, Forbidden, InvalidArgument, NotFound
from zriver.host.effects import Request
from zriver.host.envstore import MIGRATIONS, EnvRecords
from zriver.host.ops import PEOPLE_ONLY, RUNNERS, SERVICE, OpTable
from zriver.protocol import arg, arg_list
from zriver.spec import TaskSpec

log = structlog.get_logger("zriver.host")

NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
TOKEN = re.compile(r"^[0-9a-f]{16,64}$")
VERSION = re.compile(r"^[0-9a-f]{12}$")
FETCH_MAX = 1 << 20
UPLOAD_MAX = 4 << 20
PUSH_EVERY = 0.1
"""Seconds between two ``env.progress`` pushes of one phase."""
SYNC_REPORTS = 4096
"""The most (node, env, version) sync reports kept (the oldest go first)."""


class Reporter:
    """The progress of one slow env op, pushed to the client that waits for it.

    Called as ``reporter(phase, done=None, total=None)`` from any thread (the Docker work runs
    in workers); a push (``env.progress``, ``rid`` 0, body ``{"rid", "phase", "done",
    "total"}``) leaves at each new phase and at most every ``PUSH_EVERY`` seconds within one.
    Does nothing unless the request asked (``progress: true``, which older hosts ignore) and
    came over the ROUTER."""

    def __init__(self, service: Any, request: Request, body: dict) -> None:
        self.service, self.request = service, request
        self.wanted = (arg(body, "progress", bool, False) and request.link is not None
                       and service is not None)
        self._loop = asyncio.get_running_loop() if self.wanted else None
        self._phase: str | None = None
        self._sent = 0.0

    def __call__(self, phase: str, done: int | None = None, total: int | None = None) -> None:
        if not self.wanted:
            return
        now = time.monotonic()
        if phase == self._phase and now - self._sent < PUSH_EVERY:
            return
        self._phase, self._sent = phase, now
        body = {"rid": self.request.rid, "phase": phase, "done": done, "total": total}
        try:
            self._loop.call_soon_threadsafe(self.service.push, self.request, "env.progress",
                                            body)
        except RuntimeError:
            self.wanted = False  # the loop is closing: the answer will not come either


def _quiet(phase: str, done: int | None = None, total: int | None = None) -> None:
    """A reporter for work nobody watches."""



class Environments:
    """The env extension: ops ``env.*``, migration 4, and the per-host env state."""

    name = "envs"
    migrations = MIGRATIONS

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.service: Any = None
        self.records: EnvRecords | None = None
        self._docker = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.locks: dict[str, asyncio.Lock] = {}
        self.busy: set[str] = set()
        self.newest: dict[str, str | None] = {}
        self.sync_reports: dict[tuple[str, str, str], dict[str, Any]] = {}
        """(node, env, version) -> the last ``env.syncing`` of that sync, or ``asked`` by
        ``env.sync``: ``{"phase", "done", "total", "at"}`` (monotonic ``at``)."""

    # ---- the extension protocol ----------------------------------------------------------
    def register(self, ops: OpTable) -> None:
        for name, method, roles in (
            ("env.create", self.create, PEOPLE_ONLY), ("env.upload", self.upload, PEOPLE_ONLY),
            ("env.commit", self.commit, PEOPLE_ONLY), ("env.list", self.list_envs, PEOPLE_ONLY),
            ("env.rm", self.remove, PEOPLE_ONLY), ("env.shell", self.shell, PEOPLE_ONLY),
            ("env.version", self.version_info, RUNNERS), ("env.fetch", self.fetch, RUNNERS),
            ("env.syncing", self.syncing, RUNNERS), ("env.sync", self.sync, PEOPLE_ONLY),
        ):
            ops.add(name, _as_service_op(method), roles, SERVICE)

    def attach(self, service: Any) -> None:
        self.service = service
        self.records = EnvRecords(service.store)
        service.core.submit_checks.append(self.check_spec)

    async def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    # ---- helpers -------------------------------------------------------------------------
    @property
    def store_dir(self) -> Path:
        """Where version archives live: the shared directory when there is one."""
        shared = self.settings.shared_dir
        return Path(shared) / "envs" if shared else Path(self.settings.data_dir) / "envs"

    def docker(self):
        if self._docker is None:
            from zriver.host.envdocker import EnvDocker

            shared = self.settings.shared_dir
            self._docker = EnvDocker(self.settings.docker_host, self.settings.env_image_prefix,
                                     self.store_dir,
                                     Path(shared) / "shared_data" if shared else None)
        return self._docker

    async def _blocking(self, fn, *args):
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=4, thread_name_prefix="zriver-env")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _lock(self, name: str) -> asyncio.Lock:
        return self.locks.setdefault(name, asyncio.Lock())

    def _env(self, name: str) -> dict[str, Any]:
        env = self.records.env(name)
        if env is None:
            raise NotFound(f"unknown env {name!r}; known: {', '.join(self.records.names()) or 'none'} "
                           f"(`zriver env create` makes one)")
        return env

    def _own_env(self, request: Request, name: str, verb: str) -> dict[str, Any]:
        env = self._env(name)
        if not request.principal.may_act_on(env["owner"]):
            raise Forbidden(f"env {name} belongs to {env['owner'] or 'an admin'!r}: only its "
                            f"owner or an admin may {verb} it")
        return env

    def _version(self, name: str, version: str) -> dict[str, Any]:
        for row in self.records.versions(name):
            if row["version"] == version:
                return row
        raise NotFound(f"env {name} has no version {version} (removed or pruned); "
                       f"`zriver env list` shows the versions it has")

    def _in_use(self, name: str, version: str | None = None) -> list[int]:
        """Ids of unfinished tasks that need env ``name`` (at ``version`` when given)."""
        return [t.id for t in self.service.core.tasks.of_env(name)
                if (version is None or t.spec.env_version == version)
                and not lc.is_final(t.state)]

    def check_spec(self, request: Request, spec: TaskSpec) -> None:
        """A core submit check: fix the env version a docker task runs in (the newest unless
        the spec names one). ``NotFound`` for an unknown env (or version),
        ``InvalidArgument`` for an env with no committed version yet."""
        if spec.backend != "docker":
            return
        name = spec.container
        if not name:
            raise InvalidArgument("a container task needs an env: --container NAME "
                                  "(`zriver env list` shows them)")
        if spec.env_version:
            self._env(name)
            self._version(name, spec.env_version)
            return
        if name not in self.newest:
            self._env(name)
            versions = self.records.versions(name)
            self.newest[name] = versions[0]["version"] if versions else None
        newest = self.newest[name]
        if newest is None:
            raise InvalidArgument(f"env {name} has no committed version yet: "
                                  f"run `zriver env commit {name}` first")
        spec.env_version = newest

    def _upload_path(self, token: str) -> Path:
        return Path(self.settings.data_dir) / "uploads" / f"{token}.part"

    # ---- client ops ----------------------------------------------------------------------
    async def upload(self, request: Request, body: dict) -> dict:
        """Append a chunk to an upload (a rootfs tarball or a build context) at ``offset``."""
        token = arg(body, "token", str)
        if not TOKEN.match(token):
            raise InvalidArgument("upload token must be 16-64 lowercase hex digits")
        offset, data = arg(body, "offset", int), arg(body, "data", bytes)
        if len(data) > UPLOAD_MAX:
            raise InvalidArgument(f"upload chunks are at most {UPLOAD_MAX} bytes")
        path = self._upload_path(token)

        def append() -> int:
            path.parent.mkdir(parents=True, exist_ok=True)
            size = path.stat().st_size if path.exists() else 0
            if offset != size:
                raise Conflict(f"upload {token} has {size} bytes, not {offset}: resume at {size}")
            with open(path, "ab") as handle:
                handle.write(data)
            return size + len(data)

        return {"size": await self._blocking(append)}

    async def create(self, request: Request, body: dict) -> dict:
        """Make env ``name`` from ``image``, an uploaded tarball, or an uploaded build
        context; then (unless ``commit`` is false) commit its first version. The caller
        owns it."""
        name = _check_name(arg(body, "name", str))
        image, token = arg(body, "image", str, None), arg(body, "upload", str, None)
        dockerfile = arg(body, "dockerfile", str, None)
        if (image is None) == (token is None):
            raise InvalidArgument("give exactly one of an image or an uploaded tarball/context")
        if token is not None and not TOKEN.match(token):
            raise InvalidArgument("upload token must be 16-64 lowercase hex digits")
        if self.records.env(name) is not None or name in self.busy:
            raise Conflict(f"env {name} already exists (`zriver env rm {name}` first)")
        docker = self.docker()
        report = Reporter(self.service, request, body)
        self.busy.add(name)
        try:
            if image is not None:
                made = await self._blocking(docker.from_image, name, image, report)
                source = f"image {image}"
            else:
                path = self._upload_path(token)
                if not path.exists():
                    raise NotFound(f"no upload {token}")
                try:
                    if dockerfile is None:
                        made = await self._blocking(docker.from_tar, name, path, report)
                        source = "tarball"
                    else:
                        made = await self._blocking(docker.from_build, name, path, dockerfile,
                                                    report)
                        source = f"build of {dockerfile}"
                finally:
                    path.unlink(missing_ok=True)
            self.service.begin()
            self.records.add_env(name, source, made.image, made.container, made.config,
                                 time.time(), request.principal.name)
            self.newest[name] = None
            log.info("env.created", env=name, source=source, container=made.container[:12])
        finally:
            self.busy.discard(name)
        reply = {"name": name, "container": made.container, "source": source}
        if arg(body, "commit", bool, True):
            reply["version"] = await self._commit(name, "created", report)
        return reply

    async def commit(self, request: Request, body: dict) -> dict:
        name = arg(body, "name", str)
        self._own_env(request, name, "commit")
        version = await self._commit(name, arg(body, "message", str, ""),
                                     Reporter(self.service, request, body))
        return {"name": name, **version}

    async def _commit(self, name: str, message: str, report: Callable = _quiet) -> dict:
        """Commit env ``name``'s container into a version (``report`` hears the phases
        ``committing`` and ``saving``, bytes of the archive against the image's size)."""
        async with self._lock(name):
            env = self._env(name)
            docker = self.docker()
            archive = await self._blocking(docker.commit, name, env["container"], env["config"],
                                           message, report)
            now = time.time()
            self.service.begin()
            digest = self.records.version_digest(name, archive.version)
            if digest is not None and digest != archive.sha256:
                raise Conflict(f"version {archive.version} of {name} exists with other content")
            self.records.add_version(name, {
                "version": archive.version, "sha256": archive.sha256, "size": archive.size,
                "image_id": archive.image_id, "archive": archive.archive, "message": message,
                "created_at": now})
            self.newest[name] = archive.version
            pruned = await self._prune(name)
            log.info("env.committed", env=name, version=archive.version, size=archive.size,
                     pruned=pruned)
            return {"version": archive.version, "sha256": archive.sha256, "size": archive.size,
                    "created_at": now, "pruned": pruned}

    async def commit_image(self, principal: Any, name: str, image: str, message: str) -> dict:
        """Make ``image`` (in the host's Docker) the newest version of env ``name``, as
        ``env commit`` does: the env's container is made again from ``image`` (its former
        container is removed: ``env shell`` continues from the new version) and committed.
        A new env owned by ``principal`` when there is none (its run config from ``image``);
        an existing one only by its owner or an admin. Returns ``_commit``'s reply."""
        _check_name(name)
        request = Request(principal)
        docker = self.docker()
        if self.records.env(name) is None:
            await self.create(request, {"name": name, "image": image, "commit": False})
        else:
            env = self._own_env(request, name, "commit into")
            async with self._lock(name):
                container = await self._blocking(docker.replace_container, name,
                                                 env["container"], image)
                self.service.begin()
                self.records.set_container(name, container)
        return await self._commit(name, message)

    async def _prune(self, name: str) -> list[str]:
        """Drop versions beyond ``env_keep_versions`` that no unfinished task needs."""
        keep = max(1, self.settings.env_keep_versions)
        drop = [v for v in self.records.versions(name)[keep:]
                if not self._in_use(name, v["version"])]
        await self._forget_versions(name, drop)
        return [v["version"] for v in drop]

    async def _forget_versions(self, name: str, versions: list[dict]) -> None:
        """Forget versions: rows first (no task can pin them any more), then archives and
        tags."""
        if not versions:
            return
        self.service.begin()
        self.records.remove_versions(name, [v["version"] for v in versions])
        docker = self.docker()
        for v in versions:
            self._tell_runners(name, v["version"])
        for v in versions:
            await self._blocking(docker.remove_version, name, v["version"], v["archive"])

    def _tell_runners(self, name: str, version: str | None) -> None:
        """Ask online runners to drop their local copy (best effort; they also prune by
        count)."""
        for node in self.service.core.nodes.values():
            if node.registered and node.state != "offline":
                self.service.command(node.name, "env.forget", {"name": name, "version": version})

    async def remove(self, request: Request, body: dict) -> dict:
        """``env rm NAME [--version V]``: refused while a pending or running task needs it."""
        name = arg(body, "name", str)
        version = arg(body, "version", str, None)
        env = self._own_env(request, name, "remove")
        async with self._lock(name):
            users = self._in_use(name, version)
            if users:
                what = f"version {version} of env {name}" if version else f"env {name}"
                raise Conflict(f"{what} is needed by unfinished tasks {_ids(users)}; "
                               f"kill them or wait for them first")
            docker = self.docker()
            if version is not None:
                await self._forget_versions(name, [self._version(name, version)])
                versions = self.records.versions(name)
                self.newest[name] = versions[0]["version"] if versions else None
                return {"removed": [version]}
            versions = self.records.versions(name)
            await self._forget_versions(name, versions)
            self.service.begin()
            self.records.remove_env(name)
            self.newest.pop(name, None)
            await self._blocking(docker.remove_env, name, env["container"], env["base_image"])
            self._tell_runners(name, None)
            log.info("env.removed", env=name)
            return {"removed": [v["version"] for v in versions], "env": name}

    async def shell(self, request: Request, body: dict) -> dict:
        """Where to ``docker exec`` for an interactive shell: the env container, running."""
        name = arg(body, "name", str)
        env = self._own_env(request, name, "open a shell in")
        docker = self.docker()
        versions = self.records.versions(name)
        image = docker.version_tag(name, versions[0]["version"]) if versions else env["base_image"]
        async with self._lock(name):
            container = await self._blocking(docker.ensure_running, name, env["container"],
                                             image)
            if container != env["container"]:
                self.service.begin()
                self.records.set_container(name, container)
        return {"name": name, "container": container, "hostname": socket.gethostname(),
                "docker_host": self.settings.docker_host}

    async def list_envs(self, request: Request, body: dict) -> dict:
        """Every env (or one), its versions, its container's state, and what each node has."""
        only = arg(body, "name", str, None)
        names = [only] if only else self.records.names()
        envs = []
        for name in names:
            env = self._env(name)
            versions = self.records.versions(name)
            for v in versions:
                v["tasks"] = len(self._in_use(name, v["version"]))
                v.pop("archive")
            envs.append({"name": name, "source": env["source"], "base_image": env["base_image"],
                         "container": env["container"], "created_at": env["created_at"],
                         "owner": env["owner"], "versions": versions,
                         "nodes": self._nodes_having(name)})
        docker = self.docker()
        status = await self._blocking(docker.ping)
        if status["available"] and envs:
            states = await self._blocking(lambda: [docker.state(e["container"]) for e in envs])
        else:
            states = ["unknown (Docker unavailable)"] * len(envs)
        for env, state in zip(envs, states):
            env["container_state"] = state
        return {"envs": envs, "store": str(self.store_dir), "docker": status}

    def _nodes_having(self, name: str) -> dict[str, dict[str, Any]]:
        """From heartbeats: per node, the versions of ``name`` it has and the one it syncs."""
        result = {}
        for node in sorted(self.service.core.nodes.values(), key=lambda n: n.name):
            status = node.heartbeat.get("docker") or {}
            have = (status.get("images") or {}).get(name, [])
            syncing = (status.get("syncing") or {}).get(name)
            if have or syncing:
                result[node.name] = {"versions": have, "syncing": syncing}
        return result

    # ---- runner ops ----------------------------------------------------------------------
    def version_info(self, request: Request, body: dict) -> dict:
        """What a runner needs to sync one version: digest, size and archive location."""
        name, version = arg(body, "name", str), arg(body, "version", str)
        row = self._version(name, version)
        return {"name": name, "version": version, "sha256": row["sha256"], "size": row["size"],
                "image_id": row["image_id"], "archive": row["archive"],
                "created_at": row["created_at"]}

    async def fetch(self, request: Request, body: dict) -> dict:
        """A slice of a version archive (at most 1 MiB), with the archive's size and digest."""
        name, version = arg(body, "name", str), arg(body, "version", str)
        offset = arg(body, "offset", int)
        limit = min(arg(body, "limit", int, FETCH_MAX), FETCH_MAX)
        if offset < 0 or limit <= 0:
            raise InvalidArgument("offset must not be negative and limit must be positive")
        row = self._version(name, version)
        path = self.store_dir / row["archive"]

        def read() -> bytes:
            with open(path, "rb") as handle:
                handle.seek(offset)
                return handle.read(limit)

        try:
            data = await self._blocking(read)
        except FileNotFoundError:
            raise NotFound(f"the archive of {name} version {version} is missing on the host "
                           f"({path})") from None
        return {"data": data, "offset": offset, "size": row["size"], "sha256": row["sha256"]}

    def syncing(self, request: Request, body: dict) -> dict:
        """A runner says where a sync stands (``done``/``total``: bytes of a download, when
        sent): kept for ``env.sync``, and shown as the detail of the tasks that wait."""
        node = request.principal.name
        name, version = arg(body, "name", str), arg(body, "version", str)
        phase = arg(body, "phase", str)
        self._report(node, name, version, phase, arg(body, "done", int, None),
                     arg(body, "total", int, None))
        detail = f"syncing env {name} {version} on {node}: {phase}"
        self.service.begin()
        for task_id in arg_list(body, "tasks", int, []):
            task = self.service.core.tasks.get(task_id)
            if task is not None and task.node == node and task.state == lc.ASSIGNED:
                self.service.store.update_task(task_id, detail=detail)
        return {}

    def _report(self, node: str, name: str, version: str, phase: str,
                done: int | None = None, total: int | None = None) -> None:
        key = (node, name, version)
        self.sync_reports.pop(key, None)  # (re-inserted last: the oldest go first)
        self.sync_reports[key] = {"phase": phase[:200], "done": done, "total": total,
                                  "at": time.monotonic()}
        while len(self.sync_reports) > SYNC_REPORTS:
            self.sync_reports.pop(next(iter(self.sync_reports)))

    def sync(self, request: Request, body: dict) -> dict:
        """``env sync``: have nodes load a version of env ``name`` now (the newest unless
        ``version``; every online node with Docker unless ``nodes``), so tasks need not wait
        for it; with ``start`` false, only say where each stands. Replies ``{name, version,
        nodes: {node: {state, phase, done, total, seconds}}}``, ``state`` one of ``done``,
        ``syncing``, ``failed`` (``phase`` says why) or ``waiting`` (asked, nothing heard yet:
        ``seconds`` since)."""
        name = arg(body, "name", str)
        self._env(name)
        version = arg(body, "version", str, None) or self._newest(name)
        self._version(name, version)
        nodes = self._sync_targets(arg_list(body, "nodes", str, []))
        if arg(body, "start", bool, True):
            for node in nodes:
                if version in self._has(node, name):
                    self._report(node, name, version, "done")
                else:
                    self._report(node, name, version, "asked")
                    self.service.command(node, "env.sync", {"name": name, "version": version})
        return {"name": name, "version": version,
                "nodes": {node: self._sync_state(node, name, version) for node in nodes}}

    def _newest(self, name: str) -> str:
        versions = self.records.versions(name)
        if not versions:
            raise InvalidArgument(f"env {name} has no committed version yet: "
                                  f"run `zriver env commit {name}` first")
        return versions[0]["version"]

    def _sync_targets(self, asked: list[str]) -> list[str]:
        """The nodes named (each must be online with Docker), else every such node."""
        nodes = self.service.core.nodes
        able = sorted(n.name for n in nodes.values()
                      if n.registered and n.state == "online"
                      and "docker" in (n.info.get("backends") or []))
        if not asked:
            if not able:
                raise InvalidArgument("no online node has Docker: nothing to sync to")
            return able
        for node in asked:
            if node not in nodes:
                raise NotFound(f"unknown node {node!r}; known: {', '.join(sorted(nodes))}")
            if node not in able:
                raise InvalidArgument(f"node {node} is not online with Docker")
        return sorted(set(asked))

    def _has(self, node: str, name: str) -> list[str]:
        record = self.service.core.nodes.get(node)
        status = (record.heartbeat.get("docker") or {}) if record is not None else {}
        return (status.get("images") or {}).get(name, [])

    def _sync_state(self, node: str, name: str, version: str) -> dict[str, Any]:
        report = self.sync_reports.get((node, name, version))
        seconds = round(time.monotonic() - report["at"], 1) if report else None
        phase = report["phase"] if report else ""
        if phase == "done" or (version in self._has(node, name) and phase != "asked"):
            state = "done"
        elif phase.startswith("failed"):
            state = "failed"
        elif phase in ("asked", ""):
            state, phase = "waiting", "waiting"
        else:
            state = "syncing"
        return {"state": state, "phase": phase, "done": report and report["done"],
                "total": report and report["total"], "seconds": seconds}


def _as_service_op(method: Callable) -> Callable:
    """An ``Environments`` method as a ``service`` op handler ``(service, request, body)``."""

    def handler(service: Any, request: Request, body: dict) -> Any:
        return method(request, body)

    handler.__name__ = method.__name__
    return handler


def _check_name(name: str) -> str:
    if not NAME.match(name or ""):
        raise InvalidArgument(f"bad env name {name!r}: 1-64 lowercase letters, digits, "
                              f"_ . - (starting with a letter or digit)")
    return name


def _ids(ids: list[int]) -> str:
    return ", ".join(map(str, ids[:10])) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
