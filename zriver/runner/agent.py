"""The runner agent: registers with the host, runs what it is told, reports what happened.

Wire: a DEALER (identity ``r:<node name>:<instance>``) to the host's ROUTER for requests,
replies and the host's commands; an XPUB to the host's XSUB for heartbeats (``hb.<node>``)
and log chunks, whose subscriptions say which task logs are followed
(``zriver.runner.uplink``, ``zriver.runner.logtail``); under ``zriver up`` both are an
in-process link instead (``zriver.inproc``: the same envelopes, passed as objects). Once
registered, a second DEALER (``s:<node>:<instance>``) to the port the register reply names
(``stream_port``) for byte streams (``zriver.runner.streams``: shells, port forwards).

Updates (task state changes) go through the persistent outbox of ``Ledger``: the updates of a
loop tick leave as one ``task.update`` message and become one outbox row; at most one such
message is in flight, and the next batch leaves when its reply arrives (self-clocking), or the
same batch is re-sent after ``request_timeout`` (the host applies resends idempotently).

The ledger is written behind, at most ``WRITE_DELAY`` after the tick: a row the host has
acknowledged by then is never written, nor is the ``started`` record of a task that has already
ended (for short tasks, most ticks write nothing). A runner that crashes in that window loses
what the host did not receive yet, exactly as if it had crashed before noticing the task end:
the host marks such tasks ``lost``.

A host restart is noticed by the host, which asks every runner whose heartbeat it sees but that
has not registered with it to register again (``runner.reregister``).

Native tasks are owned by the node's keeper (``zriver.runner.keeper``), which outlives this
agent: a restarted agent re-adopts them before it registers. The lease: every reply of the host
renews the runner's contact with it from the time the request left (``_lease_from``); a start,
staged or not, is launched only while ``lease_from + lease`` lies ahead, and the keeper kills
starts the host never recorded once it has passed, and every task at ``fence_at`` (the host's
grace, less the kill grace and one lease), so that no task runs beside its retry elsewhere.
The DEALER identity ``r:<node>:<instance>`` is new in every life: the host refuses a second
live runner claiming a connected node's name.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import time
from pathlib import Path
from typing import Any, Callable

import apsw
import psutil
import structlog

from zriver import bundle
from zriver.config import RunnerSettings
from zriver.errors import BadVersion, Conflict, ZriverError, error_from_reply
from zriver.keys import runner_client_keys
from zriver.logfiles import log_path, read_slice
from zriver.protocol import ERROR, OK, Envelope, arg
from zriver.runner import resources
from zriver.runner.accounts import can_switch, own_name
from zriver.runner.backends import Exit, Job, StartError
from zriver.runner.backends.native import NativeBackend
from zriver.runner.cgroups import MemoryLimiter
from zriver.runner.lease import Lease
from zriver.runner.taskcpu import ContainerCpu
from zriver.runner.ledger import Ledger
from zriver.runner.logtail import LogTail
from zriver.runner.streams import StreamEndpoint
from zriver.runner.streamtargets import ContainerTargets, docker_socket
from zriver.runner.uplink import SocketUplink
from zriver.spec import TaskSpec
from zriver.wire import Wire

log = structlog.get_logger("zriver.runner")
MAX_BATCH = 2000
RUNNING_HOLD = 0.002
BUSY_GAP = 0.002
"""Under load, an update batch leaves at most this long after the host's last reply..."""
MIN_BATCH = 32
"""... unless it has this many updates (see ``Runner._hold_small``)."""
WRITE_DELAY = 0.005
"""New outbox rows and start records reach the ledger at most this long after their tick."""
LEDGER_RETRY = 1.0
"""Seconds before a ledger write that failed (disk full) is tried again."""
CONFLICT_PATIENCE = 3.0
"""Seconds a runner whose node name is held by a connected runner keeps asking."""
ACK_WRITE_DELAY = 0.5
"""Written rows the host acknowledged are deleted with the next writes, or after this long."""


