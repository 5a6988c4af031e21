"""VPS tasks on the host: their SSH host keys, their activity, ``vps.*`` ops, the idle stop.

A VPS is a task with ``spec.kind == "vps"``: a persistent container on a runner that people
work in (``zriver vps create``). The core schedules it like any container task and holds its
resources until it ends; it is never ``lost`` (``dispatch.node_given_up``). This extension adds
what only VPS tasks have:

* the public SSH host key of the VPS's sshd, generated once by its runner and reported with
  ``vps.host_key`` (table ``vps_keys``, migration 7), so ``zriver ssh`` and ``zriver
  ssh-config`` pin it;
* activity: the relay calls ``touch(task_id, +1/-1)`` as streams to a task open and close;
* the idle stop: every heartbeat interval, a running VPS with ``idle_stop`` and no stream,
  using under 5% CPU (its runner reports ``tasks_cpu`` in heartbeats) for that long is stopped
  through ``vps.stop``, and its history says so;
* ops: ``vps.list``, ``vps.commit`` (people; service), ``vps.stop``, ``vps.restart`` (people;
  core, ``zriver.host.vpscore``), ``vps.host_key``, ``vps.restarted`` (runners).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog

from zriver import lifecycle as lc
from zriver.errors import InvalidArgument, NotFound
from zriver.host import vpscore
from zriver.host.ops import CORE, PEOPLE_ONLY, RUNNERS, SERVICE, OpTable
from zriver.host.store import Migration, Store
from zriver.principal import ADMIN, Principal
from zriver.protocol import arg
from zriver.sizes import format_duration
from zriver.spec import VPS

log = structlog.get_logger("zriver.host")

MIGRATION = Migration(7, "vps", """
CREATE TABLE vps_keys(
    task_id INTEGER PRIMARY KEY,
    host_key TEXT NOT NULL,
    reported_at REAL NOT NULL
);
""")
SYSTEM = Principal("zriver", ADMIN)
"""Who stops an idle VPS (the host itself)."""


class VpsKeyRecords:
    """All the SQL of ``vps_keys``, on the host's store connection."""

    def __init__(self, store: Store) -> None:
        self.conn = store.conn

    def get(self, task_id: int) -> str:
        rows = self.conn.execute("SELECT host_key FROM vps_keys WHERE task_id=?",
                                 (task_id,)).fetchall()
        return rows[0][0] if rows else ""

    def put(self, task_id: int, host_key: str) -> None:
        with self.conn:
            self.conn.execute("INSERT OR REPLACE INTO vps_keys(task_id, host_key, reported_at) "
                              "VALUES (?, ?, ?)", (task_id, host_key, time.time()))


