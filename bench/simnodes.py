"""Simulated runner nodes: many zriver runners in one process, on one asyncio loop.

``Fleet`` holds ``SimNode``s that speak the runner protocol of ``zriver/runner/agent.py`` over
real sockets, each as the host sees a real runner:

* a DEALER with identity ``r:<node>:<instance>`` (a new instance per life) to the host's
  ROUTER, driven by a ``zriver.wire.Channel``; ``runner.register`` with the node's ``info``,
  the tasks it holds and its usage, then ``task.update`` batches (one in flight per node; the
  next leaves when its acknowledgement arrives, the same one again after ``request_timeout``)
  and, where the register reply offers ``heartbeat_request`` (and ``Fleet.heartbeat_requests``
  is set, the default), a ``runner.heartbeat`` request carrying the body of a real heartbeat
  whenever the lease is due for renewal (no reply for ``lease - 1.5`` heartbeat intervals, as
  the agent: every other interval with the default 3 misses), whose reply renews it;
* a PUB to the host's XSUB, on which the other heartbeats are published (``hb.<node>``, every
  heartbeat interval, the interval the register reply names); with a host that does not offer
  heartbeat requests (or ``heartbeat_requests=False``: the protocol of earlier runners), every
  heartbeat is published and a ``runner.ping`` is sent whenever the host has not answered for
  an interval;
* commands as the agent takes them: alone, inside ``runner.batch``, or in the ``commands`` of
  any reply; ``task.start`` makes a task "run" for ``Fleet.task_seconds`` (reported
  ``running``, then ``completed``, exit code 0), or until ``Fleet.release`` while
  ``Fleet.hold`` is set; a start ``behind`` a task running here waits until that one ends
  (the host's prefetch: chained starts); ``task.signal kill`` ends it ``killed``;
  ``runner.reregister`` registers again; requests with an id are answered (``log.read``:
  empty).

With ``keys`` (a ``zriver.keys.ClientKeys`` per node name) the sockets are CURVE clients, as
a runner with a runner key; without, plain (a host with ``security = "none"``). Nodes'
heartbeats are spread over the interval, as independent machines' are. Everything the fleet
saw go wrong (refused updates, resends, bad messages) is counted in ``Fleet.problems``.
"""

from __future__ import annotations

import asyncio
import collections
import secrets
import time
from typing import Any

import zmq

from zriver.keys import ClientKeys
from zriver.protocol import HARD_LIMIT_FACTOR, decode, encode, encode_error, encode_ok
from zriver.wire import Channel, send_frames

MAX_BATCH = 2000
"""Updates in one ``task.update`` (as ``zriver.runner.agent``)."""
MAX_MESSAGE = 8 * 1024 * 1024
GiB = 1 << 30


class Fleet:
    """Simulated nodes sharing one ZeroMQ context (see the module docstring)."""

    def __init__(self, router: str, xsub: str, *, cores: int = 4, memory: int = 16 * GiB,
                 task_seconds: float = 0.0, request_timeout: float = 5.0,
                 keys: dict[str, ClientKeys] | None = None,
                 heartbeat_requests: bool = True) -> None:
        self.router, self.xsub = router, xsub
        self.heartbeat_requests = heartbeat_requests
        self.cores, self.memory = cores, memory
        self.task_seconds = task_seconds
        self.request_timeout = request_timeout
        self.keys = keys or {}
        self.context = zmq.Context()
        self.context.set(zmq.MAX_SOCKETS, 65536)
        self.nodes: dict[str, SimNode] = {}
        self.hold = False
        """While set, started tasks run until ``release`` instead of ``task_seconds``."""
        self.counts: collections.Counter[str] = collections.Counter()
        """``started``, ``completed``, ``killed``, ``acked`` (updates the host acknowledged),
        ``heartbeats`` (published or requested), ``pings``, ``registrations``, ``commands``."""
        self.problems: collections.Counter[str] = collections.Counter()

    def socket(self, kind: int, keys: ClientKeys | None) -> zmq.Socket:
        """A connecting socket as ``zriver.wire.Wire`` makes one (CURVE client with keys)."""
        sock = self.context.socket(kind)
        sock.linger = 0
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE * HARD_LIMIT_FACTOR)
        if keys is not None:
            sock.setsockopt(zmq.CURVE_SERVERKEY, keys.server.encode("ascii"))
            sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public.encode("ascii"))
            sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret.encode("ascii"))
        return sock

    async def add(self, names: list[str], timeout: float, backends: list[str] | None = None,
                  ) -> list[float]:
        """Start nodes ``names`` and wait until each is registered; their register round
        trips in seconds. ``backends``: what they offer (default ``native``)."""
        fresh = [SimNode(self, name, backends or ["native"]) for name in names]
        for node in fresh:
            self.nodes[node.name] = node
        return list(await asyncio.wait_for(
            asyncio.gather(*(node.register() for node in fresh)), timeout))

    def live(self) -> int:
        """Tasks running on the fleet now."""
        return sum(len(node.running) for node in self.nodes.values())

    def unacked(self) -> int:
        """Updates not yet acknowledged by the host."""
        return sum(node.pending() for node in self.nodes.values())

    def release(self) -> None:
        """Clear ``hold``: every held task ends ``task_seconds`` from now."""
        self.hold = False
        for node in self.nodes.values():
            node.release()

    def close(self) -> None:
        for node in self.nodes.values():
            node.close()
        self.nodes.clear()
        self.context.term()