class Runner:
    """One node agent. ``start`` connects and registers in the background; ``stop`` ends it.

    ``link``: reach the host over this in-process link (``Host.runner_link``, ``zriver up``)
    instead of its ROUTER and XSUB sockets."""

    def __init__(self, settings: RunnerSettings, link: Any = None) -> None:
        self.settings = settings.resolved()
        self.link = link
        self.name = self.settings.name
        self.data_dir = Path(self.settings.data_dir)
        self.registered = asyncio.Event()
        self.fatal: str | None = None
        self.fatal_code = ""
        self.failed = asyncio.Event()
        self.instance = secrets.token_hex(8)  # secret: the host never shows it to others
        self.heartbeat_interval = 2.0
        self.lease = Lease(self.settings.kill_grace)
        self._needs_register = False
        self._lapsed = False  # the lease ran out and nothing renewed it since
        self._pings: dict[int, float] = {}  # rid of a ping or heartbeat in flight -> sent at
        self.heartbeat_requests = True
        """Send heartbeats as ``runner.heartbeat`` requests where the host offers them (its
        register reply's ``heartbeat_request``); False publishes ``hb.<node>`` and pings, as a
        runner from before it (tests of old and new peers)."""
        self._heartbeat_request = False  # what the last registration settled
        self._call_sent: dict[int, float] = {}  # rid of a request in flight -> when it left
        self.shared_dir = self.settings.shared_dir
        self._calls: dict[int, asyncio.Future] = {}
        self._next_rid = 1
        self._unsent: list[dict[str, Any]] = []
        self._acked: list[int] = []
        self._persisted: list[tuple[int, dict[str, Any]]] = []
        self._inflight: tuple[int, list[int], float] | None = None
        """The ``task.update`` in flight: its rid, outbox rows and the time it left."""
        self._registering = False
        self._busy_until = 0.0  # loop time until which small update batches wait (under load)
        self._small_hold: asyncio.TimerHandle | None = None
        self._resend: asyncio.TimerHandle | None = None
        self._hold: asyncio.TimerHandle | None = None
        self._delayed_flush: asyncio.TimerHandle | None = None
        # Written behind (see the module docstring), oldest first, with the loop time each
        # was made: outbox rows by seq, and task id -> (pid, start time) start records.
        self._unwritten: dict[int, tuple[float, list[dict[str, Any]]]] = {}
        self._starts: dict[int, tuple[float, int, float]] = {}
        self._forgets: list[int] = []  # written start records of tasks that have ended
        self._write_timer: asyncio.TimerHandle | None = None
        self._write_due = 0.0  # the loop time ``_write_timer`` fires at (uvloop's call_at
        # returns a plain Handle without ``when()`` when that time has already passed)
        self._flush_scheduled = False
        self._log_dirs: dict[str, str] = {}  # shared_dir -> its log directory
        self._paths: dict[int, tuple[str, str]] = {}
        self._chained: dict[int, dict] = {}  # running task -> start body of the one behind it
        self._adopted: set[int] = set()  # re-adopted tasks, confirmed once registered again
        self._fenced: set[int] = set()  # container tasks this runner ended by self-fencing
        self.stopping = False
        self._base_env = bundle.child_environment()
        self._known: set[tuple[int, int]] = set()  # (task id, attempt) started in this life
        self._attempts: dict[int, int] = {}
        self._loops: list[asyncio.Task] = []
        self.handlers: dict[str, Callable[[dict], Any]] = {
            "task.start": self._start_task,
            "task.signal": self._signal_task,
            "log.read": self._read_log,
            "runner.reregister": lambda body: self._spawn(self._reregister()),
            "runner.batch": self._run_commands,
            "runner.probe": lambda body: None,
        }
        self.streams = StreamEndpoint(self.name, self.instance, targets=ContainerTargets(
            self.name, lambda: self.backends,
            docker_socket(self.settings.docker_host)).handlers())
        """Byte streams from the host (``zriver.runner.streams``), connected at registration."""

    # ---- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        client_keys = runner_client_keys(self.settings)  # before anything: a key error is fatal
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "logs").mkdir(exist_ok=True)
        self.ledger = Ledger(self.data_dir / "runner.db")
        self.limiter = MemoryLimiter(self.name)
        self.memory_limit_method = self.limiter.probe()
        self.container_cpu = ContainerCpu()
        self.backends = self._make_backends()
        self._backend_of: dict[int, Any] = {}
        self.info = resources.detect(self.settings, self.memory_limit_method)
        self.info["backends"] = sorted(self.backends)
        self.info.update(task_user=self.settings.task_user, can_switch_accounts=can_switch(),
                         allowed_mounts=list(self.settings.allowed_mounts))
        if not can_switch():
            log.warning("runner.no_account_switch", account=own_name(),
                        detail="the runner is not root: native tasks run as its own account, "
                               "whatever their --user, owner or task_user")
        self.wire = Wire(self.settings.max_message_bytes, client_keys=client_keys)
        self.streams.wire = self.wire
        self.logtail = LogTail(self.publish, self.settings.log_poll_interval)
        self.logtail.start()
        self.uplink = self.link or SocketUplink(self.wire, self.settings.host,
                                                self.settings.router_port,
                                                self.settings.xsub_port)
        self.uplink.on_subscription = self.logtail.subscription
        self.uplink.open(f"r:{self.name}:{self.instance}".encode(),
                         client_keys.public if client_keys is not None else "",
                         self._on_envelope, self.backends["native"].send_now)
        self._persisted = self.ledger.pending()
        self._known = {(u["id"], u.get("attempt", 1)) for _, u in self._persisted}
        await self._adopt_leftovers()
        self._end_leftovers()
        self._loops.append(self._spawn(self._register_until_done()))
        log.info("runner.started", node=self.name, cores=len(self.info["cores"]),
                 memory=self.info["memory"], gpus=len(self.info["gpus"]),
                 memory_limit=self.memory_limit_method)

    def _make_backends(self) -> dict[str, Any]:
        """The execution backends this node offers, by name."""
        native = NativeBackend(self._on_started, self._on_exit, self.data_dir, self.name,
                               self.settings.kill_grace, self._base_env,
                               self.settings.task_user)
        native.on_keeper_lost = lambda: self._spawn(self._readopt(native))
        backends: dict[str, Any] = {native.name: native}
        try:
            from zriver.runner.backends.dockerlink import make_backend
        except ImportError as exc:  # a build without the docker SDK: native only
            log.warning("runner.no_docker_sdk", error=str(exc))
        else:
            docker = make_backend(self)
            backends[docker.name] = docker
        return backends

    async def _adopt_leftovers(self) -> None:
        """Startup reconciliation, before registering: a backend whose tasks outlive the
        runner (Docker) gives back what a previous life left; they are this runner's again.
        Then ``info["backends"]`` keeps only the backends that work now."""
        for backend in list(self.backends.values()):
            adopt = getattr(backend, "adopt", None)
            if adopt is None:
                continue
            for task_id, attempt, status in await adopt():
                self._attempts[task_id] = attempt
                self._known.add((task_id, attempt))
                self._backend_of[task_id] = backend
                if status in ("running", "paused"):
                    self._adopted.add(task_id)
                    self.logtail.watch(task_id, *self.log_paths(task_id))
                if status == "running":
                    self.report({"id": task_id, "state": "running", "at": time.time(),
                                 "detail": "re-attached after a runner restart"})
        self.info["backends"] = sorted(name for name, backend in self.backends.items()
                                       if getattr(backend, "available", True))

    async def _readopt(self, native: NativeBackend) -> None:
        """The keeper died (its tasks were ended and reported): start and adopt a new one."""
        try:
            await native.adopt()
        except Exception as exc:
            log.error("runner.keeper_unavailable", error=str(exc))

    async def stop(self, kill_tasks: bool = False) -> None:
        """Stop taking work and disconnect. Native tasks run on under the keeper (a restarted
        runner re-adopts them); with ``kill_tasks`` they are ended first (SIGTERM, SIGKILL
        after ``kill_grace``), recorded ``killed`` with this runner named, and the ends are
        given up to ``kill_grace + 2`` seconds to reach the host."""
        native = self.backends["native"]
        self._drop_staged()  # staged starts never start once we are stopping
        self.stopping = True
        if kill_tasks and native.running():
            native.kill_all(f"killed by runner {self.name} on shutdown (--kill-tasks)")
            deadline = time.monotonic() + self.settings.kill_grace + 2.0
            while (native.running() or self._persisted) and time.monotonic() < deadline:
                self._flush()
                await asyncio.sleep(0.01)
        self._flush()
        self._write_ledger(everything=True)
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        for timer in (self._resend, self._hold, self._delayed_flush, self._write_timer,
                      self._small_hold):
            if timer is not None:
                timer.cancel()
        await self.streams.close(f"the runner of node {self.name} stopped")
        for backend in self.backends.values():
            backend.close()
        self.uplink.close()
        self.logtail.close()
        self.wire.close()
        self.ledger.close()
        log.info("runner.stopped", node=self.name)

    def _spawn(self, coro) -> asyncio.Task:
        return asyncio.ensure_future(coro)

    async def _every(self, interval: Callable[[], float], action: Callable[[], None]) -> None:
        while True:
            try:
                action()
            except Exception:
                log.exception("runner.periodic_failed", action=getattr(action, "__name__", "?"))
            await asyncio.sleep(interval())

    def _end_leftovers(self) -> None:
        """Kill process groups a previous life of this runner started that no keeper owns
        (the keeper died with it, so nobody can read their status)."""
        for task_id, pid, started in self.ledger.started():
            if task_id in self._backend_of:
                continue  # the keeper still has it: adopted
            try:
                proc = psutil.Process(pid)
                if abs(proc.create_time() - started) < 2.0 and os.getpgid(pid) == pid:
                    os.killpg(pid, signal.SIGKILL)
                    log.warning("runner.leftover_killed", task=task_id, pid=pid)
            except (psutil.Error, ProcessLookupError, PermissionError):
                pass
        with self.ledger.conn:
            self.ledger.forget([row[0] for row in self.ledger.started()
                                if row[0] not in self._backend_of])

    # ---- talking to the host -----------------------------------------------------------
    async def request(self, op: str, body: dict, timeout: float | None = None) -> dict:
        rid = self._next_rid
        self._next_rid += 1
        future = asyncio.get_running_loop().create_future()
        self._calls[rid] = future
        self._call_sent[rid] = time.monotonic()
        try:
            self.uplink.send(Envelope(op, rid, body))
            return await asyncio.wait_for(future, timeout or self.settings.request_timeout)
        finally:
            self._calls.pop(rid, None)
            self._call_sent.pop(rid, None)

    async def _register_until_done(self) -> None:
        """Register, retrying on silence and errors (0.5 s apart). A name held by another
        live runner is retried for ``CONFLICT_PATIENCE`` seconds (the host may not have
        seen a previous life of this runner go yet), then this runner gives up."""
        refused_since: float | None = None
        while not self.registered.is_set():
            try:
                await self.register()
            except BadVersion as exc:
                self._fail(str(exc), exc.code, "runner.incompatible_host")
                return
            except Conflict as exc:
                refused_since = refused_since or time.monotonic()
                if time.monotonic() - refused_since > CONFLICT_PATIENCE:
                    self._fail(str(exc), exc.code, "runner.refused")
                    return
                await asyncio.sleep(0.5)
            except asyncio.TimeoutError:
                log.warning("runner.register_retry", error="timeout")
            except ZriverError as exc:
                log.warning("runner.register_retry", error=str(exc))
                await asyncio.sleep(0.5)

    def _stop_unwanted(self, task_ids: list) -> None:
        """The registration's ``stop`` list (before the commands of the same reply, which
        may start some of these again): what the host does not place here. A staged start is
        dropped without a word (it never ran; its start may come again), a running task is
        killed."""
        for task_id in task_ids:
            if not isinstance(task_id, int):
                continue
            for front, body in list(self._chained.items()):
                if body["id"] == task_id:
                    self._unstage_quietly(front, body)
                    break
            else:
                self._signal_task({"id": task_id, "action": "kill"})

    def _unstage_quietly(self, front: int, body: dict) -> None:
        del self._chained[front]
        if body["id"] in self._chained:  # what waited behind it moves up
            self._chained[front] = self._chained.pop(body["id"])
        self._known.discard((body["id"], body.get("attempt", 1)))
        if body.get("keeper"):
            self.backends["native"].unstage(body["id"])

    def _fail(self, message: str, code: str, event: str) -> None:
        """Something this runner cannot go on with: say it, and let the role exit."""
        self.fatal, self.fatal_code = message, code
        log.error(event, error=message)
        self.failed.set()

    async def _reregister(self) -> None:
        """Register again (the host asked, or contact came back after the lease ran out)."""
        if self._registering or self.stopping:
            return
        self._registering = True
        try:
            await self.register()
        except Conflict as exc:
            self._fail(str(exc), exc.code, "runner.refused")
        except (asyncio.TimeoutError, ZriverError) as exc:
            log.warning("runner.reregister_failed", error=str(exc) or "timeout")
        finally:
            self._registering = False

    async def register(self) -> None:
        paused = self.backends["native"].paused()
        known = [{"id": tid, "state": "paused" if tid in paused else "running",
                  "attempt": self._attempts.get(tid, 1)} for tid in self.running()]
        known += [{"id": u["id"], "state": u["state"], "attempt": u.get("attempt", 1)}
                  for _, u in self._persisted]
        known += [{"id": b["id"], "state": "assigned", "attempt": b.get("attempt", 1)}
                  for b in self._chained.values()]
        self._needs_register = False
        if self.registered.is_set():  # a restarted host tells its own follows afresh
            self.logtail.unfollow_all()
            self.uplink.renew_publisher()
        reply = await self.request("runner.register", {"name": self.name, "info": self.info,
                                                      "tasks": known,
                                                      "usage": self._usage()})
        self.heartbeat_interval = float(reply.get("heartbeat_interval", 2.0))
        self._heartbeat_request = self.heartbeat_requests and reply.get("heartbeat_request") is True
        if self.lease.length <= 0:  # a host that sent no lease: the default heartbeat rule
            self.lease.configure(self.heartbeat_interval * 3, 600.0)
        self._tell_keeper_lease()
        stopped = set(reply.get("stop", []))
        self.backends["native"].acked([tid for tid in self._adopted if tid not in stopped], [])
        self._adopted.clear()
        self.shared_dir = self.settings.shared_dir or reply.get("shared_dir", "")
        if isinstance(reply.get("stream_port"), int):  # (again when the port changed)
            self.streams.connect(self.settings.host, reply["stream_port"])
        if not self.registered.is_set():
            self._loops.append(self._spawn(self._every(lambda: self.heartbeat_interval,
                                                       self._heartbeat)))
        self.registered.set()
        for backend in self.backends.values():  # e.g. Docker reports VPS host keys again
            getattr(backend, "registered", lambda: None)()
        self._send_next_batch()
        log.info("runner.registered", node=self.name, stop=reply.get("stop", []))

    def publish(self, topic: str, body: dict) -> None:
        """A heartbeat or log chunk for the host (lossy by design)."""
        self.uplink.publish(topic, body)

    def _usage(self) -> dict[str, Any]:
        body = resources.usage()
        body.update(running=len(self.running()), memory_limit=self.memory_limit_method,
                    gpu_uuids=self._gpu_uuids(body["gpus"]), instance=self.instance,
                    at=time.time())
        docker = self.backends.get("docker")
        body["docker"] = docker.status() if docker is not None else {
            "available": False, "error": "this zriver build has no Docker support"}
        if docker is not None:  # per-container CPU %: the host's VPS idle stop reads it
            body["tasks_cpu"] = {str(task_id): percent for task_id, percent
                                 in self.container_cpu.sample(docker.containers()).items()}
        return body

    def _gpu_uuids(self, live: list[dict[str, Any]]) -> list[str]:
        """The GPUs this node has now: the declared ones, else those NVML just reported."""
        if self.settings.gpus >= 0:
            return [gpu["uuid"] for gpu in resources.declared_gpus(self.settings.gpus)]
        return [gpu["uuid"] for gpu in live if "uuid" in gpu]

    def _heartbeat(self) -> None:
        """Once a heartbeat interval: published (``hb.<node>``), or, when the lease is due
        for renewal (``_renewal_due``), sent so that the host answers: as a
        ``runner.heartbeat`` request where the host takes them (one message each way),
        else published beside a ``runner.ping``."""
        usage = self._usage()
        due = self._renewal_due(time.monotonic())
        if due and self._heartbeat_request:
            del usage["instance"]  # (the host knows the request's identity)
            self._request_reply("runner.heartbeat", {"name": self.name, "usage": usage})
        else:
            self.publish(f"hb.{self.name}", usage)
        if self.streams.channel is not None:
            self.streams.hello()
        self._keep_lease(ping=due and not self._heartbeat_request)

    def _renewal_due(self, now: float) -> bool:
        """Whether this heartbeat should fetch a reply: none came for ``lease - 1.5
        intervals``, so the next renewal still lands an interval before the lease runs out
        (with the default 3 misses: every other heartbeat; with 2 or 1: every one). Fewer
        replies never make a lost host noticed later: the lease counts from the last reply."""
        if self.lease.start is None or self.lease.length <= 0:
            return True
        return now - self.lease.start >= self.lease.length - 1.5 * self.heartbeat_interval

    def _request_reply(self, op: str, body: dict) -> None:
        """Send ``op``, whose reply renews the lease (``_on_reply``); none is awaited."""
        now = time.monotonic()
        rid = self._next_rid
        self._next_rid += 1
        self._pings = {r: t for r, t in self._pings.items() if now - t < 60}
        self._pings[rid] = now
        self.uplink.send(Envelope(op, rid, body))

    def _keep_lease(self, ping: bool) -> None:
        """Once a heartbeat interval: notice a lease that ran out, fence the tasks the keeper
        does not own (containers) once ``fence_at`` has passed, and (``ping``) ask the host
        for a reply (a ``runner.ping``: it renews the lease)."""
        now = time.monotonic()
        if self.lease.start is not None and self.lease.length > 0 and now >= self.lease.fence_at:
            self._fence_others()
        if not self.lease.fresh(now) and not self._lapsed:
            self._lapsed = True
            log.warning("runner.lease_expired", staged=len(self._chained))
            self._drop_staged()  # the host requeues them once this lease has surely passed
            self._needs_register = True
        if ping:
            self._request_reply("runner.ping", {"name": self.name})

    def _fence_others(self) -> None:
        """Self-fencing of container tasks (the keeper fences native ones by itself): kill
        them; their ends are reported ``lost`` (see ``_on_exit``). A VPS is never fenced
        (``survives_fencing``): the host keeps it while the runner is away."""
        for task_id, backend in list(self._backend_of.items()):
            if getattr(backend, "survives_fencing", lambda _: False)(task_id):
                continue
            if backend is not self.backends["native"] and task_id not in self._fenced:
                self._fenced.add(task_id)
                log.warning("runner.fenced", task=task_id)
                backend.signal(task_id, "kill")

    def _renew_lease(self, sent_at: float) -> None:
        """A reply to a request sent at ``sent_at`` arrived."""
        self.lease.renew(sent_at)
        self._lapsed = not self.lease.fresh(time.monotonic())
        if self.lease.worth_telling():
            self._tell_keeper_lease()
        if self._needs_register and self.registered.is_set():
            self._needs_register = False
            self._spawn(self._reregister())

    def _tell_keeper_lease(self) -> None:
        if self.lease.start is None or self.lease.length <= 0:
            return
        self.lease.told = self.lease.start
        self.backends["native"].lease(
            self.lease.provisional_until, self.lease.fence_at, self.lease.fence_grace,
            f"ended by node {self.name} itself: no contact with the host for "
            f"{self.lease.fence_at - self.lease.start:.3g} s (self-fencing; the host may "
            f"run it again elsewhere)")

    def _on_envelope(self, env: Envelope) -> None:
        """A message from the host: a reply to one of ours, or a command."""
        if env.is_reply:
            self._on_reply(env)
            return
        self._run_command(env.op, env.body, env.rid)

    def _run_command(self, op: str, body: dict, rid: int = 0) -> None:
        """Run one host command from the handler table; answer it when it has a request id."""
        handler = self.handlers.get(op)
        if handler is None:
            self._answer(rid, None, ZriverError(f"unknown op {op!r}"), "unknown_op")
            return
        try:
            result = handler(body)
        except ZriverError as exc:
            self._answer(rid, None, exc, exc.code)
        except Exception as exc:
            log.exception("runner.handler_crashed", op=op)
            self._answer(rid, None, exc, "internal")
        else:
            self._answer(rid, result if isinstance(result, dict) else None, None, "")

    def _run_commands(self, body: dict) -> None:
        """``runner.batch``, or the commands an update ack carries."""
        for command in body.get("commands") or []:
            if isinstance(command, dict) and isinstance(command.get("body"), dict):
                self._run_command(str(command.get("op")), command["body"])

    def _answer(self, rid: int, body: dict | None, exc: Exception | None, code: str) -> None:
        if not rid:
            if exc is not None:
                log.warning("runner.command_failed", error=str(exc), code=code)
            return
        self.uplink.send(Envelope(OK, rid, body or {}) if exc is None
                         else Envelope(ERROR, rid, {}, code, str(exc)))

    def _on_reply(self, env) -> None:
        if self._inflight is not None and env.rid == self._inflight[0]:
            self._renew_lease(self._inflight[2])
            self._on_batch_acked(env)
            return
        sent = self._pings.pop(env.rid, None) or self._call_sent.get(env.rid)
        if env.op == "ok" and "lease" in env.body:  # a registration reply: before its commands
            self.lease.configure(env.body["lease"], env.body.get("grace") or 600.0)
            self._stop_unwanted(env.body.get("stop") or [])
        if sent is not None:
            self._renew_lease(sent)
            if (env.body.get("registered") is False if env.op == "ok"
                    else env.code == "conflict"):
                self._spawn(self._reregister())  # a host that forgot us, or another claims us
        future = self._calls.get(env.rid)
        if future is not None and not future.done():
            if env.op == "ok":
                future.set_result(env.body)
            else:
                future.set_exception(error_from_reply(env.code, env.msg))
        if env.op == "ok":
            self._run_commands(env.body)  # the host may attach commands to any reply of ours

    # ---- the outbox --------------------------------------------------------------------
    def report(self, update: dict[str, Any]) -> None:
        """Queue one task update for the host (persisted and sent at the end of the tick; a
        ``running`` update once it is ``RUNNING_HOLD`` old, counted from its ``at`` (the
        start, which the keeper may already have held for that long), so that a task which
        ends at once is written and sent once, start and end together)."""
        update.setdefault("attempt", self._attempts.get(update["id"], 1))
        self._unsent.append(update)
        if update["state"] == "running" and not self._flush_scheduled:
            wait = RUNNING_HOLD - (time.time() - update["at"])
            if wait <= 0:
                self._schedule_flush()
            elif self._delayed_flush is None:
                self._delayed_flush = asyncio.get_running_loop().call_later(wait, self._flush)
            return
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """End of a tick: send what the tick reported (one outbox row) and arm the ledger
        write for it.

        Sending before writing is safe: a crash before the write is the same as a crash just
        before the task's end was noticed (the host has the update or marks the task lost).
        The row is written once it is ``WRITE_DELAY`` old, unless the host acknowledged it
        before."""
        self._flush_scheduled = False
        if self._delayed_flush is not None:
            self._delayed_flush.cancel()
            self._delayed_flush = None
        if self._hold is not None and any(u["state"] != "running" for u in self._unsent):
            self._hold.cancel()  # something final to say: no reason to wait any more
            self._hold = None
        if self._unsent:
            unsent, self._unsent = self._unsent, []
            seq = self.ledger.new_seq()
            self._unwritten[seq] = (asyncio.get_running_loop().time(), unsent)
            self._persisted.extend((seq, update) for update in unsent)
            if self._inflight is None:
                self._send_next_batch()
        self._arm_write()

    def _arm_write(self) -> None:
        """Have the ledger written when its oldest unwritten row or start record turns
        ``WRITE_DELAY`` old, or within ``ACK_WRITE_DELAY`` when only deletions wait; with
        nothing left to write (a short task acknowledged in time), no timer wakes the loop."""
        firsts = [next(iter(table.values()))[0] for table in (self._unwritten, self._starts)
                  if table]
        loop = asyncio.get_running_loop()
        if firsts:
            due = min(firsts) + WRITE_DELAY
        elif self._acked or self._forgets:
            due = loop.time() + ACK_WRITE_DELAY
        else:
            if self._write_timer is not None:
                self._write_timer.cancel()
                self._write_timer = None
            return
        if self._write_timer is not None:
            if self._write_due <= due:
                return
            self._write_timer.cancel()
        self._write_due = due
        self._write_timer = loop.call_at(due, self._write_ledger)

    def _write_ledger(self, everything: bool = False) -> None:
        """One transaction: the rows and start records that are ``WRITE_DELAY`` old (all of
        them with ``everything``), and the deletions waiting (acknowledged rows, records of
        ended tasks). Then arm the write of what is left."""
        if self._write_timer is not None:
            self._write_timer.cancel()  # (when called before its time)
            self._write_timer = None
        cutoff = float("inf") if everything else (
            asyncio.get_running_loop().time() - WRITE_DELAY + 1e-4)
        rows = [(seq, updates) for seq, (made, updates) in self._unwritten.items()
                if made <= cutoff]
        starts = [(task_id, pid, at) for task_id, (made, pid, at) in self._starts.items()
                  if made <= cutoff]
        if rows or starts or self._acked or self._forgets:
            try:
                with self.ledger.conn:
                    for row in starts:
                        self.ledger.record_start(*row)
                    self.ledger.forget(self._forgets)
                    self.ledger.acknowledge(self._acked)
                    for seq, updates in rows:
                        self.ledger.append(seq, updates)
            except apsw.Error as exc:  # disk full, read-only: keep it all and try again
                log.warning("runner.ledger_write_failed", error=str(exc), rows=len(rows),
                            retry_in=LEDGER_RETRY)
                self._write_due = asyncio.get_running_loop().time() + LEDGER_RETRY
                self._write_timer = asyncio.get_running_loop().call_at(self._write_due,
                                                                       self._write_ledger)
                return
            for seq, _ in rows:
                del self._unwritten[seq]
            for task_id, _, _ in starts:
                del self._starts[task_id]
            self._forgets, self._acked = [], []
        self._arm_write()

    def _send_next_batch(self) -> None:
        if self._inflight is not None or not self._persisted or not self.registered.is_set():
            return
        if self._hold_running() or self._hold_small():
            return
        end = min(MAX_BATCH, len(self._persisted))
        while end < len(self._persisted) and self._persisted[end][0] == self._persisted[end - 1][0]:
            end += 1  # never split a row: it is deleted when all of it is acknowledged
        batch = self._persisted[:end]
        rid = self._next_rid
        self._next_rid += 1
        self._inflight = (rid, [seq for seq, _ in batch], time.monotonic())
        self.uplink.send(Envelope("task.update", rid, {"name": self.name,
                                                      "updates": [u for _, u in batch]}))
        self._resend = asyncio.get_running_loop().call_later(
            self.settings.request_timeout, self._resend_batch)

    def _hold_small(self) -> bool:
        """While the host keeps us fed (its last acknowledgement, under ``BUSY_GAP`` ago,
        carried new starts), a batch of fewer than ``MIN_BATCH`` updates waits out that gap:
        each host message has a fixed cost, so under load fewer, larger ones are faster. An
        idle runner never waits (a lone task's end leaves at once)."""
        if self._small_hold is not None:
            return True
        if len(self._persisted) >= MIN_BATCH:
            return False
        wait = self._busy_until - asyncio.get_running_loop().time()
        if wait <= 0:
            return False
        self._small_hold = asyncio.get_running_loop().call_later(wait, self._release_small)
        return True

    def _release_small(self) -> None:
        self._small_hold = None
        self._busy_until = 0.0
        self._send_next_batch()

    def _hold_running(self) -> bool:
        """Hold a batch of fresh ``running`` updates for ``RUNNING_HOLD`` seconds, so that a
        task that ends at once reports start and end in one message (half the messages for
        short tasks; a long task's start shows that much later)."""
        if self._hold is not None:
            return True
        if any(u["state"] != "running" for _, u in self._persisted):
            return False
        age = time.time() - max(u["at"] for _, u in self._persisted)
        if age >= RUNNING_HOLD:
            return False
        self._hold = asyncio.get_running_loop().call_later(RUNNING_HOLD - age, self._release_hold)
        return True

    def _release_hold(self) -> None:
        self._hold = None
        self._send_next_batch()

    def _resend_batch(self) -> None:
        self._resend = None
        self._inflight = None
        log.warning("runner.update_resend", pending=len(self._persisted))
        self._send_next_batch()

    def _on_batch_acked(self, env) -> None:
        rid, seqs, _ = self._inflight
        self._inflight = None
        if self._resend is not None:
            self._resend.cancel()
            self._resend = None
        if env.op != "ok":
            log.error("runner.update_refused", code=env.code, msg=env.msg)
        done = set(seqs)
        for seq in done:  # a row never written needs no deletion
            if self._unwritten.pop(seq, None) is None:
                self._acked.append(seq)
        self._arm_write()
        confirm, forget, ended = [], [], set()
        for seq, update in reversed(self._persisted):  # (newest first: ends before starts)
            if seq in done:
                key = (update["id"], update.get("attempt", 1))
                if update["state"] not in ("running", "paused"):
                    self._known.discard(key)
                    forget.append(update["id"])
                    ended.add(key)
                elif env.op == "ok" and key not in ended:
                    confirm.append(update["id"])  # (a start whose end is acknowledged with
                    # it needs no confirmation: the keeper has reaped it already)
        if env.op == "ok":
            self.backends["native"].acked(confirm, forget)
        self._persisted = [(s, u) for s, u in self._persisted if s not in done]
        if env.op == "ok" and env.body.get("commands"):
            self._busy_until = asyncio.get_running_loop().time() + BUSY_GAP
        self._run_commands(env.body)
        self._send_next_batch()

    # ---- host commands -----------------------------------------------------------------
    def _start_task(self, body: dict) -> None:
        task_id, attempt = arg(body, "id", int), arg(body, "attempt", int, 1)
        if (task_id, attempt) in self._known:
            return  # a re-sent start of an attempt already under way or finished
        if self.stopping:
            return
        if not self.lease.fresh(time.monotonic()):
            # It may be a stale start that waited in a queue while we were cut off: the host
            # may have given it to another node since. Register again; it re-sends what holds.
            log.warning("runner.start_refused_lease", task=task_id)
            self._needs_register = True
            return
        self._attempts[task_id] = attempt
        behind = arg(body, "behind", int, None)
        if behind is not None and (behind in self._backend_of or any(
                chained["id"] == behind for chained in self._chained.values())):
            self._known.add((task_id, attempt))
            self._chained[behind] = body  # starts the moment ``behind`` ends, on its cores
            self._stage_in_keeper(body, behind)
            return
        self._launch(body)

    def _stage_in_keeper(self, body: dict, behind: int) -> None:
        """A native task staged behind a native one waits in the keeper, which starts it in
        the turn that reaps the one in front (no round trip to the agent; the keeper refuses
        it past the lease). ``body["keeper"]`` marks it so."""
        native = self.backends["native"]
        spec = TaskSpec.trusted(arg(body, "spec", dict))
        if spec.backend != native.name or not native.holds(behind):
            return
        body["keeper"] = True
        native.stage(self._job(body["id"], spec, arg(body, "alloc", dict)), behind)

    def _launch(self, body: dict) -> None:
        task_id, attempt = body["id"], body.get("attempt", 1)
        spec = TaskSpec.trusted(arg(body, "spec", dict))
        backend = self.backends.get(spec.backend)
        now = time.time()
        self._known.add((task_id, attempt))
        if backend is None:
            self.report({"id": task_id, "state": "failed", "at": now, "exit_code": 126,
                         "detail": f"the {spec.backend} backend is not available on {self.name}"})
            return
        job = self._job(task_id, spec, arg(body, "alloc", dict))
        self._backend_of[task_id] = backend
        try:
            detail = backend.start(job)
        except StartError as exc:
            self._backend_of.pop(task_id, None)
            self.report({"id": task_id, "state": "failed", "at": now,
                         "exit_code": exc.exit_code, "detail": exc.detail})
            return
        if detail is not None:
            self._on_started(task_id, detail)

    def _job(self, task_id: int, spec: TaskSpec, alloc: dict) -> Job:
        stdout, stderr = self._paths[task_id] = self.log_paths(task_id)
        env = dict(spec.env)  # native: on top of the runner's own (the keeper has it)
        env.update(ZRIVER_TASK_ID=str(task_id), ZRIVER_NODE=self.name,
                   ZRIVER_CORES=",".join(map(str, alloc["cores"])))
        gpus = tuple(alloc.get("gpus") or ())
        if gpus or alloc.get("gpus") is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
        return Job(task_id, spec, tuple(alloc["cores"]), int(alloc.get("memory") or 0),
                   stdout, stderr, env, gpus, alloc.get("numa"), self._attempts[task_id])

    def _on_started(self, task_id: int, detail: str, at: float | None = None) -> None:
        """A backend says the job runs now (synchronously or later), or since ``at``."""
        stdout, stderr = self._paths.get(task_id) or self.log_paths(task_id)
        backend = self._backend_of.get(task_id)
        pid = getattr(backend, "pid_of", lambda _: None)(task_id)
        if pid is not None:
            self._starts[task_id] = (asyncio.get_running_loop().time(), pid, time.time())
        self.logtail.watch(task_id, stdout, stderr)
        self.report({"id": task_id, "state": "running", "at": at or time.time(),
                     "detail": detail})

    def running(self) -> list[int]:
        """Ids of the tasks some backend is running now."""
        return [tid for backend in self.backends.values() for tid in backend.running()]

    def _signal_task(self, body: dict) -> None:
        task_id, action = arg(body, "id", int), arg(body, "action", str)
        if action not in ("kill", "pause", "resume", "restart"):  # restart: a VPS only
            raise ZriverError(f"unknown action {action!r}")
        for behind, chained in list(self._chained.items()):
            if chained["id"] == task_id and action == "kill":  # staged, never started
                del self._chained[behind]
                if task_id in self._chained:  # what waited behind it moves up
                    self._chained[behind] = self._chained.pop(task_id)
                self._attempts[task_id] = chained.get("attempt", 1)
                if chained.get("keeper"):  # the keeper drops it and reports the kill
                    self.backends["native"].signal(task_id, "kill")
                    return
                self.report({"id": task_id, "state": "killed", "at": time.time(),
                             "detail": "killed before it started"})
                return
        backend = self._backend_of.get(task_id)
        if backend is None or task_id not in backend.running():
            return
        if action not in ("pause", "resume"):
            backend.signal(task_id, action)
            return

        def done() -> None:  # reported once it holds: a "paused" task is stopped
            if task_id in backend.running():
                self.report({"id": task_id, "state": "paused" if action == "pause" else "running",
                             "at": time.time(), "detail": f"{action}d on request"})

        backend.signal(task_id, action, done=done)

    def _read_log(self, body: dict) -> dict:
        task_id, stream = arg(body, "id", int), arg(body, "stream", str, "stdout")
        if stream not in ("stdout", "stderr"):
            raise ZriverError("stream must be stdout or stderr")
        path = log_path(self.log_dir(), task_id, stream)
        return read_slice(path, arg(body, "offset", int, 0), arg(body, "limit", int, 1 << 20))

    def log_dir(self) -> str:
        """Where task logs go: ``<shared_dir>/logs``, else ``<data_dir>/logs`` (made once)."""
        key = self.shared_dir
        base = self._log_dirs.get(key)
        if base is None:
            path = Path(key) / "logs" if key else self.data_dir / "logs"
            path.mkdir(parents=True, exist_ok=True)
            base = self._log_dirs[key] = str(path)
        return base

    def log_paths(self, task_id: int) -> tuple[str, str]:
        base = self.log_dir()
        return log_path(base, task_id, "stdout"), log_path(base, task_id, "stderr")

    def _on_exit(self, task_id: int, outcome: Exit) -> None:
        self._backend_of.pop(task_id, None)
        self._paths.pop(task_id, None)
        self.logtail.finish(task_id)
        if self._starts.pop(task_id, None) is None:  # its start record was written
            self._forgets.append(task_id)
        if task_id in self._fenced:
            self._fenced.discard(task_id)
            outcome = Exit("lost", None, f"ended by node {self.name} itself: no contact with "
                                         f"the host for too long (self-fencing; the host may "
                                         f"run it again elsewhere)")
        self.report({"id": task_id, "state": outcome.state, "at": time.time(),
                     "exit_code": outcome.exit_code, "detail": outcome.detail})
        if outcome.state == "pending":  # it never ran here: the host may place it here again
            self._known.discard((task_id, self._attempts.get(task_id, 1)))
        chained = self._chained.pop(task_id, None)
        if chained is not None and chained.get("keeper"):  # the keeper is starting it
            self._backend_of[chained["id"]] = self.backends["native"]
            self.backends["native"].promote(chained["id"])
        elif chained is not None and not self.stopping:
            if self.lease.fresh(time.monotonic()):
                self._launch(chained)
            else:  # the host requeues it once our lease has surely passed
                log.warning("runner.staged_dropped_lease", task=chained["id"])
                self._needs_register = True
                self._known.discard((chained["id"], chained.get("attempt", 1)))
                self._drop_chain(chained["id"])

    def _drop_chain(self, task_id: int) -> None:
        """Forget the staged starts behind ``task_id`` (which will not start here)."""
        while task_id in self._chained:
            body = self._chained.pop(task_id)
            self._known.discard((body["id"], body.get("attempt", 1)))
            task_id = body["id"]

    def _drop_staged(self) -> None:
        """Forget every staged start (a start the host sends again is taken again), but
        those the keeper holds: it refuses them itself past the lease, and drops them when
        this agent disconnects."""
        for front, body in list(self._chained.items()):
            if not body.get("keeper"):
                self._known.discard((body["id"], body.get("attempt", 1)))
                del self._chained[front]