class Vps:
    """The VPS extension (see the module docstring)."""

    name = "vps"
    migrations = [MIGRATION]

    def __init__(self) -> None:
        self.host: Any = None
        self.records: VpsKeyRecords | None = None
        self.streams: dict[int, int] = {}
        """task id -> streams open to it now (SSH sessions, connects, forwards)."""
        self.last_activity: dict[int, float] = {}
        """task id -> wall time a stream to it last opened or closed."""
        self.idle: dict[int, float] = {}
        """running VPS id -> wall time it became idle."""
        self._loop_task: asyncio.Task | None = None

    def register(self, ops: OpTable) -> None:
        ops.add("vps.list", self.list, PEOPLE_ONLY, SERVICE)
        ops.add("vps.commit", self.commit, PEOPLE_ONLY, SERVICE)
        ops.add("vps.stop", vpscore.stop, PEOPLE_ONLY, CORE)
        ops.add("vps.restart", vpscore.restart, PEOPLE_ONLY, CORE)
        ops.add("vps.restarted", vpscore.restarted, RUNNERS, CORE)
        ops.add("vps.host_key", self.host_key, RUNNERS, SERVICE)

    def attach(self, service: Any) -> None:
        self.host = service
        self.records = VpsKeyRecords(service.store)
        self._loop_task = asyncio.ensure_future(self._idle_loop())

    async def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)

    # ---- activity ------------------------------------------------------------------------
    def touch(self, task_id: int, delta: int) -> None:
        """A stream to ``task_id`` opened (``+1``) or closed (``-1``): the relay calls this."""
        count = max(0, self.streams.get(task_id, 0) + delta)
        if count:
            self.streams[task_id] = count
        else:
            self.streams.pop(task_id, None)
        self.last_activity[task_id] = time.time()

    def cpu_of(self, task: Any) -> float | None:
        node = self.host.nodes.get(task.node) if task.node else None
        usage = (node.heartbeat or {}).get("tasks_cpu") if node is not None else None
        value = usage.get(str(task.id)) if isinstance(usage, dict) else None
        return float(value) if isinstance(value, (int, float)) else None

    # ---- the idle stop -------------------------------------------------------------------
    async def _idle_loop(self) -> None:
        while True:
            await asyncio.sleep(self.host.settings.heartbeat_interval)
            try:
                await self.judge_idle(time.time())
            except Exception:  # never let one bad VPS stop the judging of the others
                log.exception("vps.idle_check_failed")

    async def judge_idle(self, now: float) -> None:
        """Stop every running VPS idle for its ``idle_stop``; forget ended ones."""
        live = {t.id: t for t in self.host.tasks.vps()}
        for gone in set(self.idle) - set(live):
            self.idle.pop(gone, None)
        for task in live.values():
            if task.state != lc.RUNNING or not task.spec.idle_stop:
                self.idle.pop(task.id, None)
                continue
            since = vpscore.idle_since(self.idle.get(task.id), self.streams.get(task.id, 0),
                                       self.cpu_of(task), self.last_activity.get(task.id, 0.0),
                                       now)
            if since is None:
                self.idle.pop(task.id, None)
            elif now - since >= task.spec.idle_stop:
                self.idle.pop(task.id, None)
                reason = (f"idle for {format_duration(now - since)} (no SSH session, no "
                          f"stream, under {vpscore.IDLE_CPU_PERCENT:g}% CPU; --idle-stop "
                          f"{format_duration(task.spec.idle_stop)})")
                log.info("vps.idle_stop", task=task.id, reason=reason)
                await self.host.call(SYSTEM, "vps.stop", {"id": task.id, "reason": reason})
            else:
                self.idle[task.id] = since

    # ---- ops -----------------------------------------------------------------------------
    def host_key(self, service: Any, request: Any, body: dict) -> dict:
        task_id = arg(body, "id", int)
        key = arg(body, "host_key", str)
        task = service.tasks.get(task_id)
        if task is None or task.node != request.principal.name or task.spec.kind != VPS:
            raise NotFound(f"no live VPS {task_id} on node {request.principal.name}")
        if not key.startswith("ssh-") or len(key) > 4096 or "\n" in key:
            raise InvalidArgument("host_key must be one OpenSSH public key line")
        service.begin()
        self.records.put(task_id, key)
        return {}

    def list(self, service: Any, request: Any, body: dict) -> dict:
        principal = request.principal
        now = time.time()
        rows = [self._row(task, now) for task in service.tasks.vps()
                if principal.may_act_on(task.spec.owner)]
        return {"vps": sorted(rows, key=lambda row: row["id"])}

    def _row(self, task: Any, now: float) -> dict[str, Any]:
        spec, alloc = task.spec, task.alloc
        return {
            "id": task.id, "name": spec.name, "owner": spec.owner, "node": task.node,
            "state": task.state, "cores": spec.cores, "memory": spec.memory,
            "gpus": len(getattr(alloc, "gpus", ()) or ()) or spec.gpus, "env": spec.container,
            "env_version": spec.env_version, "started_at": task.started_at,
            "idle_stop": spec.idle_stop, "idle_since": self.idle.get(task.id),
            "streams": self.streams.get(task.id, 0), "cpu_percent": self.cpu_of(task),
            "host_key": self.records.get(task.id),
        }

    async def commit(self, service: Any, request: Any, body: dict) -> dict:
        from zriver.host.vpscommit import commit_vps  # Docker and stream I/O: loaded on use

        task_id = arg(body, "id", int)
        env = arg(body, "env", str)
        task = service.tasks.get(task_id)
        if task is None or task.spec.kind != VPS:
            raise NotFound(f"no live VPS {task_id} (`zriver vps list` shows them)")
        vpscore.check_owner(request.principal, task.spec.owner, task_id, "commit")
        if task.state != lc.RUNNING:
            raise InvalidArgument(f"VPS {task_id} is {task.state}; only a running VPS can be "
                                  f"committed")
        return await commit_vps(service, request.principal, task_id, env)
