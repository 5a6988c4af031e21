"""The host's ZeroMQ adapter: sockets, the per-tick transaction, and carrying out effects.

The model and its rules are in ``HostCore`` (``zriver.host.core``), which does no I/O. This
adapter decodes what arrives, makes the caller's ``Principal`` (from the message's CURVE key,
or, with ``security = "none"``, from what the peer says), calls the core, and carries out the
effects it returns in a fixed order per loop tick:

1. ``Write`` at once, inside the tick's one transaction (a SAVEPOINT per request: a handler
   that raises changes nothing);
2. at the end of the tick (``flush``): the scheduler's placements, then the commit;
3. only then the runner commands, task events and other events, and replies: nothing is
   acknowledged before it is durable.

Other front ends in this process (the SSH relay, the web API) use the same seam: ``call``
runs an op as a principal and returns its reply (deferred or not) after the commit, and
``bus`` carries every event (``zriver.host.bus``). A runner in this process (``zriver up``)
speaks to the host over an ``InProcessLink`` (``zriver.inproc``, made by ``runner_link``):
its envelopes enter exactly where decoded ROUTER messages do (``_on_envelope``, with its
identity and key), and what the host sends to its identity is handed to it as objects.
Messages to ROUTER peers are queued as ``Envelope`` objects and encoded only when a socket
is the next hop.

Live logs: runners publish ``log.<id>`` chunks to the XSUB, for the tasks it subscribed to:
those someone follows (``host/followers.py``; a runner tails nothing else). With
authentication on they are not forwarded on the XPUB (which anyone with a key may subscribe
to); each chunk goes over the ROUTER to the clients that asked ``task.follow`` for that task,
an op only its owner and admins may call. With ``security = "none"`` they go out on the XPUB
as well, and its ``log.`` subscribers count as followers.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

import apsw
import structlog

from zriver import keys as keyfiles
from zriver.config import HostSettings
from zriver.errors import (Forbidden, Internal, NotFound, Unavailable, ZriverError,
                           error_from_reply)
from zriver.host.backup import Backups
from zriver.host.bus import EventBus
from zriver.host.core import HostCore
from zriver.host.effects import (ArmTimer, CallService, CancelTimer, Command, Now, Publish,
                                 ReadLog, Refuse, Reply, Request, TaskEvent, Write)
from zriver.host.envs import Environments
from zriver.host.followers import Followers
from zriver.host.history import History
from zriver.host.retention import Retention
from zriver.host.keytable import Keys
from zriver.host.latency import Latency
from zriver.host.relay import Relay
from zriver.host.sshkeys import SshKeys
from zriver.host.tokens import Tokens
from zriver.host.streamhub import StreamHub
from zriver.host.vps import Vps
from zriver.host.zap import Authenticator
from zriver.host.handlers import check_owner, register_core_ops
from zriver.host.model import node_of, runner_identity
from zriver.host.ops import DEFERRED, PEOPLE_ONLY, SERVICE, OpTable
from zriver.host.store import CORE_MIGRATIONS, Store
from zriver.logfiles import read_slice
from zriver.principal import ADMIN, RUNNER, Principal
from zriver.inproc import InProcessLink
from zriver.protocol import ERROR, OK, arg, decode, encode, pack, peek_rid, Envelope
from zriver.wire import Channel, Unreachable, Wire

log = structlog.get_logger("zriver.host")

TRUSTED = Principal("anyone", ADMIN)
"""Every client's principal with ``security = "none"``."""
LIGHT_OPS = frozenset({"runner.heartbeat", "runner.ping"})
"""Ops run outside a savepoint, in no transaction unless they write (``Host._handle_light``)."""


def now() -> Now:
    return Now(time.time(), time.monotonic())


