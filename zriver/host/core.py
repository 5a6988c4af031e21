"""The host core: the cluster's model and every rule that changes it, with no I/O.

``HostCore`` holds the unfinished tasks, the nodes, the scheduler, the dependencies and the
``task.wait`` waiters. It changes only through its entry points, each given the time
(``Now``) by its caller and returning the effects it produced (``zriver.host.effects``):

* ``handle(request, op, body, now)``: an op called by ``request.principal``; the op table
  checks the role first (``OpTable.resolve``), in this one place, for every front end;
* ``touch(name, link, now)`` / ``heartbeat(name, body, now)``: a runner was heard;
* ``timer(key, now)``: an ``ArmTimer`` fired (time limits, wait timeouts);
* ``undeliverable(name, commands, now)``: commands to a runner found no connection;
* ``judge_liveness(now)``: silent nodes become unreachable, then offline;
* ``schedule(now)``: place what can be placed (the adapter calls it at the end of a tick
  when ``needs_schedule`` is set).

It imports no zmq, asyncio, apsw, docker or ``time``. It reads the store through ``records``
(a read-only port: the adapter's ``Store``), and asks ``linked(link)`` whether a runner's link
is connected right now (a query the ZeroMQ adapter answers with a ROUTER probe).
"""

from __future__ import annotations

from typing import Any, Callable

from zriver.config import HostSettings
from zriver.errors import ZriverError
from zriver.host import dispatch
from zriver.host.deps import Dependencies
from zriver.host.effects import CallService, Command, Now, Publish, Refuse, Reply, Request, Rows
from zriver.host.model import (LiveTask, NodeRecord, allocation_from_wire, gpu_change,
                               node_spec, runner_identity)
from zriver.host.ops import DEFERRED, SERVICE, OpTable
from zriver.host.scheduler import DEGRADED, OFFLINE, ONLINE, UNREACHABLE, Scheduler
from zriver.host.tasktable import TaskTable
from zriver.host.waiting import Waiters
from zriver.spec import TaskSpec

RECONNECT_GRACE = 2.0
"""After a host restart, runners need up to their DEALER's longest reconnect interval (2 s,
``wire.py``) to be heard again: their silence is counted from that much after the start."""
ENDED_REMEMBERED = 20_000
"""How many finished tasks' nodes are remembered (a runner may publish a task's last log
chunks just after its end)."""