class SimNode:
    """One simulated runner (see the module docstring)."""

    def __init__(self, fleet: Fleet, name: str, backends: list[str]) -> None:
        self.fleet, self.name = fleet, name
        self.loop = asyncio.get_running_loop()
        keys = fleet.keys.get(name)
        self.instance = secrets.token_hex(8)
        self.dealer = fleet.socket(zmq.DEALER, keys)
        self.dealer.setsockopt(zmq.ROUTING_ID, f"r:{name}:{self.instance}".encode())
        self.dealer.setsockopt(zmq.RECONNECT_IVL, 100)
        self.dealer.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        self.dealer.setsockopt(zmq.SNDHWM, 100_000)
        self.dealer.connect(fleet.router)
        self.pub = fleet.socket(zmq.PUB, keys)
        self.pub.setsockopt(zmq.SNDHWM, 10_000)
        self.pub.connect(fleet.xsub)
        self.channel = Channel(self.dealer, self._on_message)
        self.info = {"hostname": name, "pid": 0, "version": "loadgen",
                     "cores": list(range(fleet.cores)), "zones": [list(range(fleet.cores))],
                     "memory": fleet.memory, "gpus": [], "labels": {}, "memory_limit": "none",
                     "backends": backends, "task_user": "", "can_switch_accounts": False,
                     "allowed_mounts": []}
        self.heartbeat_interval = 2.0
        self.heartbeat_request = False  # heartbeats as requests (settled at registration)
        self.lease = 6.0  # the host's, from the register reply
        self.lease_start: float | None = None  # when the request behind the last reply left
        self.running: dict[int, tuple[int, asyncio.TimerHandle | None]] = {}
        self.chained: dict[int, dict[str, Any]] = {}  # running id -> start staged behind it
        self.known: set[tuple[int, int]] = set()  # (id, attempt) started in this life
        self.unsent: list[dict[str, Any]] = []
        self.inflight: tuple[int, list[dict[str, Any]], float] | None = None
        self.resend: asyncio.TimerHandle | None = None
        self.calls: dict[int, tuple[asyncio.Future, float]] = {}
        self.sent_at: dict[int, float] = {}  # pings and heartbeat requests in flight
        self.next_rid = 1
        self.beat: asyncio.TimerHandle | None = None
        self.flush_scheduled = False
        self.registered = False

    # ---- requests ------------------------------------------------------------------------
    def _rid(self) -> int:
        rid, self.next_rid = self.next_rid, self.next_rid + 1
        return rid

    async def register(self) -> float:
        """Register (again); the round trip in seconds."""
        known = [{"id": tid, "state": "running", "attempt": attempt}
                 for tid, (attempt, _) in self.running.items()]
        known += [{"id": b["id"], "state": "assigned", "attempt": b.get("attempt", 1)}
                  for b in self.chained.values()]
        known += [{"id": u["id"], "state": u["state"], "attempt": u["attempt"]}
                  for u in (self.inflight[1] if self.inflight else []) + self.unsent]
        rid = self._rid()
        future = self.loop.create_future()
        started = time.monotonic()
        self.calls[rid] = (future, started)
        self.channel.send([encode("runner.register", rid, {
            "name": self.name, "info": self.info, "tasks": known, "usage": self._usage()})])
        try:
            reply = await asyncio.wait_for(future, self.fleet.request_timeout * 4)
        finally:
            self.calls.pop(rid, None)
        took = time.monotonic() - started
        self.heartbeat_interval = float(reply.get("heartbeat_interval", 2.0))
        self.lease = float(reply.get("lease") or 3 * self.heartbeat_interval)
        self.heartbeat_request = (self.fleet.heartbeat_requests
                                  and reply.get("heartbeat_request") is True)
        for task_id in reply.get("stop") or []:
            self._forget(task_id)
        self.fleet.counts["registrations"] += 1
        if not self.registered:
            self.registered = True
            # Spread over the interval, as independent machines are.
            self.beat = self.loop.call_later(
                self.heartbeat_interval * secrets.randbelow(1000) / 1000, self._heartbeat)
        self._send_batch()
        return took

    def _usage(self) -> dict[str, Any]:
        """A heartbeat body of the shape ``zriver.runner.agent`` sends."""
        return {"cpu_percent": 12.5, "memory_used": 3 * GiB, "memory_total": self.fleet.memory,
                "load": [0.5, 0.4, 0.3], "temperatures": {}, "gpus": [],
                "running": len(self.running), "memory_limit": "none", "gpu_uuids": [],
                "instance": self.instance, "at": time.time(),
                "docker": {"available": False, "error": "simulated node"}}

    def _heartbeat(self) -> None:
        """Publish ``hb.<node>``, or, when the lease is due for renewal (as the agent's
        ``_renewal_due``), a ``runner.heartbeat`` request; with ``heartbeat_requests`` off
        (the earlier protocol), publish and ping when the host has said nothing for an
        interval."""
        self.beat = self.loop.call_later(self.heartbeat_interval, self._heartbeat)
        self.fleet.counts["heartbeats"] += 1
        now = time.monotonic()
        if self.heartbeat_request and (
                self.lease_start is None
                or now - self.lease_start >= self.lease - 1.5 * self.heartbeat_interval):
            usage = self._usage()
            del usage["instance"]
            self._request("runner.heartbeat", {"name": self.name, "usage": usage})
            self.fleet.counts["heartbeat_requests"] += 1
            return
        try:
            send_frames(self.pub, [f"hb.{self.name}".encode(), encode("hb", 0, self._usage())])
        except zmq.ZMQError:
            self.fleet.problems["heartbeat_dropped"] += 1
        if not self.heartbeat_request and (
                self.lease_start is None or now - self.lease_start >= self.heartbeat_interval):
            self._request("runner.ping", {"name": self.name})
            self.fleet.counts["pings"] += 1

    def _request(self, op: str, body: dict[str, Any]) -> None:
        """Send ``op``; its reply renews the lease (``_reply``)."""
        now = time.monotonic()
        rid = self._rid()
        self.sent_at = {r: t for r, t in self.sent_at.items() if now - t < 60}
        self.sent_at[rid] = now
        self.channel.send([encode(op, rid, body)])

    # ---- receiving -----------------------------------------------------------------------
    def _on_message(self, frames: list[bytes]) -> None:
        try:
            env = decode(frames[-1], MAX_MESSAGE)
        except Exception as exc:
            self.fleet.problems[f"bad_message: {exc}"] += 1
            return
        if not env.is_reply:
            self._command(env.op, env.body, env.rid)
            return
        if self.inflight is not None and env.rid == self.inflight[0]:
            self._acked(env)
        else:
            self._reply(env)
        if env.op == "ok":
            for command in env.body.get("commands") or []:
                self._command(str(command.get("op")), command.get("body") or {})

    def _reply(self, env) -> None:
        sent = self.sent_at.pop(env.rid, None)
        call = self.calls.get(env.rid)
        if call is not None:
            sent = call[1]
            if not call[0].done():
                if env.op == "ok":
                    call[0].set_result(env.body)
                else:
                    call[0].set_exception(RuntimeError(f"{env.code}: {env.msg}"))
        if sent is not None:
            self._renew(sent)
        if env.op == "ok" and env.body.get("registered") is False:
            self.fleet.problems["ping_unregistered"] += 1
            self.loop.create_task(self.register())

    def _renew(self, sent: float) -> None:
        if self.lease_start is None or sent > self.lease_start:
            self.lease_start = sent

    def _acked(self, env) -> None:
        rid, updates, sent = self.inflight
        self.inflight = None
        if self.resend is not None:
            self.resend.cancel()
            self.resend = None
        self._renew(sent)
        if env.op != "ok":
            self.fleet.problems[f"update_refused: {env.code}: {env.msg}"] += 1
        self.fleet.counts["acked"] += len(updates)
        self._send_batch()

    def _command(self, op: str, body: dict[str, Any], rid: int = 0) -> None:
        self.fleet.counts["commands"] += 1
        if op == "task.start":
            self._start(body)
        elif op == "task.signal":
            if body.get("action") == "kill":
                self._end(int(body["id"]), "killed", -9)
        elif op == "runner.batch":
            for command in body.get("commands") or []:
                self._command(str(command.get("op")), command.get("body") or {})
        elif op == "runner.reregister":
            self.loop.create_task(self.register())
        elif op not in ("runner.probe", "log.read"):
            self.fleet.problems[f"unknown_op: {op}"] += 1
            if rid:
                self.channel.send([encode_error(rid, "unknown_op", f"unknown op {op!r}")])
            return
        if rid:
            self.channel.send([encode_ok(rid, {"data": b"", "size": 0} if op == "log.read"
                                         else {})])

    # ---- tasks ---------------------------------------------------------------------------
    def _start(self, body: dict[str, Any]) -> None:
        task_id, attempt = int(body["id"]), int(body.get("attempt", 1))
        if (task_id, attempt) in self.known:
            return  # a re-sent start (a registration after a lost reply)
        self.known.add((task_id, attempt))
        behind = body.get("behind")
        if behind is not None and (behind in self.running or any(
                staged["id"] == behind for staged in self.chained.values())):
            self.chained[behind] = body  # starts when ``behind`` ends, on its cores
            return
        self._launch(task_id, attempt)

    def _launch(self, task_id: int, attempt: int) -> None:
        handle = None if self.fleet.hold else self.loop.call_later(
            self.fleet.task_seconds, self._end, task_id, "completed", 0)
        self.running[task_id] = (attempt, handle)
        self.fleet.counts["started"] += 1
        self._report({"id": task_id, "attempt": attempt, "state": "running", "at": time.time()})

    def _end(self, task_id: int, state: str, exit_code: int) -> None:
        entry = self.running.pop(task_id, None)
        if entry is None:
            if state == "killed":
                self._unstage(task_id)
            return
        attempt, handle = entry
        if handle is not None:
            handle.cancel()
        self.known.discard((task_id, attempt))
        self.fleet.counts[state] += 1
        self._report({"id": task_id, "attempt": attempt, "state": state, "at": time.time(),
                      "exit_code": exit_code})
        staged = self.chained.pop(task_id, None)
        if staged is not None:
            self._launch(int(staged["id"]), int(staged.get("attempt", 1)))

    def _unstage(self, task_id: int, report: bool = True) -> None:
        """Drop a start staged behind another (killed before it started)."""
        for behind, staged in list(self.chained.items()):
            if staged["id"] == task_id:
                del self.chained[behind]
                if task_id in self.chained:  # what waited behind it moves up
                    self.chained[behind] = self.chained.pop(task_id)
                attempt = int(staged.get("attempt", 1))
                self.known.discard((task_id, attempt))
                if report:
                    self.fleet.counts["killed"] += 1
                    self._report({"id": task_id, "attempt": attempt, "state": "killed",
                                  "at": time.time(), "detail": "killed before it started"})
                return

    def _forget(self, task_id: int) -> None:
        """The host does not want it (a registration's ``stop``): end it unreported."""
        entry = self.running.pop(task_id, None)
        if entry is not None and entry[1] is not None:
            entry[1].cancel()
        self._unstage(task_id, report=False)

    def release(self) -> None:
        for task_id, (attempt, handle) in list(self.running.items()):
            if handle is None:
                self.running[task_id] = (attempt, self.loop.call_later(
                    self.fleet.task_seconds, self._end, task_id, "completed", 0))

    # ---- the outbox ----------------------------------------------------------------------
    def _report(self, update: dict[str, Any]) -> None:
        self.unsent.append(update)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        self._send_batch()

    def _send_batch(self) -> None:
        if self.inflight is not None or not self.unsent or not self.registered:
            return
        batch, self.unsent = self.unsent[:MAX_BATCH], self.unsent[MAX_BATCH:]
        rid = self._rid()
        self.inflight = (rid, batch, time.monotonic())
        self.channel.send([encode("task.update", rid, {"name": self.name, "updates": batch})])
        self.resend = self.loop.call_later(self.fleet.request_timeout, self._resend)

    def _resend(self) -> None:
        """No acknowledgement in time: send the same batch again (applied idempotently)."""
        self.resend = None
        if self.inflight is not None:
            self.fleet.problems["update_resent"] += 1
            self.unsent = self.inflight[1] + self.unsent
            self.inflight = None
            self._send_batch()

    def pending(self) -> int:
        return len(self.unsent) + (len(self.inflight[1]) if self.inflight else 0)

    def close(self) -> None:
        if self.beat is not None:
            self.beat.cancel()
        if self.resend is not None:
            self.resend.cancel()
        for _, handle in self.running.values():
            if handle is not None:
                handle.cancel()
        self.channel.close()
        self.dealer.close(0)
        self.pub.close(0)