class Host:
    """The coordinator. ``start`` binds and loads state; ``stop`` closes everything."""

    def __init__(self, settings: HostSettings, extensions: list[Any] | None = None,
                 bootstrap: list[tuple[str, str, str]] = ()) -> None:
        """``bootstrap``: (name, role, public key) trusted at start (``zriver up``'s local
        admin and runner)."""
        self.settings = settings.resolved()
        self.data_dir = Path(self.settings.data_dir)
        self.incarnation = secrets.token_hex(4)
        self.secure = self.settings.security != "none"
        self.keys = Keys(bootstrap)
        self.ssh_keys = SshKeys()
        self.tokens = Tokens()
        """Web API tokens (``zriver.host.tokens``): ``principal_for(secret)``."""
        self.vps = Vps()
        self.history = History()
        """Cluster usage samples (``zriver.host.history``): ``usage.history``."""
        self.retention = Retention(self.settings.retention_seconds)
        """Old finished tasks pruned, their usage rolled up (``zriver.host.retention``):
        ``usage.report``."""
        self.extensions = [self.keys, self.ssh_keys, self.tokens, self.vps,
                           self.history, self.retention, Backups()] + (
            extensions if extensions is not None else [Environments(self.settings)])
        self.ops = OpTable()
        register_core_ops(self.ops)
        self.ops.add("task.follow", follow, PEOPLE_ONLY, SERVICE)
        self.ops.add("task.unfollow", unfollow, PEOPLE_ONLY, SERVICE)
        for extension in self.extensions:
            extension.register(self.ops)
        self.migrations = CORE_MIGRATIONS + [m for e in self.extensions for m in e.migrations]
        self.latency = Latency(self.ops)
        """Request and dispatch latency histograms (``zriver.host.latency``), for metrics."""
        self.bus = EventBus()
        self.followers = Followers()
        self._heartbeat_prefixes: set[bytes] = set()
        """XPUB subscriptions that cover heartbeat topics (``_heartbeat_wanted``)."""
        self.core: HostCore | None = None
        self.runner_calls: dict[int, asyncio.Future] = {}
        self.endpoints: dict[str, str] = {}
        self.started_at = 0.0
        self._outgoing: list[tuple[Channel | None, list]] = []
        """Queued for after the commit: ``(self.xpub, [topic, frame])`` or ``(self.router
        or None, [identity, Envelope])``; ``None``: nobody minds if it finds no peer."""
        self._links: dict[bytes, InProcessLink] = {}
        """Runner identities reached over an in-process link (``zriver up``)."""
        self._answers: list[tuple[asyncio.Future, dict | None, ZriverError | None]] = []
        self._runner_cmds: dict[str, list[dict[str, Any]]] = {}
        self._task_events: dict[int, dict[str, Any]] = {}
        self._runner_acks: dict[str, list[tuple[Request, dict[str, Any]]]] = {}
        self._timers: dict[tuple, asyncio.TimerHandle] = {}
        self._tick_requests: list[Request] = []
        self._flush_scheduled = False
        self._next_rid = 1
        self._loops: list[asyncio.Task] = []
        self.store: Store | None = None
        self.wire: Wire | None = None
        self.server_keys: keyfiles.ServerKeys | None = None
        self.zap: Authenticator | None = None
        self.relay: Relay | None = None
        """The SSH relay (``zriver.host.relay``) while started; ``None`` with relay_port -1."""
        self.web: Any = None
        """The web front end (``zriver.web.server.WebServer``) while started; ``None`` with
        web_port -1."""
        self.streams = StreamHub(self)
        """Byte streams to runners (``zriver.host.streamhub``), bound by ``start``."""

    # ---- the model, for tests and extensions -------------------------------------------
    @property
    def tasks(self):
        return self.core.tasks

    @property
    def nodes(self):
        return self.core.nodes

    @property
    def scheduler(self):
        return self.core.scheduler

    @property
    def lease(self) -> float:
        return self.core.lease

    # ---- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        self.started_at = time.time()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(self.data_dir / "host.db", self.migrations)
        self.core = HostCore(self.settings, self.store, self.ops, self.incarnation,
                             linked=self._linked)
        for extension in self.extensions:
            extension.attach(self)
        if self.secure:
            self.server_keys, self._key_created = keyfiles.ensure_server_keys(self.data_dir)
        else:
            log.warning("host.security_off", security="none",
                        warning="authentication is OFF: anyone who can reach these ports can "
                                "run anything on every node as any user. Use only on a "
                                "trusted network (security = \"curve\" turns it on)")
        self.wire = Wire(self.settings.max_message_bytes, server_keys=self.server_keys)
        if self.secure:
            self.zap = Authenticator(self.wire, lambda key: self.keys.table.allowed(key))
            self.zap.start()
        addr = self.settings.bind_address
        router, self.endpoints["router"] = self.wire.router(f"tcp://{addr}:{self.settings.router_port}")
        xsub, self.endpoints["xsub"] = self.wire.xsub(f"tcp://{addr}:{self.settings.xsub_port}")
        xpub, self.endpoints["xpub"] = self.wire.xpub(f"tcp://{addr}:{self.settings.xpub_port}")
        self.endpoints["streams"] = self.streams.start()
        self.core.hello_info = {"endpoints": self.endpoints, "security": self.settings.security,
                                "host_key": self.server_keys.public if self.secure else ""}
        self.begin()
        self._execute(self.core.load(now()))
        self.router = Channel(router, self._on_router, self.flush, with_user=self.secure)
        self.xpub = Channel(xpub, self._on_subscription, lossy=True)
        self.xsub = Channel(xsub, self._on_published, self.flush, with_user=self.secure)
        await self._start_relay(addr)
        await self._start_web(addr)
        self._write_endpoints()
        self._loops.append(asyncio.ensure_future(self._liveness_loop()))
        log.info("host.started", endpoints=self.endpoints, tasks=len(self.core.tasks),
                 nodes=len(self.core.nodes), incarnation=self.incarnation,
                 security=self.settings.security,
                 host_key=self.server_keys.public if self.secure else None,
                 host_key_created=bool(getattr(self, "_key_created", False)))

    async def _start_relay(self, addr: str) -> None:
        """Start the SSH relay unless ``relay_port`` is -1; hello and endpoints.json say
        where it is and its host key."""
        if self.settings.relay_port == -1:
            return
        self.relay = Relay(self)
        self.endpoints["relay"] = await self.relay.start(addr, self.settings.relay_port)
        self.core.hello_info["relay"] = self.relay.info

    async def _start_web(self, addr: str) -> None:
        """Start the dashboard and HTTP API unless ``web_port`` is -1; hello says its port."""
        if self.settings.web_port == -1:
            return
        from zriver.web.server import WebServer  # aiohttp: only where the web is on

        self.web = WebServer(self)
        self.endpoints["web"] = await self.web.start(addr, self.settings.web_port)
        self.core.hello_info["web"] = {"port": self.web.port}

    async def stop(self) -> None:
        if self.web is not None:
            await self.web.stop()
        if self.relay is not None:
            await self.relay.stop()
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        for extension in self.extensions:
            await extension.close()
        await self.streams.close()
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
        relay = {"relay_host_key": self.relay.host_key} if self.relay is not None else {}
        tmp.write_text(json.dumps({**self.endpoints, **relay, "pid": os.getpid(),
                                   "security": self.settings.security,
                                   "host_key": self.server_keys.public if self.secure else ""}))
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

    # ---- receiving ---------------------------------------------------------------------
    def _on_router(self, frames: list[bytes], user: str | None = None) -> None:
        if len(frames) != 2:
            log.warning("host.bad_frames", count=len(frames))
            if len(frames) >= 2:
                self._send_to(frames[0], Envelope(ERROR, 0, {}, "bad_request",
                                                  "a request is exactly one frame"))
            return
        identity, frame = frames
        try:
            env = decode(frame, self.settings.max_message_bytes)
        except ZriverError as exc:
            log.warning("host.bad_message", error=str(exc), code=exc.code)
            self._send_to(identity, Envelope(ERROR, peek_rid(frame), {}, exc.code, str(exc)))
            return
        self._on_envelope(identity, env, user)

    def _on_envelope(self, identity: bytes, env: Envelope, user: str | None) -> None:
        """A decoded ROUTER message, or an envelope from an in-process runner: the sender's
        principal from its key and identity, then the request or the runner's reply."""
        try:
            principal = self._principal(identity, user)
        except Forbidden as exc:
            if not env.is_reply:
                self._send_to(identity, Envelope(ERROR, env.rid, {}, exc.code, str(exc)))
            return
        current = now()
        if principal.role == RUNNER:
            self.core.touch(principal.name, identity, current)
        if env.is_reply:
            if principal.role == RUNNER:
                self._on_runner_reply(env)
            return
        self._handle(Request(principal, env.rid, identity), env.op, env.body, current)

    def _principal(self, identity: bytes, user: str | None) -> Principal:
        """Who sent a ROUTER message: the principal of its CURVE key, looked up per message
        (a key revoked on an open connection is refused at its next request); with
        ``security = "none"``, what its identity claims. A runner identity
        (``r:<node>:<instance>``) must carry that node's runner key, and only runner keys
        may use one."""
        name = node_of(identity)
        if not self.secure:
            return Principal(name, RUNNER) if name is not None else TRUSTED
        principal = self.keys.table.principal(user or "")
        if principal is None:
            raise Forbidden("this key is not (or no longer) authorised on this host")
        if name is not None and principal.node != name:
            raise Forbidden(f"only the runner key of node {name!r} may speak as its runner; "
                            f"this key is {principal.name!r} ({principal.role})")
        if name is None and principal.role == RUNNER:
            raise Forbidden("a runner key must connect with its runner identity")
        return principal

    def _handle(self, request: Request, op: str, body: dict[str, Any],
                current: Now | None = None) -> None:
        """Run one request inside its own SAVEPOINT of the tick's transaction (``LIGHT_OPS``:
        outside any, as a published heartbeat is)."""
        if op in LIGHT_OPS:
            self._handle_light(request, op, body, current or now())
            return
        self.latency.begin(request, op)
        self.begin()
        self.store.write_pending()  # what is pending now belongs to earlier, successful requests
        try:
            with self.store.conn:
                self._execute(self.core.handle(request, op, body, current or now()))
        except ZriverError as exc:  # an I/O op (``CallService``) refused before answering
            self.store.discard_pending()
            self.reply_error(request, exc.code, str(exc))
        except apsw.Error as exc:  # the store cannot be written (disk full, read-only)
            self.store.discard_pending()
            log.error("host.store_write_failed", op=op, error=str(exc))
            self._execute(self.core.reload(current or now()))  # the model: what is stored
            self.reply_error(request, Unavailable.code, f"the host could not write its store "
                                                        f"({exc}); nothing was changed")
        except Exception as exc:  # a bug: answer, log, keep serving
            self.store.discard_pending()
            log.exception("host.handler_crashed", op=op)
            self.reply_error(request, Internal.code, f"internal error in {op}: {exc!r}")

    def _handle_light(self, request: Request, op: str, body: dict[str, Any],
                      current: Now) -> None:
        """A runner's heartbeat or ping: 200 nodes send one every interval, and most store
        nothing, so the tick's transaction is opened only for effects that write (a node's
        state changed), and there is no savepoint (the core drops a refused call's effects
        itself)."""
        self.latency.begin(request, op)
        try:
            effects = self.core.handle(request, op, body, current)
        except Exception as exc:  # a bug: answer, log, keep serving
            log.exception("host.handler_crashed", op=op)
            self.reply_error(request, Internal.code, f"internal error in {op}: {exc!r}")
            return
        if any(type(effect) is Write for effect in effects):
            self.begin()
        self._execute(effects)

    async def call(self, principal: Principal, op: str, body: dict[str, Any]) -> dict:
        """Run ``op`` as ``principal`` from this process (the relay, the web API): the same
        op table, role checks and effects as a ZeroMQ request. Returns the reply body once
        it is durable; raises the reply's ``ZriverError`` when refused."""
        future = asyncio.get_running_loop().create_future()
        self._handle(Request(principal, future=future), op, body)
        self.schedule_flush()
        return await future

    def _on_runner_reply(self, env: Envelope) -> None:
        future = self.runner_calls.pop(env.rid, None)
        if future is None or future.done():
            return
        if env.op == "ok":
            future.set_result(env.body)
        else:
            future.set_exception(error_from_reply(env.code, env.msg))

    def _on_published(self, frames: list[bytes], user: str | None = None) -> None:
        """Everything runners publish passes here on its way to subscribers. With
        authentication, only runner keys publish, and a runner only ``hb.<its node>`` and
        ``log.<a task placed on its node>``: anything else is dropped (and counted)."""
        if len(frames) != 2 or (self.secure and not self._may_publish(frames[0], user)):
            self.core.dropped_publications += 1
            return
        topic = frames[0]
        if topic.startswith(b"log."):
            self._forward_log(topic, frames)
            return
        if not topic.startswith(b"hb."):
            self._forward(frames)
            return
        try:
            env = decode(frames[1], self.settings.max_message_bytes)
        except ZriverError:
            return
        body = env.body
        if self._heartbeat_wanted(topic):
            if "instance" in body:  # the secret of the runner's identity: for the host only
                body = {k: v for k, v in body.items() if k != "instance"}
                frames = [topic, encode(env.op, 0, body)]
            self._forward(frames)
        effects = self.core.heartbeat(topic[3:].decode(errors="replace"), env.body, now())
        if any(type(effect) is Write for effect in effects):
            self.begin()  # (most heartbeats store nothing: no transaction for them)
        self._execute(effects)
        self.schedule_flush()

    def _forward(self, frames: list[bytes]) -> None:
        """A publication to the XPUB's subscribers and the in-process bus."""
        self.xpub.send(frames)
        if self.bus:
            self.bus.publish(frames[0], frames[1])

    def _may_publish(self, topic: bytes, user: str | None) -> bool:
        principal = self.keys.table.principal(user or "")
        if principal is None or principal.role != RUNNER:
            return False
        if topic.startswith(b"hb."):
            return topic[3:].decode(errors="replace") == principal.name
        if topic.startswith(b"log."):
            try:
                task_id = int(topic[4:])
            except ValueError:
                return False
            return self.core.task_node(task_id) == principal.name
        return False

    def _heartbeat_wanted(self, topic: bytes) -> bool:
        """Whether anyone would get heartbeat ``topic``: an XPUB subscriber or a listener of
        the in-process bus (200 idle nodes send 100 heartbeats a second; nobody may care)."""
        return bool(self.bus) or any(topic.startswith(p) for p in self._heartbeat_prefixes)

    def _on_subscription(self, frames: list[bytes]) -> None:
        """An XPUB (un)subscription: those covering heartbeats are kept (the XPUB tells the
        first subscription of a prefix and its last unsubscription). Security off, log
        chunks go out on the XPUB, so its ``log.`` subscribers are followers too; with
        CURVE they get no chunks there."""
        message = frames[0]
        if message[:1] in (b"\x00", b"\x01"):
            prefix = message[1:]
            if prefix.startswith(b"hb.") or b"hb.".startswith(prefix):
                if message[0] == 1:
                    self._heartbeat_prefixes.add(prefix)
                else:
                    self._heartbeat_prefixes.discard(prefix)
        if not self.secure:
            self.followers.subscription(frames[0])
            self.tail_followed()

    def tail_followed(self) -> None:
        """Subscribe the XSUB to the logs followed now, and only those: each runner tails
        the followed tasks it runs (``host/followers.py``); a runner on an in-process link
        is told the same subscriptions."""
        for message in self.followers.changes():
            self.xsub.send([message])
            for link in self._links.values():
                link.subscription(message)

    def _forward_log(self, topic: bytes, frames: list[bytes]) -> None:
        """A log chunk: to its followers over the ROUTER, the bus, and (security off) the
        XPUB."""
        if not self.secure:
            self.xpub.send(frames)
        if self.bus:
            self.bus.publish(topic, frames[1])
        for link in self.followers.of(topic, time.monotonic()):
            try:
                self.router.send([link, frames[1]])
            except Unreachable:
                self.followers.drop(link)
                self.tail_followed()

    # ---- carrying out effects ----------------------------------------------------------
    def _execute(self, effects: list) -> None:
        """Carry out the core's effects: writes now (the caller opened the transaction),
        the rest queued for after the commit, timers and I/O ops as they come."""
        for effect in effects:
            kind = type(effect)
            if kind is Write:
                self.store.apply(effect.method, effect.args, effect.fields)
            elif kind is TaskEvent:
                self._task_event(effect.task_id, effect.body)
            elif kind is Command:
                self._command(effect)
            elif kind is Reply:
                self.reply(effect.request, effect.body)
            elif kind is Refuse:
                self.reply_error(effect.request, effect.code, effect.msg)
            elif kind is Publish:
                self.publish(effect.topic, effect.op, effect.body)
            elif kind is ArmTimer:
                self._arm(effect.key, effect.delay)
            elif kind is CancelTimer:
                handle = self._timers.pop(effect.key, None)
                if handle is not None:
                    handle.cancel()
            elif kind is ReadLog:
                asyncio.ensure_future(self._read_log(effect))
            elif kind is CallService:
                self._call_service(effect)
            else:
                raise Internal(f"unknown effect {effect!r}")

    def _task_event(self, task_id: int, body: dict[str, Any]) -> None:
        """Queue ``evt.task.<id>``; a later state of the same task in this tick replaces it."""
        earlier = self._task_events.get(task_id)
        if earlier is not None:
            body["passed"] = earlier["passed"] + [earlier["state"]]
        self._task_events[task_id] = body
        self.schedule_flush()

    def _command(self, effect: Command) -> None:
        """All commands for one runner in one tick leave as one message: inside the reply to
        that runner's ``task.update`` when there is one (the self-clocking path: each batch
        of results fetches the next starts), else as ``runner.batch`` (or the lone command).
        A command with its own ``link`` goes alone, and nobody minds if it finds no one."""
        if effect.link is not None:
            self._outgoing.append((None, [effect.link, Envelope(effect.op, 0, effect.body)]))
        else:
            self._runner_cmds.setdefault(effect.node, []).append(
                {"op": effect.op, "body": effect.body})
        self.schedule_flush()

    def _arm(self, key: tuple, delay: float) -> None:
        old = self._timers.pop(key, None)
        if old is not None:
            old.cancel()
        self._timers[key] = asyncio.get_running_loop().call_later(delay, self._on_timer, key)

    def _on_timer(self, key: tuple) -> None:
        self._timers.pop(key, None)
        self.begin()
        self._execute(self.core.timer(key, now()))

    def _call_service(self, effect: CallService) -> None:
        """An extension's op (its role already checked): it may answer later."""
        result = effect.handler(self, effect.request, effect.body)
        if asyncio.iscoroutine(result):
            asyncio.ensure_future(self._finish_async(effect.request, result))
        elif result is not DEFERRED:
            self.reply(effect.request, result)

    async def _finish_async(self, request: Request, coro) -> None:
        try:
            result = await coro
        except ZriverError as exc:
            self.reply_error(request, exc.code, str(exc))
        except apsw.Error as exc:
            log.error("host.store_write_failed", error=str(exc))
            self.reply_error(request, Unavailable.code,
                             f"the host could not write its store ({exc})")
        except Exception as exc:
            log.exception("host.handler_crashed", op=getattr(coro, "__name__", "?"))
            self.reply_error(request, Internal.code, f"internal error: {exc!r}")
        else:
            self.reply(request, result)
        self.schedule_flush()

    async def _read_log(self, effect: ReadLog) -> None:
        """A log slice: the shared file when it exists, else the task's runner, else empty."""
        read, final = effect.read, {"final": effect.final}
        try:
            if effect.path is not None and os.path.exists(effect.path):
                reply = read_slice(effect.path, read["offset"], read["limit"])
            elif effect.node is None:
                reply = {"data": b"", "offset": read["offset"], "size": 0}
            else:
                node = self.core.nodes.get(effect.node)
                if node is None or node.state != "online":
                    raise Unavailable(f"the logs of task {read['id']} are on node "
                                      f"{effect.node}, which is offline")
                reply = await self.call_runner(effect.node, "log.read", read)
        except ZriverError as exc:
            self.reply_error(effect.request, exc.code, str(exc))
        else:
            self.reply(effect.request, reply | final)
        self.schedule_flush()

    # ---- sending -----------------------------------------------------------------------
    def reply(self, request: Request, body: dict[str, Any] | None) -> None:
        self.latency.answered(request)
        if request.future is not None:
            self._answers.append((request.future, body or {}, None))
        elif request.principal.role == RUNNER:  # its ack may carry this tick's commands
            self._runner_acks.setdefault(request.principal.name, []).append((request, body or {}))
        else:
            self._outgoing.append((self.router, [request.link, Envelope(OK, request.rid,
                                                                        body or {})]))
        self.schedule_flush()

    def reply_error(self, request: Request, code: str, msg: str) -> None:
        self.latency.answered(request)
        if request.future is not None:
            self._answers.append((request.future, None, error_from_reply(code, msg)))
        else:
            self._outgoing.append((self.router, [request.link,
                                                 Envelope(ERROR, request.rid, {}, code, msg)]))
        self.schedule_flush()

    def push(self, request: Request, op: str, body: dict[str, Any]) -> None:
        """For extensions: a message to the client that waits for ``request``'s answer
        (``rid`` 0, so it is never taken for the answer; ``Client.pushed`` keeps it, an older
        client drops it). Nothing for an in-process caller; a client gone meanwhile is fine."""
        if request.link is None or request.future is not None:
            return
        self._outgoing.append((None, [request.link, Envelope(op, 0, body)]))
        self.schedule_flush()

    def publish(self, topic: str, op: str, body: dict[str, Any]) -> None:
        if topic.startswith("hb.") and not self._heartbeat_wanted(topic.encode()):
            return
        self._outgoing.append((self.xpub, [topic.encode(), encode(op, 0, body)]))
        self.schedule_flush()

    def command(self, node: str, op: str, body: dict[str, Any]) -> None:
        """For extensions: a host->runner command, sent after this tick commits."""
        self.core.command(node, op, body)
        self._execute(self.core.take())

    async def call_runner(self, node: str, op: str, body: dict, timeout: float = 5.0) -> dict:
        """Send a command to a runner now and await its reply (``Unavailable`` on silence)."""
        rid = self._next_rid
        self._next_rid += 1
        future = asyncio.get_running_loop().create_future()
        self.runner_calls[rid] = future
        try:
            self._deliver(self._link_of(node), Envelope(op, rid, body))
            return await asyncio.wait_for(future, timeout)
        except (Unreachable, asyncio.TimeoutError):
            raise Unavailable(f"node {node} did not answer") from None
        finally:
            self.runner_calls.pop(rid, None)

    def _send_to(self, identity: bytes, env: Envelope) -> None:
        try:
            self._deliver(identity, env)
        except Unreachable:
            pass

    def _deliver(self, identity: bytes, env: Envelope) -> None:
        """Send ``env`` to a ROUTER peer: handed as it is to a runner on an in-process
        link, else encoded onto the ROUTER (``Unreachable`` when no such peer is there)."""
        link = self._links.get(identity)
        if link is not None:
            link.deliver(env)
        else:
            self.router.send([identity, pack(env)])

    def runner_link(self) -> InProcessLink:
        """An in-process link for a runner in this process (``zriver up``): the runner
        opens it with its identity and key, and is then reached without sockets."""
        return InProcessLink(self._on_envelope, self._on_published, self.flush,
                             self._attach_link)

    def _attach_link(self, identity: bytes, link: InProcessLink | None) -> None:
        """(Also when the runner asks for its subscriptions again: they are told anew, as
        the XSUB tells a new connection.)"""
        if link is None:
            self._links.pop(identity, None)
        else:
            self._links[identity] = link
            self.tail_followed()
            for topic in sorted(self.followers.asked()):
                link.subscription(b"\x01" + topic)

    def _link_of(self, name: str) -> bytes:
        """Where commands for node ``name`` go: its registered runner."""
        node = self.core.nodes.get(name)
        if node is None or node.link is None:
            return runner_identity(name, "")
        node.sent = time.monotonic()
        return node.link

    def _linked(self, link: bytes) -> bool:
        """Whether a runner is connected at ``link`` now (a probe the ROUTER can refuse; a
        runner on an in-process link is there while its link is open)."""
        if link in self._links:
            return True
        try:
            self.router.send([link, encode("runner.probe")])
        except Unreachable:
            return False
        return True

    # ---- the tick ----------------------------------------------------------------------
    def begin(self) -> None:
        """Open the tick's transaction if none is open (``flush`` will commit it)."""
        if not self.store.conn.in_transaction:
            self.store.conn.execute("BEGIN")
        self.schedule_flush()

    def schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Schedule, commit, then send everything queued during the tick."""
        self._flush_scheduled = False
        if self.store is None or self.store.conn is None:
            return
        if self.core.needs_schedule:
            self.begin()
            self._execute(self.core.schedule(now()))
        if self.store.conn.in_transaction:
            try:
                self.store.write_pending()
                self.store.conn.execute("COMMIT")
            except apsw.Error as exc:
                self._commit_failed(exc)
                return
        if not (self._runner_cmds or self._runner_acks or self._task_events or self._outgoing
                or self._answers):
            return  # (a flush scheduled by a request that a channel's batch end has flushed)
        # Commands first (starts gate the runners' next work), then task events (what clients
        # wait for), then plain acknowledgements and replies.
        # (All of it is taken before anything is sent: what sending causes, e.g. a runner
        # found unreachable, belongs to the next tick and its commit.)
        commanding, acks = self._runner_messages()
        outgoing = []
        events, self._task_events = self._task_events, {}
        for task_id, body in events.items():
            frames = [f"evt.task.{task_id}".encode(), encode("task.state", 0, body)]
            outgoing.append((self.xpub, frames))
        outgoing.extend(acks)
        outgoing.extend(self._outgoing)
        self._outgoing = []
        self._send(commanding)
        for link in list(self._links.values()):  # an in-process runner starts them now,
            link.hand_over()  # before the events and replies leave
        self._send(outgoing)
        answers, self._answers = self._answers, []
        for future, body, error in answers:
            if not future.done():
                future.set_exception(error) if error is not None else future.set_result(body)
        self.latency.sent(events.values())

    def _send(self, outgoing: list[tuple[Channel | None, list]]) -> None:
        """Send queued messages: to the XPUB (and the bus), or to ROUTER peers."""
        xpub = self.xpub
        for channel, frames in outgoing:
            if channel is xpub:
                xpub.send(frames)
                if self.bus:
                    self.bus.publish(frames[0], frames[1])
                continue
            try:
                self._deliver(frames[0], frames[1])
            except Unreachable:
                if channel is not None:
                    self._on_unreachable(frames[0], frames[1])

    def _commit_failed(self, exc: apsw.Error) -> None:
        """The tick's transaction could not be written (disk full, read-only store): roll it
        back, tell every client answered in it that nothing was kept, drop its commands,
        events and runner acknowledgements (runners resend their updates), and rebuild the
        model from the store, which is what stands."""
        log.error("host.store_write_failed", error=str(exc))
        self.store.discard_pending()
        if self.store.conn.in_transaction:
            self.store.conn.execute("ROLLBACK")
        message = (f"the host could not write its store ({exc}); nothing of this request "
                   f"was kept: try again once the host's disk has room")
        refusals = [[frames[0], Envelope(ERROR, frames[1].rid, {}, "unavailable", message)]
                    for channel, frames in self._outgoing
                    if channel is self.router and node_of(frames[0]) is None]
        answers, self._answers = self._answers, []
        self._outgoing, self._runner_cmds, self._runner_acks = [], {}, {}
        self._task_events = {}
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        self.begin()
        self._execute(self.core.reload(now()))
        for frames in refusals:
            self._send_to(frames[0], frames[1])
        for future, _, _ in answers:
            if not future.done():
                future.set_exception(Unavailable(message))

    def _runner_messages(self) -> tuple[list[tuple[Channel, list[bytes]]], list[tuple]]:
        """This tick's runner messages, one per runner where possible: those carrying
        commands, and the plain acknowledgements."""
        acks, self._runner_acks = self._runner_acks, {}
        cmds, self._runner_cmds = self._runner_cmds, {}
        commanding, plain = [], []
        for node, replies in acks.items():
            for request, body in replies[:-1]:
                plain.append((self.router, [request.link, Envelope(OK, request.rid, body)]))
            request, body = replies[-1]
            if node in cmds:
                body = {**body, "commands": cmds.pop(node)}
                commanding.append((self.router, [request.link, Envelope(OK, request.rid, body)]))
            else:
                plain.append((self.router, [request.link, Envelope(OK, request.rid, body)]))
        for node, commands in cmds.items():
            link = self._link_of(node)
            if len(commands) == 1:
                env = Envelope(commands[0]["op"], 0, commands[0]["body"])
            else:
                env = Envelope("runner.batch", 0, {"commands": commands})
            commanding.append((self.router, [link, env]))
        return commanding, plain

    def _on_unreachable(self, identity: bytes, env: Envelope) -> None:
        """A message to a runner found no connection: the core decides what that means."""
        name = node_of(identity)
        if name is None:
            return  # a client that left: nothing to do
        node = self.core.nodes.get(name)
        if node is not None and node.link not in (None, identity):
            return  # not its registered runner (a reregister request to a stranger)
        # runner.batch, an ack carrying commands, or one command
        commands = env.body.get("commands") or [{"op": env.op, "body": env.body}]
        self.begin()
        self._execute(self.core.undeliverable(name, commands, now()))

    # ---- liveness ----------------------------------------------------------------------
    async def _liveness_loop(self) -> None:
        interval = self.settings.heartbeat_interval
        last = time.monotonic()
        while True:
            await asyncio.sleep(interval / 2)
            # Read what waited first (a stalled host must not blame the nodes whose words
            # are queued); the core shifts every node's clock by a stall.
            self.router.drain()
            self.xsub.drain()
            for link in list(self._links.values()):
                link.drain()
            current = now()
            if current.mono - last > interval:
                log.warning("host.stalled", seconds=round(current.mono - last, 2))
            last = current.mono
            self.judge_liveness(current)

    def judge_liveness(self, current: Now | None = None) -> None:
        self.begin()
        self._execute(self.core.judge_liveness(current or now()))
        self.followers.expire(time.monotonic())
        self.tail_followed()


def follow(host: Host, request: Request, body: dict[str, Any]) -> dict:
    """``task.follow {id}``: send this client the task's live log chunks over the ROUTER for
    ``ttl`` seconds (ask again before then to go on). Its owner and admins only."""
    task_id = arg(body, "id", int)
    row = host.store.get_task(task_id)
    if row is None:
        raise NotFound(f"no task {task_id}")
    check_owner(request.principal, row["owner"], task_id, "follow the logs of")
    if request.link is None:
        raise Forbidden("task.follow is for ZeroMQ clients; in-process callers use the bus")
    ttl = host.followers.add(task_id, request.link, time.monotonic())
    host.tail_followed()
    return {"id": task_id, "ttl": ttl}


def unfollow(host: Host, request: Request, body: dict[str, Any]) -> dict:
    """``task.unfollow {id}``: stop what ``task.follow`` started for this client (a
    follower that just goes away is dropped after the TTL, or once it cannot be reached)."""
    task_id = arg(body, "id", int)
    if request.link is not None:
        host.followers.remove(task_id, request.link)
        host.tail_followed()
    return {"id": task_id}
