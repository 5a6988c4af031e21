"""The host's asyncio server: sockets, the per-tick transaction, dispatch and liveness.

Flow of one loop tick: the ROUTER channel drains every waiting request; each is handled by the
function the ``HANDLERS`` table (``zriver.host.handlers``) names for its op, inside a SAVEPOINT
of the tick's one transaction (a handler that raises changes nothing). At the end of the tick
``flush`` runs the scheduler, records its placements, commits, and only then sends the queued
replies, runner commands and events: nothing is acknowledged before it is durable.

The in-memory ``tasks`` dict holds unfinished tasks only; the store holds everything.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import apsw
import structlog

from zriver import PROTOCOL_VERSION, __version__
from zriver.config import HostSettings
from zriver.errors import Internal, Unavailable, ZriverError, error_from_reply
from zriver.host.scheduler import (DEGRADED, OFFLINE, ONLINE, UNREACHABLE, Allocation,
                                   NodeSpec, Request, Scheduler)
from zriver.host.deps import Dependencies
from zriver.host.store import Store
from zriver.protocol import decode, encode, encode_error, encode_ok, peek_rid, Envelope
from zriver.spec import TaskSpec, parse_target
from zriver.wire import Channel, Unreachable, Wire

log = structlog.get_logger("zriver.host")

RUNNER_PREFIX = b"r:"
RECONNECT_GRACE = 2.0
"""After a host restart, runners need up to their DEALER's longest reconnect interval (2 s,
``wire.py``) to be heard again: their silence is counted from that much after the start."""
DEFERRED = object()
"""A handler returns this when it will answer later through ``Host.reply``."""


@dataclass(slots=True)
class LiveTask:
    """An unfinished task as the host tracks it in memory."""

    id: int
    spec: TaskSpec
    state: str
    node: str | None = None
    alloc: Allocation | None = None
    attempt: int = 1
    batch_id: int | None = None
    started_at: float | None = None
    timing_out: bool = False
    limit_timer: asyncio.TimerHandle | None = None
    wire: dict[str, Any] | None = None
    """``spec.to_wire()``, kept: the spec does not change after submit."""

    def request(self) -> Request:
        node, numa, gpu_ids = parse_target(self.spec.target) if self.spec.target else (None, None, ())
        return Request(
            self.id, self.spec.cores, self.spec.memory or 0, node, numa, gpu_ids, self.spec.gpus,
            frozenset({self.spec.backend}), self.spec.priority, self.batch_id,
            self.spec.max_parallel, self.spec.time_limit,
        )


@dataclass(slots=True)
class NodeRecord:
    """A runner as the host knows it. ``registered`` is per host incarnation."""

    name: str
    info: dict[str, Any]
    state: str = OFFLINE
    last_seen: float = 0.0
    """Wall-clock time of its last message (shown to people; never used to judge liveness)."""
    seen: float = 0.0
    """``time.monotonic()`` of its last message: liveness is judged on this."""
    sent: float = 0.0
    """``time.monotonic()`` of the host's last message to it (the lease: see runner/lease.py)."""
    identity: bytes | None = None
    """The ROUTER identity of its registered runner (``r:<name>:<instance>``), new per life."""
    unstarted_requeued: bool = False
    given_up: bool = False
    registered_at: float = 0.0
    registered: bool = False
    heartbeat: dict[str, Any] = field(default_factory=dict)
    reregister_asked: float = 0.0
    drained: str | None = None
    """The reason it was drained, or ``None``."""
    degraded: str = ""
    """Why it is degraded (its GPU set changed), or empty."""


@dataclass(slots=True)
class Caller:
    """Who sent a request: the ROUTER identity and the request id to answer."""

    identity: bytes
    rid: int

    @property
    def node(self) -> str | None:
        return node_of(self.identity)


def node_of(identity: bytes) -> str | None:
    """The node name in a runner identity ``r:<name>:<instance>``; ``None`` for a client."""
    if not identity.startswith(RUNNER_PREFIX):
        return None
    name = identity[len(RUNNER_PREFIX):].decode(errors="replace")
    return name.rsplit(":", 1)[0] if ":" in name else name


def runner_identity(name: str, instance: str) -> bytes:
    return f"r:{name}:{instance}".encode()