class HostCore:
    """The model and its rules; see the module docstring for the entry points."""

    def __init__(self, settings: HostSettings, records: Any, ops: OpTable, incarnation: str,
                 linked: Callable[[bytes], bool] = lambda link: False) -> None:
        self.settings = settings
        self.records = records
        self.ops = ops
        self.incarnation = incarnation
        self.linked = linked
        self.scheduler = Scheduler(settings.placement, settings.gpu_placement, settings.prefetch)
        self.deps = Dependencies()
        self.tasks = TaskTable()
        """The live tasks by id, with per-node and per-env indexes (``host/tasktable.py``)."""
        self.nodes: dict[str, NodeRecord] = {}
        self.waiters = Waiters(self)
        self.out: list = []
        self.rows = Rows(self.out)
        self.now = Now(0.0, 0.0)
        self.needs_schedule = False
        self.next_task_id = 1
        self.ended: dict[int, tuple[str | None, str, int | None]] = {}
        """Recently finished tasks: ``id -> (node, state, exit_code)``."""
        self.submit_checks: list[Callable[[Request, TaskSpec], None]] = []
        """Extensions' checks of each spec at submit (may fill fields: an env's version)."""
        self.hello_info: dict[str, Any] = {}
        """What ``cluster.hello`` answers besides the core's own fields (set by the adapter)."""
        self.foreign_heartbeats = 0
        """Heartbeats that named a node registered to another runner (dropped)."""
        self.dropped_publications = 0
        """Publications refused by their topic or their key (forged ``hb.``/``log.``)."""
        self.event_seq = 0
        """The last sequence number given to a task or batch event (``next_event_seq``)."""
        self._last_judged: float | None = None
        self.heartbeat_requests = True
        """Offer runners to send their heartbeats as ``runner.heartbeat`` requests (the
        register reply's ``heartbeat_request``); False answers as a host from before it, whose
        runners publish ``hb.<node>`` and ping (tests of old and new peers)."""

    # ---- effects -----------------------------------------------------------------------
    def take(self) -> list:
        """The effects produced since the last ``take``, in order."""
        effects = self.out
        self.out = []
        self.rows = Rows(self.out)
        return effects

    def command(self, node: str, op: str, body: dict[str, Any]) -> None:
        """Send ``op`` to ``node``'s registered runner after the commit (counts as the host
        speaking to it: its lease is renewed from now)."""
        record = self.nodes.get(node)
        if record is not None:
            record.sent = self.now.mono
        self.out.append(Command(node, op, body))

    def publish(self, topic: str, op: str, body: dict[str, Any]) -> None:
        self.out.append(Publish(topic, op, body))

    def next_event_seq(self) -> int:
        """A number for the next ``evt.task``/``evt.batch`` event (``seq`` in its body), one
        above the last. ``task.counts`` answers the last one given, so a client that has seen
        that event holds every change those counts include (events travel on the SUB socket,
        the reply on the DEALER: either may arrive first)."""
        self.event_seq += 1
        return self.event_seq

    @property
    def lease(self) -> float:
        """Seconds of silence after which a node is unreachable (runner/lease.py)."""
        return self.settings.heartbeat_interval * self.settings.heartbeat_misses

    # ---- entry points ------------------------------------------------------------------
    def handle(self, request: Request, name: str, body: dict[str, Any], now: Now) -> list:
        """Run op ``name`` for ``request.principal``. A ``ZriverError`` becomes a ``Refuse``
        and drops every effect of this call; any other exception drops them and propagates
        (a bug: the adapter logs it and refuses ``internal``)."""
        self.now = now
        mark = len(self.out)
        try:
            op = self.ops.resolve(request.principal, name)
            if op.kind == SERVICE:
                self.out.append(CallService(op.handler, request, body))
            else:
                result = op.handler(self, request, body)
                if result is not DEFERRED:
                    self.out.append(Reply(request, result))
        except ZriverError as exc:
            del self.out[mark:]
            self.out.append(Refuse(request, exc.code, str(exc)))
        except Exception:
            del self.out[mark:]
            raise
        return self.take()

    def touch(self, name: str, link: bytes, now: Now) -> None:
        """A message from ``link``, claiming node ``name``, arrived (no effects)."""
        node = self.nodes.get(name)
        if node is not None and node.link in (None, link):
            node.seen, node.last_seen = now.mono, now.wall

    def heartbeat(self, name: str, body: dict[str, Any], now: Now) -> list:
        """A heartbeat counts for the node's registered runner only; a runner that is not
        registered with this host (or whose node is unreachable or given up) is asked to
        register, which reconciles its tasks."""
        self.now = now
        node = self.nodes.get(name)
        link = runner_identity(name, str(body.get("instance", "")))
        if node is not None and node.link not in (None, link):
            self.foreign_heartbeats += 1
            return self.take()
        if node is None or not node.registered or node.state in (UNREACHABLE, OFFLINE):
            if node is not None:
                self.touch(name, link, now)  # alive: not lost, just not registered with us yet
            asked = node.reregister_asked if node else 0.0
            if now.mono - asked > self.settings.heartbeat_interval:
                self.out.append(Command(name, "runner.reregister", {}, link))
                if node is not None:
                    node.reregister_asked = node.sent = now.mono
            return self.take()
        self.touch(name, link, now)
        self.take_heartbeat(node, body)
        return self.take()

    def take_heartbeat(self, node: NodeRecord, body: dict[str, Any]) -> None:
        """The usage a heartbeat of ``node``'s registered runner carries (``hb.<node>`` on
        the XSUB, or a ``runner.heartbeat`` request): kept, and its GPU set checked."""
        node.heartbeat = body
        changed = gpu_change(node.info, body)
        if changed and node.state != DEGRADED:
            node.degraded = changed
            self.set_node_state(node, DEGRADED, changed)
        elif not changed and node.state == DEGRADED:
            node.degraded = ""
            self.set_node_state(node, ONLINE, "GPU set back to normal")

    def timer(self, key: tuple, now: Now) -> list:
        """Timer ``key`` fired: ``("limit", id, attempt)`` or ``("wait", number)``."""
        self.now = now
        if key[0] == "limit":
            dispatch.time_limit_reached(self, key[1], key[2])
        elif key[0] == "wait":
            self.waiters.answer(key[1])
        return self.take()

    def undeliverable(self, name: str, commands: list[dict[str, Any]], now: Now) -> list:
        """Commands for node ``name``'s registered runner found no connection."""
        self.now = now
        dispatch.runner_unreachable(self, name, commands)
        return self.take()

    def schedule(self, now: Now) -> list:
        """Place what the scheduler can place now."""
        self.now = now
        self.needs_schedule = False
        for placement in self.scheduler.schedule(now.wall):
            dispatch.place(self, placement)
        return self.take()

    def judge_liveness(self, now: Now) -> list:
        """Mark silent nodes unreachable, requeue their unstarted work once the lease has
        surely run out on the runner, and give their tasks up past the grace.

        Called every half heartbeat interval; a longer gap means the host itself stalled,
        and every node's clocks shift by the stall (its silence was ours)."""
        self.now = now
        interval = self.settings.heartbeat_interval
        if self._last_judged is not None:
            stalled = now.mono - self._last_judged - interval
            if stalled > 0:
                for node in self.nodes.values():
                    node.seen += stalled
                    node.sent += stalled
        self._last_judged = now.mono
        lease, grace = self.lease, self.settings.unreachable_grace
        for node in list(self.nodes.values()):
            quiet = now.mono - node.seen
            watched = node.state in (ONLINE, DEGRADED) or (
                node.state == OFFLINE and not node.registered and not node.given_up)
            if watched and quiet > lease:
                dispatch.node_unreachable(self, node, f"no word from it for {quiet:.1f} s")
            if node.state != UNREACHABLE:
                continue
            if (not node.unstarted_requeued
                    and now.mono - max(node.seen, node.sent) > lease + interval):
                dispatch.requeue_unstarted(self, node)
            if quiet > grace:
                dispatch.node_given_up(self, node, f"unreachable for longer than the grace of "
                                                   f"{grace:.0f} s")
        return self.take()

    # ---- nodes -------------------------------------------------------------------------
    def set_node_state(self, node: NodeRecord, state: str, reason: str) -> None:
        node.state = state
        self.scheduler.set_node_state(node.name, state)
        self.rows.set_node_state(node.name, state, node.last_seen)
        self.publish(f"evt.node.{node.name}", "node.state", {"name": node.name, "state": state,
                                                             "reason": reason})
        self.needs_schedule = True

    def connected(self, node: NodeRecord) -> bool:
        """Whether ``node``'s registered runner is connected and was heard within a lease."""
        return (node.link is not None and self.now.mono - node.seen <= self.lease
                and self.linked(node.link))

    def task_node(self, task_id: int) -> str | None:
        """The node a task runs or ran on: a live task's, or a recently finished one's."""
        task = self.tasks.get(task_id)
        if task is not None:
            return task.node
        ended = self.ended.get(task_id)
        return ended[0] if ended else None

    def remember_end(self, task_id: int, node: str | None, state: str,
                     exit_code: int | None) -> None:
        """Keep a finished task's outcome in memory (its row is written after this call)."""
        self.ended[task_id] = (node, state, exit_code)
        if len(self.ended) > ENDED_REMEMBERED:
            for old in list(self.ended)[:ENDED_REMEMBERED // 2]:
                del self.ended[old]

    # ---- loading -----------------------------------------------------------------------
    def load(self, now: Now) -> list:
        """Rebuild the model from ``records`` (a host start, or after a failed commit)."""
        self.now = now
        self.next_task_id = self.records.last_task_id() + 1
        for row in self.records.list_nodes():
            self._load_node(row, now)
        rows = self.records.unfinished_tasks()
        shared: dict[int, tuple[dict, TaskSpec]] = {}
        for row in _staged_last(rows):
            self._load_task(row, shared)
        for task in self.tasks.values():
            dispatch.arm_time_limit(self, task)
        self.needs_schedule = True
        return self.take()

    def _load_node(self, row: dict[str, Any], now: Now) -> None:
        info = row["info"]
        self.nodes[row["name"]] = NodeRecord(row["name"], info, OFFLINE, last_seen=now.wall,
                                             seen=now.mono + RECONNECT_GRACE,
                                             sent=now.mono + RECONNECT_GRACE,
                                             drained=row["drained"])
        self.scheduler.set_node(row["name"], node_spec(info))
        self.scheduler.set_drained(row["name"], row["drained"] is not None)

    def _load_task(self, row: dict[str, Any], shared: dict[int, tuple[dict, TaskSpec]]) -> None:
        """One unfinished task back in memory. Tasks of a batch whose specs differ only in
        their command (a sweep's) share one ``TaskSpec``, as at submit, each keeping its own
        command: ``shared`` holds the last such spec per batch, checked once."""
        wire, command, batch = row["spec"], None, row["batch_id"]
        if batch is not None:
            rest = {name: value for name, value in wire.items() if name != "command"}
            known = shared.get(batch)
            if known is not None and known[0] == rest:
                spec = known[1]
            else:
                spec = TaskSpec.from_wire(wire)
                shared[batch] = (rest, spec)
            command = wire["command"]
        else:
            spec = TaskSpec.from_wire(wire)
        task = LiveTask(row["id"], spec, row["state"], row["node"], attempt=row["attempt"],
                        batch_id=batch, started_at=row["started_at"], command=command)
        self.tasks[task.id] = task
        if row["alloc"]:
            task.alloc = allocation_from_wire(row["alloc"])
            self.scheduler.hold(task.id, task.alloc, task.request(), task.started_at,
                                behind=row["alloc"].get("behind"))
        else:
            dispatch.enqueue(self, task)

    def reload(self, now: Now) -> list:
        """Rebuild tasks, scheduler and dependencies from ``records`` (what stands after a
        failed commit); nodes keep what the core knows of their runners."""
        known = self.nodes
        self.nodes, self.tasks = {}, TaskTable()
        self.scheduler = Scheduler(self.settings.placement, self.settings.gpu_placement,
                                   self.settings.prefetch)
        self.deps = Dependencies()
        self.waiters.clear()
        self.take()
        effects = self.load(now)
        for name, node in known.items():
            if name in self.nodes:
                self.nodes[name] = node
                self.scheduler.set_node(name, node_spec(node.info))
                self.scheduler.set_node_state(name, node.state)
                self.scheduler.set_drained(name, node.drained is not None)
        return effects

    def hello(self) -> dict[str, Any]:
        return {"incarnation": self.incarnation,
                "heartbeat_interval": self.settings.heartbeat_interval,
                "shared_dir": self.settings.shared_dir, **self.hello_info}


def _staged_last(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Unfinished task rows with each staged task after the one it waits behind."""
    staged = {row["id"]: row for row in rows if (row["alloc"] or {}).get("behind")}
    order = [row for row in rows if row["id"] not in staged]
    while staged:
        ready = [r for r in staged.values() if r["alloc"]["behind"] not in staged]
        for row in ready or list(staged.values()):
            order.append(staged.pop(row["id"]))
    return order