class Host:
    """The coordinator. ``start`` binds and loads state; ``stop`` closes everything."""

    def __init__(self, settings: HostSettings, handlers: dict[str, Callable] | None = None):
        from zriver.host.handlers import HANDLERS

        self.settings = settings.resolved()
        self.handlers = handlers or HANDLERS
        self.data_dir = Path(self.settings.data_dir)
        self.incarnation = secrets.token_hex(4)
        self.scheduler = Scheduler(self.settings.placement, self.settings.gpu_placement,
                                   self.settings.prefetch)
        self.deps = Dependencies()
        self.tasks: dict[int, LiveTask] = {}
        self.nodes: dict[str, NodeRecord] = {}
        self.waiters: list[Any] = []
        self.runner_calls: dict[int, asyncio.Future] = {}
        self.endpoints: dict[str, str] = {}
        self.started_at = 0.0
        self._outgoing: list[tuple[Channel, list[bytes]]] = []
        self._runner_cmds: dict[str, list[dict[str, Any]]] = {}
        self._task_events: dict[int, dict[str, Any]] = {}
        self._runner_acks: dict[str, list[tuple[Caller, dict[str, Any]]]] = {}
        self._flush_scheduled = False
        self._needs_schedule = False
        self._next_rid = 1
        self.foreign_heartbeats = 0
        """Heartbeats that named a node registered to another runner (dropped)."""
        self._timers: list[asyncio.Task] = []
        self.store: Store | None = None
        self.wire: Wire | None = None

    # ---- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        self.started_at = time.time()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(self.data_dir / "host.db")
        self._load_state()
        self.wire = Wire(self.settings.max_message_bytes)
        addr = self.settings.bind_address
        router, self.endpoints["router"] = self.wire.router(f"tcp://{addr}:{self.settings.router_port}")
        xsub, self.endpoints["xsub"] = self.wire.xsub(f"tcp://{addr}:{self.settings.xsub_port}")
        xpub, self.endpoints["xpub"] = self.wire.xpub(f"tcp://{addr}:{self.settings.xpub_port}")
        self.router = Channel(router, self._on_router, self.flush)
        self.xpub = Channel(xpub, lambda frames: None, lossy=True)
        self.xsub = Channel(xsub, self._on_published, self.flush)
        self._write_endpoints()
        self._timers.append(asyncio.ensure_future(self._liveness_loop()))
        log.info("host.started", endpoints=self.endpoints, tasks=len(self.tasks),
                 nodes=len(self.nodes), incarnation=self.incarnation)

    async def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        await asyncio.gather(*self._timers, return_exceptions=True)
        for waiter in list(self.waiters):
            waiter.cancel()
        if self.wire is not None:
            for channel in (self.router, self.xsub, self.xpub):
                channel.close()
            self.wire.close()
        if self.store is not None:
            if self.store.conn.in_transaction:
                self.store.write_pending()
                self.store.conn.execute("COMMIT")
            self.store.close()
        self._remove_endpoints()
        log.info("host.stopped")

    def _write_endpoints(self) -> None:
        """Let clients on this machine find the host with no flags (atomic rename)."""
        path = self.data_dir / "endpoints.json"
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**self.endpoints, "pid": os.getpid()}))
        tmp.replace(path)

    def _remove_endpoints(self) -> None:
        """Remove endpoints.json only when it is this host's (its pid and router): a host that
        did not write it, or whose file another host has replaced, leaves it alone."""
        path = self.data_dir / "endpoints.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        if (isinstance(data, dict) and data.get("pid") == os.getpid()
                and data.get("router") == self.endpoints.get("router")):
            path.unlink(missing_ok=True)

    def _load_state(self) -> None:
        """Rebuild scheduler, dependencies and caches from the store (host restart)."""
        for row in self.store.list_nodes():
            info = row["info"]
            self.nodes[row["name"]] = NodeRecord(row["name"], info, OFFLINE,
                                                 last_seen=self.started_at,
                                                 seen=time.monotonic() + RECONNECT_GRACE,
                                                 sent=time.monotonic() + RECONNECT_GRACE,
                                                 drained=row["drained"])
            self.scheduler.set_node(row["name"], node_spec(info))
            self.scheduler.set_drained(row["name"], row["drained"] is not None)
        rows = self.store.unfinished_tasks()
        staged = {row["id"]: row for row in rows if (row["alloc"] or {}).get("behind")}
        order = [row for row in rows if row["id"] not in staged]
        while staged:  # each staged task after the one it waits behind
            ready = [r for r in staged.values() if r["alloc"]["behind"] not in staged]
            for row in ready or list(staged.values()):
                order.append(staged.pop(row["id"]))
        for row in order:
            task = LiveTask(row["id"], TaskSpec.from_wire(row["spec"]), row["state"], row["node"],
                            attempt=row["attempt"], batch_id=row["batch_id"],
                            started_at=row["started_at"], wire=row["spec"])
            self.tasks[task.id] = task
            if row["alloc"]:
                task.alloc = allocation_from_wire(row["alloc"])
                self.scheduler.hold(task.id, task.alloc, task.request(), task.started_at,
                                    behind=row["alloc"].get("behind"))
            else:
                from zriver.host.dispatch import enqueue

                enqueue(self, task)
        from zriver.host.dispatch import arm_time_limit

        for task in self.tasks.values():
            arm_time_limit(self, task)
        self._needs_schedule = True

    # ---- receiving ---------------------------------------------------------------------
    def _on_router(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            log.warning("host.bad_frames", count=len(frames))
            if len(frames) >= 2:
                self._send_to(frames[0], encode_error(0, "bad_request",
                                                      "a request is exactly one frame"))
            return
        identity, frame = frames
        try:
            env = decode(frame, self.settings.max_message_bytes)
        except ZriverError as exc:
            log.warning("host.bad_message", error=str(exc), code=exc.code)
            self._send_to(identity, encode_error(peek_rid(frame), exc.code, str(exc)))
            return
        name = node_of(identity)
        if name is not None:
            node = self.nodes.get(name)
            if node is not None and node.identity in (None, identity):
                self.touch(node)
        if env.is_reply:
            self._on_runner_reply(env)
            return
        self._dispatch(Caller(identity, env.rid), env)

    def _dispatch(self, caller: Caller, env: Envelope) -> None:
        handler = self.handlers.get(env.op)
        if handler is None:
            self.reply_error(caller, "unknown_op", f"unknown op {env.op!r}")
            return
        self.begin()
        self.store.write_pending()  # what is pending now belongs to earlier, successful handlers
        try:
            with self.store.conn:  # a SAVEPOINT inside the tick's transaction
                result = handler(self, caller, env.body)
        except ZriverError as exc:
            self.store.discard_pending()
            self.reply_error(caller, exc.code, str(exc))
            return
        except apsw.Error as exc:  # the store cannot be written (disk full, read-only)
            self.store.discard_pending()
            log.error("host.store_write_failed", op=env.op, error=str(exc))
            self.reply_error(caller, Unavailable.code, f"the host could not write its store "
                                                       f"({exc}); nothing was changed")
            return
        except Exception as exc:  # a bug: answer, log, keep serving
            self.store.discard_pending()
            log.exception("host.handler_crashed", op=env.op)
            self.reply_error(caller, Internal.code, f"internal error in {env.op}: {exc!r}")
            return
        if asyncio.iscoroutine(result):
            asyncio.ensure_future(self._finish_async(caller, env.op, result))
        elif result is not DEFERRED:
            self.reply(caller, result)

    async def _finish_async(self, caller: Caller, op: str, coro) -> None:
        try:
            result = await coro
        except ZriverError as exc:
            self.reply_error(caller, exc.code, str(exc))
        except Exception as exc:
            log.exception("host.handler_crashed", op=op)
            self.reply_error(caller, Internal.code, f"internal error in {op}: {exc!r}")
        else:
            self.reply(caller, result)
        self.schedule_flush()

    def _on_runner_reply(self, env: Envelope) -> None:
        future = self.runner_calls.pop(env.rid, None)
        if future is None or future.done():
            return
        if env.op == "ok":
            future.set_result(env.body)
        else:
            future.set_exception(error_from_reply(env.code, env.msg))

    def _on_published(self, frames: list[bytes]) -> None:
        """Everything runners publish passes here on its way to subscribers."""
        self.xpub.send(frames)
        if len(frames) == 2 and frames[0].startswith(b"hb."):
            try:
                env = decode(frames[1], self.settings.max_message_bytes)
            except ZriverError:
                return
            self._on_heartbeat(frames[0][3:].decode(errors="replace"), env.body)

    def _on_heartbeat(self, name: str, body: dict[str, Any]) -> None:
        """A heartbeat counts for the node's registered runner only; a runner that is not
        registered with this host (or whose node is unreachable or given up) is asked to
        register, which reconciles its tasks."""
        node = self.nodes.get(name)
        identity = runner_identity(name, str(body.get("instance", "")))
        if node is not None and node.identity not in (None, identity):
            self.foreign_heartbeats += 1
            return
        if node is None or not node.registered or node.state in (UNREACHABLE, OFFLINE):
            if node is not None:
                self.touch(node)  # alive: not lost, just not registered with us yet
            asked = node.reregister_asked if node else 0.0
            if time.monotonic() - asked > self.settings.heartbeat_interval:
                self._ask_reregister(name, identity)
            return
        self.touch(node)
        node.heartbeat = body
        changed = gpu_change(node.info, body)
        if changed and node.state != DEGRADED:
            node.degraded = changed
            self.set_node_state(node, DEGRADED, changed)
        elif not changed and node.state == DEGRADED:
            node.degraded = ""
            self.set_node_state(node, ONLINE, "GPU set back to normal")

    def touch(self, node: NodeRecord) -> None:
        """A message from ``node``'s runner arrived now."""
        node.seen, node.last_seen = time.monotonic(), time.time()

    def _ask_reregister(self, name: str, identity: bytes) -> None:
        """Ask a runner seen only by its heartbeats to register (retried while unreachable)."""
        try:
            self.router.send([identity, encode("runner.reregister")])
        except Unreachable:
            return
        if name in self.nodes:
            self.nodes[name].reregister_asked = time.monotonic()
            self.nodes[name].sent = time.monotonic()

    # ---- sending -----------------------------------------------------------------------
    def reply(self, caller: Caller, body: dict[str, Any] | None) -> None:
        node = caller.node
        if node is not None:  # a runner's ack may carry this tick's commands for it
            self._runner_acks.setdefault(node, []).append((caller, body or {}))
            self.schedule_flush()
            return
        self._queue(self.router, [caller.identity, encode_ok(caller.rid, body)])

    def reply_error(self, caller: Caller, code: str, msg: str) -> None:
        self._queue(self.router, [caller.identity, encode_error(caller.rid, code, msg)])

    def publish(self, topic: str, op: str, body: dict[str, Any]) -> None:
        self._queue(self.xpub, [topic.encode(), encode(op, 0, body)])

    def publish_task_event(self, task_id: int, body: dict[str, Any]) -> None:
        """Queue ``evt.task.<id>``; a later state of the same task in this tick replaces it."""
        earlier = self._task_events.get(task_id)
        if earlier is not None:
            body["passed"] = earlier["passed"] + [earlier["state"]]
        self._task_events[task_id] = body
        self.schedule_flush()

    def command(self, node: str, op: str, body: dict[str, Any]) -> None:
        """Queue a host->runner command, sent after this tick commits.

        All commands for one runner in one tick leave as one message: inside the reply to
        that runner's ``task.update`` when there is one (the self-clocking path: each batch of
        results fetches the next starts), else as ``runner.batch`` (or the lone command)."""
        self._runner_cmds.setdefault(node, []).append({"op": op, "body": body})
        self.schedule_flush()

    async def call_runner(self, node: str, op: str, body: dict, timeout: float = 5.0) -> dict:
        """Send a command to a runner now and await its reply (``Unavailable`` on silence)."""
        rid = self._next_rid
        self._next_rid += 1
        future = asyncio.get_running_loop().create_future()
        self.runner_calls[rid] = future
        try:
            self.router.send([self.identity_of(node), encode(op, rid, body)])
            return await asyncio.wait_for(future, timeout)
        except (Unreachable, asyncio.TimeoutError):
            raise Unavailable(f"node {node} did not answer") from None
        finally:
            self.runner_calls.pop(rid, None)

    def _send_to(self, identity: bytes, frame: bytes) -> None:
        try:
            self.router.send([identity, frame])
        except Unreachable:
            pass

    def _queue(self, channel: Channel, frames: list[bytes]) -> None:
        self._outgoing.append((channel, frames))
        self.schedule_flush()

    # ---- the tick ----------------------------------------------------------------------
    def begin(self) -> None:
        """Open the tick's transaction if none is open (``flush`` will commit it)."""
        self._open_transaction()
        self.schedule_flush()

    def _open_transaction(self) -> None:
        if not self.store.conn.in_transaction:
            self.store.conn.execute("BEGIN")

    def schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def request_schedule(self) -> None:
        self._needs_schedule = True
        self.schedule_flush()

    def flush(self) -> None:
        """Schedule, commit, then send everything queued during the tick."""
        self._flush_scheduled = False
        if self.store is None or self.store.conn is None:
            return
        if self._needs_schedule:
            self._needs_schedule = False
            self._open_transaction()
            from zriver.host.dispatch import place

            for placement in self.scheduler.schedule(time.time()):
                place(self, placement)
        if self.store.conn.in_transaction:
            try:
                self.store.write_pending()
                self.store.conn.execute("COMMIT")
            except apsw.Error as exc:
                self._commit_failed(exc)
                return
        # Commands first (starts gate the runners' next work), then task events (what clients
        # wait for), then plain acknowledgements and replies.
        outgoing, acks = self._runner_messages()
        events, self._task_events = self._task_events, {}
        outgoing.extend((self.xpub, [f"evt.task.{task_id}".encode(), encode("task.state", 0, body)])
                        for task_id, body in events.items())
        outgoing.extend(acks)
        outgoing.extend(self._outgoing)
        self._outgoing = []
        for channel, frames in outgoing:
            try:
                channel.send(frames)
            except Unreachable:
                self._on_unreachable(frames)

    def _commit_failed(self, exc: apsw.Error) -> None:
        """The tick's transaction could not be written (disk full, read-only store): roll it
        back, tell every client answered in it that nothing was kept, drop its commands,
        events and runner acknowledgements (runners resend their updates), and rebuild the
        in-memory model from the store, which is what stands."""
        log.error("host.store_write_failed", error=str(exc))
        self.store.discard_pending()
        if self.store.conn.in_transaction:
            self.store.conn.execute("ROLLBACK")
        message = (f"the host could not write its store ({exc}); nothing of this request "
                   f"was kept: try again once the host's disk has room")
        refusals = []
        for channel, frames in self._outgoing:
            if channel is self.router and node_of(frames[0]) is None:
                refusals.append([frames[0], encode_error(peek_rid(frames[1]), "unavailable",
                                                         message)])
        self._outgoing, self._runner_cmds, self._runner_acks = [], {}, {}
        self._task_events = {}
        self._reload_state()
        for frames in refusals:
            self._send_to(frames[0], frames[1])

    def _reload_state(self) -> None:
        """Rebuild tasks, scheduler and dependencies from the store; nodes keep what the
        host knows of their runners (registration, liveness)."""
        for task in self.tasks.values():
            if task.limit_timer is not None:
                task.limit_timer.cancel()
        known, self.nodes = self.nodes, {}
        self.tasks = {}
        self.scheduler = Scheduler(self.settings.placement, self.settings.gpu_placement,
                                   self.settings.prefetch)
        self.deps = Dependencies()
        self._load_state()
        for name, node in known.items():
            if name in self.nodes:
                self.nodes[name] = node
                self.scheduler.set_node(name, node_spec(node.info))
                self.scheduler.set_node_state(name, node.state)
                self.scheduler.set_drained(name, node.drained is not None)
        self.schedule_flush()

    def _runner_messages(self) -> tuple[list[tuple[Channel, list[bytes]]], list[tuple]]:
        """This tick's runner messages, one per runner where possible: those carrying
        commands, and the plain acknowledgements."""
        acks, self._runner_acks = self._runner_acks, {}
        cmds, self._runner_cmds = self._runner_cmds, {}
        commanding, plain = [], []
        for node, replies in acks.items():
            for caller, body in replies[:-1]:
                plain.append((self.router, [caller.identity, encode_ok(caller.rid, body)]))
            caller, body = replies[-1]
            if node in cmds:
                body = {**body, "commands": cmds.pop(node)}
                commanding.append((self.router, [caller.identity, encode_ok(caller.rid, body)]))
            else:
                plain.append((self.router, [caller.identity, encode_ok(caller.rid, body)]))
        for node, commands in cmds.items():
            identity = self.identity_of(node)
            if len(commands) == 1:
                frame = encode(commands[0]["op"], 0, commands[0]["body"])
            else:
                frame = encode("runner.batch", 0, {"commands": commands})
            commanding.append((self.router, [identity, frame]))
        return commanding, plain

    def _on_unreachable(self, frames: list[bytes]) -> None:
        name = node_of(frames[0])
        if name is None:
            return  # a client that left: nothing to do
        from zriver.host.dispatch import runner_unreachable

        runner_unreachable(self, name, frames)

    def identity_of(self, name: str) -> bytes:
        """Where commands for node ``name`` go: its registered runner."""
        node = self.nodes.get(name)
        if node is None or node.identity is None:
            return runner_identity(name, "")
        node.sent = time.monotonic()
        return node.identity

    def connected(self, node: NodeRecord) -> bool:
        """Whether ``node``'s registered runner is connected and was heard within a lease."""
        if node.identity is None or time.monotonic() - node.seen > self.lease:
            return False
        try:
            self.router.send([node.identity, encode("runner.probe")])
        except Unreachable:
            return False
        return True

    @property
    def lease(self) -> float:
        """Seconds of silence after which a node is unreachable (runner/lease.py)."""
        return self.settings.heartbeat_interval * self.settings.heartbeat_misses

    # ---- nodes -------------------------------------------------------------------------
    def set_node_state(self, node: NodeRecord, state: str, reason: str) -> None:
        node.state = state
        self.begin()
        self.scheduler.set_node_state(node.name, state)
        self.store.set_node_state(node.name, state, node.last_seen)
        self.publish(f"evt.node.{node.name}", "node.state", {"name": node.name, "state": state,
                                                             "reason": reason})
        log.info("node.state", node=node.name, state=state, reason=reason)
        self.request_schedule()

    async def _liveness_loop(self) -> None:
        interval = self.settings.heartbeat_interval
        last = time.monotonic()
        while True:
            await asyncio.sleep(interval / 2)
            # Read what waited first (a stalled host must not blame the nodes whose words
            # are queued), and shift every node's clock by the time the loop did not look.
            self.router.drain()
            self.xsub.drain()
            now = time.monotonic()
            stalled = now - last - interval
            last = now
            if stalled > 0:
                log.warning("host.stalled", seconds=round(stalled + interval / 2, 2))
                for node in self.nodes.values():
                    node.seen += stalled
                    node.sent += stalled
            self.judge_liveness(now)

    def judge_liveness(self, now: float) -> None:
        """Mark silent nodes unreachable, requeue their unstarted work once the lease has
        surely run out on the runner, and give their tasks up past the grace."""
        from zriver.host.dispatch import node_given_up, node_unreachable, requeue_unstarted

        lease, grace = self.lease, self.settings.unreachable_grace
        for node in list(self.nodes.values()):
            quiet = now - node.seen
            watched = node.state in (ONLINE, DEGRADED) or (
                node.state == OFFLINE and not node.registered and not node.given_up)
            if watched and quiet > lease:
                node_unreachable(self, node, f"no word from it for {quiet:.1f} s")
            if node.state != UNREACHABLE:
                continue
            if (not node.unstarted_requeued
                    and now - max(node.seen, node.sent) > lease + self.settings.heartbeat_interval):
                requeue_unstarted(self, node)
            if quiet > grace:
                node_given_up(self, node, f"unreachable for longer than the grace of "
                                          f"{grace:.0f} s")

    def hello(self) -> dict[str, Any]:
        return {"version": __version__, "protocol": PROTOCOL_VERSION,
                "incarnation": self.incarnation, "endpoints": self.endpoints,
                "heartbeat_interval": self.settings.heartbeat_interval,
                "shared_dir": self.settings.shared_dir}


def node_spec(info: dict[str, Any]) -> NodeSpec:
    """The scheduler's view of a runner's registration info."""
    zones = tuple(tuple(zone) for zone in info.get("zones") or [info["cores"]])
    gpus = tuple(int(gpu["index"]) for gpu in info.get("gpus") or [])
    return NodeSpec(zones, int(info["memory"]), gpus, frozenset(info.get("backends") or ["native"]))


def gpu_change(info: dict[str, Any], heartbeat: dict[str, Any]) -> str:
    """Why the GPUs a heartbeat reports differ from the registered ones ("" when they don't)."""
    if "gpu_uuids" not in heartbeat:
        return ""
    registered = [gpu["uuid"] for gpu in info.get("gpus") or []]
    now = list(heartbeat["gpu_uuids"])
    if now == registered:
        return ""
    gone = [u for u in registered if u not in now]
    new = [u for u in now if u not in registered]
    parts = ([f"GPU {', '.join(gone)} vanished"] if gone else []) + (
        [f"GPU {', '.join(new)} appeared"] if new else [])
    return "; ".join(parts) or "GPU order changed"


def allocation_from_wire(alloc: dict[str, Any]) -> Allocation:
    return Allocation(alloc["node"], tuple(alloc["cores"]), alloc["memory"],
                      tuple(alloc.get("gpus") or ()), alloc.get("numa"))


def allocation_to_wire(alloc: Allocation) -> dict[str, Any]:
    return {"node": alloc.node, "cores": list(alloc.cores), "memory": alloc.memory,
            "gpus": list(alloc.gpus), "numa": alloc.numa}
