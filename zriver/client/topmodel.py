"""The live picture of the cluster behind ``zriver top`` and the shell's toolbar and completion.

Pure: no I/O, no clock (callers pass ``now``), no threads. It is fed a snapshot (``load``: the
rows of ``node.list`` and ``task.list``) and then the host's pushed messages (``apply``:
``evt.task.<id>``, ``evt.node.<name>``, ``hb.<node>``), and it keeps what the screens need ready:

* the unfinished tasks, ordered for display (running, paused, assigned, then pending in queue
  order) in a list kept sorted by bisection, so one event costs O(log n) to place and a screen
  asks for the slice it shows (``task_ids()[top:top + height]``), never for all of it;
* each node's capacity (from ``node.list``), what our tasks hold on it (recomputed as tasks
  move, not polled) and its last heartbeat (CPU %, memory, GPUs);
* a ring of recent events, and recently finished tasks (the shell completes their ids);
* one filter per view (``set_filter``): whitespace-separated terms that must all match; a term
  ``field:value`` matches that field by prefix (``state:pend``, ``node:gpu``), ``field=value``
  exactly (``node=gpu1``), any other term anywhere in the row; all case-insensitively.

A bounded window: the model holds the rows it was given (the feed gives every active task,
the newest ``PENDING_WINDOW`` pending ones and recent finished ones), never the whole queue;
pending tasks that events add beyond the window push the oldest pending one out. Beside the
window it keeps the count of tasks per state over the whole cluster (``count``, ``summary``):
from the host (``task.counts``, passed to ``load`` or ``set_counts``), then moved by every
event. A task in the window (or recently finished) moves its count exactly; for a task outside
it, an id above every id seen is new (counted in, nothing out), else its previous state is
the usual one before what the event says (``PREVIOUS``: assigned after pending...). The
summary event of a big submit (``evt.batch.<id>``: ``count`` pending tasks, no rows) adds to
the pending count. Guesses can be wrong (a lost event, a kill of a pending task outside the
window): the feed re-reads the counts a second after the last task event, so they converge.

A task first seen through an event (submitted after the snapshot) is shown from what the event
says and listed in ``unknown_tasks`` until a full row arrives (``upsert_task``); a node first
seen through an event or heartbeat is listed in ``unknown_nodes``. The caller fetches those.
Events and rows travel on two sockets, so either may come first. The host numbers its task
events (``seq``) and says with each reply which number its rows include (the feed stamps the
rows with it): an event the model's picture of a task already includes is ignored, and a row
read before an event the model applied keeps that event's state (a ``task.get`` answered in
the tick that started the task once put a running task back to ``assigned`` for good).

``version`` grows on every change a screen would show, so a redraw can be skipped when it did
not move.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Iterable

from zriver import lifecycle as lc

NODES, TASKS, EVENTS = "nodes", "tasks", "events"
VIEWS = (NODES, TASKS, EVENTS)

#: Display order of unfinished tasks: what runs first, then what waits, each by id.
GROUP = {lc.RUNNING: 0, lc.PAUSED: 1, lc.ASSIGNED: 2, lc.PENDING: 3}
#: States in which a task holds cores, memory and GPUs on its node.
HOLDING = frozenset({lc.ASSIGNED, lc.RUNNING, lc.PAUSED})
#: A GPU at or over this utilisation (percent) in the last heartbeat counts as busy.
GPU_BUSY_PERCENT = 10
#: Node states in which a node runs tasks (a degraded node's GPU set changed; it still runs).
UP = frozenset({"online", "degraded"})
#: Pending tasks held in the window at most when events add more (the newest are kept).
PENDING_WINDOW = 1000
#: The state a task outside the window most likely left for the first state an event names.
PREVIOUS = {lc.ASSIGNED: lc.PENDING, lc.RUNNING: lc.ASSIGNED, lc.PAUSED: lc.RUNNING,
            lc.UNREACHABLE: lc.RUNNING, lc.PENDING: lc.RUNNING,
            **{state: lc.RUNNING for state in lc.FINAL}}


@dataclass(slots=True)
class Node:
    """One node: capacity from ``node.list``, use from our tasks, live figures from heartbeats."""

    name: str
    state: str = "unknown"
    cores: int = 0
    memory: int = 0
    numa_zones: int = 1
    gpus: list[dict[str, Any]] = field(default_factory=list)
    reason: str = ""
    drained: str | None = None
    """Why it takes no new tasks (``zriver node drain``), or None."""
    cores_used: int = 0
    memory_used: int = 0
    gpus_held: int = 0
    tasks: int = 0
    heartbeat: dict[str, Any] = field(default_factory=dict)
    heartbeat_at: float | None = None

    @property
    def status(self) -> str:
        """The state to show: ``drained`` wins over ``online``."""
        return "drained" if self.drained and self.state in UP else self.state

    @property
    def cpu_percent(self) -> float | None:
        value = self.heartbeat.get("cpu_percent")
        return float(value) if isinstance(value, (int, float)) else None

    @property
    def memory_percent(self) -> float | None:
        """Memory in use on the machine (all processes) from the last heartbeat."""
        used, total = self.heartbeat.get("memory_used"), self.heartbeat.get("memory_total")
        if isinstance(used, (int, float)) and isinstance(total, (int, float)) and total > 0:
            return 100.0 * used / total
        return None

    @property
    def gpu_percent(self) -> float | None:
        """Mean utilisation of the node's GPUs in the last heartbeat."""
        usage = [g.get("utilization") for g in self.heartbeat.get("gpus") or []]
        usage = [u for u in usage if isinstance(u, (int, float))]
        return sum(usage) / len(usage) if usage else None

    @property
    def gpus_free(self) -> int:
        """GPUs no task holds and the last heartbeat saw idle; 0 when the node is not online."""
        if self.state not in UP or self.drained or not self.gpus:
            return 0
        busy = sum(1 for g in self.heartbeat.get("gpus") or []
                   if (g.get("utilization") or 0) >= GPU_BUSY_PERCENT)
        return max(0, len(self.gpus) - max(self.gpus_held, busy))

    def text(self) -> str:
        return f"{self.name} {self.status} {self.reason}".lower()


@dataclass(slots=True)
class Task:
    """An unfinished (or recently finished) task as the screens show it."""

    id: int
    state: str
    name: str = ""
    node: str | None = None
    cores: int = 0
    memory: int = 0
    gpus: int = 0
    owner: str = ""
    submitted_at: float | None = None
    started_at: float | None = None
    detail: str = ""
    exit_code: int | None = None
    known: bool = False
    """Whether a full row (``task.list``/``task.get``) was seen, not only events."""
    seq: int = 0
    """The host's number of the last event this picture includes (an event's ``seq``, or
    the ``seq`` a row was read at): anything older says nothing new."""

    @property
    def key(self) -> tuple[int, int]:
        return GROUP.get(self.state, 4), self.id

    def field_text(self, name: str) -> str:
        value = getattr(self, name, None)
        return "" if value is None else str(value).lower()

    def text(self) -> str:
        return (f"{self.id} {self.name} {self.state} {self.node or ''} {self.owner} "
                f"{self.detail}").lower()


@dataclass(slots=True, frozen=True)
class Event:
    """One line of the events view."""

    at: float
    kind: str  # "task" or "node"
    subject: str  # task id or node name
    state: str
    text: str


@dataclass(slots=True, frozen=True)
class Summary:
    """The numbers of the shell's toolbar and the dashboard's header."""

    nodes_online: int
    nodes: int
    running: int
    paused: int
    pending: int
    gpus_free: int
    gpus: int


def task_from_row(row: dict[str, Any]) -> Task:
    """A ``Task`` from a public task row (``task.list``/``task.get``)."""
    allocated = row.get("allocated_gpus")
    gpus = len(allocated) if isinstance(allocated, list) else int(row.get("gpus") or 0)
    return Task(id=int(row["id"]), state=row.get("state", lc.PENDING), name=row.get("name") or "",
                node=row.get("node"), cores=int(row.get("cores") or 0),
                memory=int(row.get("memory") or 0), gpus=gpus, owner=row.get("owner") or "",
                submitted_at=row.get("submitted_at"), started_at=row.get("started_at"),
                detail=row.get("detail") or "", exit_code=row.get("exit_code"), known=True,
                seq=row.get("seq") or 0)


def _matcher(text: str):
    """A predicate over a row from a filter string (see the module docstring)."""
    terms = text.lower().split()
    if not terms:
        return None

    def match(item: Task | Node | Event) -> bool:
        whole = None
        for term in terms:
            name, sep, value = term.partition("=") if "=" in term else term.partition(":")
            field = None
            if sep and value and isinstance(item, Task) and name in Task.__slots__:
                field = item.field_text(name)
            elif sep and value and isinstance(item, Node) and name in ("name", "state"):
                field = str(getattr(item, "status" if name == "state" else name)).lower()
            if field is not None:
                if not (field == value if sep == "=" else field.startswith(value)):
                    return False
                continue
            if whole is None:
                whole = item.text() if not isinstance(item, Event) else item.text.lower()
            if term not in whole:
                return False
        return True

    return match


class ClusterModel:
    """Nodes, unfinished tasks and recent events; see the module docstring."""

    def __init__(self, keep_events: int = 1000, keep_finished: int = 500,
                 pending_window: int = PENDING_WINDOW) -> None:
        self.nodes: dict[str, Node] = {}
        self.tasks: dict[int, Task] = {}
        self.finished: OrderedDict[int, Task] = OrderedDict()
        self.events: deque[Event] = deque(maxlen=keep_events)
        self.keep_finished, self.pending_window = keep_finished, pending_window
        self.unknown_tasks: set[int] = set()
        self.unknown_nodes: set[str] = set()
        self.version = 0
        self.loaded = False
        self._order: list[tuple[int, int]] = []
        self._counts: dict[str, int] = {}
        """Tasks per state in the whole cluster (not only the window)."""
        self._newest = 0
        """The highest task id seen: an event of a higher one is a new task."""
        self._filters: dict[str, str] = {view: "" for view in VIEWS}
        self._views: dict[str, list | None] = {view: None for view in VIEWS}

    # ---- feeding -----------------------------------------------------------------------
    def load(self, nodes: Iterable[dict[str, Any]], tasks: Iterable[dict[str, Any]],
             now: float, counts: dict[str, int] | None = None) -> None:
        """Replace everything but the events with a snapshot (``node.list``, ``task.list``
        rows: unfinished ones make the window, finished ones the recently finished) and the
        counts per state (``task.counts``; None: counted from the rows, for a host without
        that op); heartbeats already seen are kept."""
        old = self.nodes
        self.nodes = {}
        for row in nodes:
            node = self._node_from_row(row, old.get(row["name"]))
            node.cores_used = node.memory_used = node.gpus_held = node.tasks = 0
            self.nodes[node.name] = node
        self.tasks, self._order, self._counts = {}, [], {}
        self.unknown_tasks.clear()
        self.unknown_nodes = {n for n in self.unknown_nodes if n not in self.nodes}
        tally: dict[str, int] = {}
        for row in tasks:
            task = task_from_row(row)
            self._newest = max(self._newest, task.id)
            if task.state in GROUP:
                self._insert(task)
            elif lc.is_final(task.state):
                self._finish(task)
            tally[task.state] = tally.get(task.state, 0) + 1
        self._counts = dict(counts) if counts is not None else tally
        self.loaded = True
        self._changed(NODES, TASKS)

    def set_counts(self, counts: dict[str, int]) -> None:
        """Tasks per state as the host counted them (``task.counts``) replace ours."""
        if counts != {state: n for state, n in self._counts.items() if state in counts}:
            self._counts.update(counts)
            self._changed(TASKS, NODES)

    def load_nodes(self, nodes: Iterable[dict[str, Any]]) -> None:
        """Refresh node capacities and states (``node.list``), keeping tasks and heartbeats."""
        seen = set()
        for row in nodes:
            node = self._node_from_row(row, self.nodes.get(row["name"]))
            self.nodes[node.name] = node
            seen.add(node.name)
        self.unknown_nodes -= seen
        self._changed(NODES)

    def upsert_task(self, row: dict[str, Any], now: float | None = None) -> None:
        """A full task row (``task.get``): fills in what events did not say."""
        task = task_from_row(row)
        self.unknown_tasks.discard(task.id)
        current = self.tasks.get(task.id)
        if current is not None:
            self._remove(current)
        known = current or self.finished.get(task.id)
        if known is not None and known.seq > task.seq:  # read before an event we applied
            task.state, task.node, task.detail = known.state, known.node, known.detail
            task.exit_code, task.seq = known.exit_code, known.seq
            task.started_at = task.started_at or known.started_at
        if known is not None and known.state != task.state:
            self._move(known.state, task.state)  # the row is newer than what we held
        if task.state in GROUP:
            self._insert(task)
        else:
            self._finish(task)
        self._changed(TASKS, NODES)

    def refresh_pending(self, rows: Iterable[dict[str, Any]]) -> None:
        """The newest pending tasks' rows (reasons change without events): they become the
        window's pending tasks; one we hold as pending that is not among them has moved on
        (its event will say where) or is older than the window. Counts do not change."""
        listed = set()
        for row in rows:
            listed.add(row["id"])
            self.upsert_task(row)
        for task_id in [t.id for t in self.tasks.values()
                        if t.state == lc.PENDING and t.id not in listed]:
            self._remove(self.tasks[task_id])
        self._changed(TASKS)

    def apply(self, topic: str, body: dict[str, Any], now: float) -> str | None:
        """One pushed message; returns the view it changed (``tasks``, ``nodes``) or None."""
        if topic.startswith("evt.task.") and isinstance(body.get("id"), int):
            return self._task_event(body, now)
        if topic.startswith("evt.node.") and isinstance(body.get("name"), str):
            return self._node_event(body, now)
        if topic.startswith("evt.batch.") and isinstance(body.get("count"), int):
            return self._batch_event(body, now)
        if topic.startswith("hb."):
            node = self._node(topic[3:])
            node.heartbeat, node.heartbeat_at = body, now
            self._changed(NODES)
            return NODES
        return None

    def _task_event(self, body: dict[str, Any], now: float) -> str | None:
        state = body.get("state") or ""
        task = self.tasks.get(body["id"])
        seq = body.get("seq") if isinstance(body.get("seq"), int) else 0
        held = task or self.finished.get(body["id"])
        if held is not None and seq and seq <= held.seq:
            return None  # older than the row or event we hold (the snapshot includes it)
        if task is None:
            task = self.finished.get(body["id"])
            if task is not None and lc.is_final(task.state):
                return TASKS  # a late duplicate of an end we already know
            previous = task.state if task is not None else self._previous(body)
            task = Task(body["id"], state, name=body.get("name") or "",
                        owner=body.get("owner") or "")
            self.unknown_tasks.add(task.id)
        else:
            previous = task.state
            self._remove(task)
        self._move(previous, state)
        task.state, task.seq = state, max(task.seq, seq)
        task.name = body.get("name") or task.name
        if "node" in body:
            task.node = body["node"]
        task.detail = body.get("detail") or ""
        if state == lc.RUNNING and task.started_at is None:
            task.started_at = now
        if lc.is_final(state):
            task.exit_code = body.get("exit_code")
            self.unknown_tasks.discard(task.id)
            self._finish(task)
        elif state in GROUP:
            self._insert(task)
            if state == lc.PENDING:
                self._trim_pending()
        label = f"{task.id} ({task.name})" if task.name else str(task.id)
        self.events.appendleft(Event(now, "task", str(task.id), state,
                                     f"task {label} {state}"
                                     + (f" (exit {task.exit_code})"
                                        if lc.is_final(state) and task.exit_code else "")
                                     + (f": {task.detail}" if task.detail else "")))
        self._changed(TASKS, NODES, EVENTS)
        return TASKS

    def _previous(self, body: dict[str, Any]) -> str | None:
        """The state a task outside the window left (None: a task new to us)."""
        if body["id"] > self._newest:
            self._newest = body["id"]
            return None
        first = (body.get("passed") or [body.get("state")])[0]
        if first == lc.KILLED and "pending" in (body.get("detail") or ""):
            return lc.PENDING
        return PREVIOUS.get(first)

    def _batch_event(self, body: dict[str, Any], now: float) -> str:
        """A big submit: ``count`` pending tasks, ids ``first_id``..``last_id``, no rows."""
        count = max(0, body["count"])
        last = body.get("last_id")
        if isinstance(last, int):
            self._newest = max(self._newest, last)
        self._counts[lc.PENDING] = self._counts.get(lc.PENDING, 0) + count
        name = f" ({body['name']})" if body.get("name") else ""
        self.events.appendleft(Event(now, "task", str(body.get("batch_id", "")), lc.PENDING,
                                     f"batch {body.get('batch_id')}{name}: {count} tasks "
                                     f"submitted ({body.get('first_id')}-{last})"))
        self._changed(TASKS, EVENTS)
        return TASKS

    def _node_event(self, body: dict[str, Any], now: float) -> str:
        node = self._node(body["name"])
        node.state = body.get("state") or node.state
        if "drained" in body:
            node.drained = body["drained"]
            node.reason = body["drained"] or ""
        else:
            node.reason = body.get("reason") or ""
        self.events.appendleft(Event(now, "node", node.name, node.status,
                                     f"node {node.name} {node.status}"
                                     + (f": {node.reason}" if node.reason else "")))
        self._changed(NODES, EVENTS)
        return NODES

    # ---- views -------------------------------------------------------------------------
    def set_filter(self, view: str, text: str) -> None:
        if self._filters[view] != text:
            self._filters[view] = text
            self._views[view] = None
            self.version += 1

    def filter(self, view: str) -> str:
        return self._filters[view]

    def task_ids(self) -> list[int]:
        """Unfinished task ids in display order, filtered (cached until something changes)."""
        return self._view(TASKS, lambda: (task_id for _, task_id in self._order),
                          self.tasks.__getitem__)

    def node_names(self) -> list[str]:
        return self._view(NODES, lambda: sorted(self.nodes), self.nodes.__getitem__)

    def event_list(self) -> list[Event]:
        return self._view(EVENTS, lambda: self.events, lambda event: event)

    def _view(self, view: str, keys, record) -> list:
        """``keys()`` whose ``record`` passes the view's filter, cached until something changes."""
        cached = self._views[view]
        if cached is None:
            match = _matcher(self._filters[view])
            cached = [key for key in keys() if match is None or match(record(key))]
            self._views[view] = cached
        return cached

    def count(self, state: str) -> int:
        """Tasks in ``state`` in the whole cluster (not only those held)."""
        return self._counts.get(state, 0)

    def total(self) -> int:
        """Unfinished tasks shown in the tasks view's states, in the whole cluster."""
        return sum(self._counts.get(state, 0) for state in GROUP)

    def held(self) -> int:
        """Unfinished tasks held in the window."""
        return len(self._order)

    def summary(self) -> Summary:
        online = [n for n in self.nodes.values() if n.state in UP]
        return Summary(
            nodes_online=len(online), nodes=len(self.nodes),
            running=self.count(lc.RUNNING) + self.count(lc.ASSIGNED),
            paused=self.count(lc.PAUSED), pending=self.count(lc.PENDING),
            gpus_free=sum(n.gpus_free for n in online),
            gpus=sum(len(n.gpus) for n in online))

    def lookup(self, task_id: int) -> Task | None:
        return self.tasks.get(task_id) or self.finished.get(task_id)

    # ---- bookkeeping -------------------------------------------------------------------
    def _node(self, name: str) -> Node:
        node = self.nodes.get(name)
        if node is None:
            node = self.nodes[name] = Node(name)
            self.unknown_nodes.add(name)
            self._views[NODES] = None
        return node

    def _node_from_row(self, row: dict[str, Any], old: Node | None) -> Node:
        gpus = row.get("gpus") or []
        node = Node(name=row["name"], state=row.get("state") or "unknown",
                    cores=int(row.get("cores") or 0), memory=int(row.get("memory") or 0),
                    numa_zones=int(row.get("numa_zones") or 1),
                    gpus=[g for g in gpus if isinstance(g, dict)],
                    reason=row.get("drained") or row.get("degraded") or "",
                    drained=row.get("drained"))
        if old is not None:
            node.heartbeat, node.heartbeat_at = old.heartbeat, old.heartbeat_at
            node.cores_used, node.memory_used = old.cores_used, old.memory_used
            node.gpus_held, node.tasks = old.gpus_held, old.tasks
        if not node.heartbeat and isinstance(row.get("heartbeat"), dict):
            node.heartbeat = row["heartbeat"]
        return node

    def _account(self, task: Task, sign: int) -> None:
        if task.state in HOLDING and task.node:
            node = self._node(task.node)
            node.cores_used += sign * task.cores
            node.memory_used += sign * task.memory
            node.gpus_held += sign * task.gpus
            node.tasks += sign

    def _move(self, previous: str | None, state: str) -> None:
        """One task went from ``previous`` (None: new) to ``state``: the counts follow."""
        if previous == state:
            return
        if previous:
            self._counts[previous] = max(0, self._counts.get(previous, 0) - 1)
        if state:
            self._counts[state] = self._counts.get(state, 0) + 1

    def _insert(self, task: Task) -> None:
        self.tasks[task.id] = task
        bisect.insort(self._order, task.key)
        self._account(task, +1)

    def _remove(self, task: Task) -> None:
        del self.tasks[task.id]
        index = bisect.bisect_left(self._order, task.key)
        if index < len(self._order) and self._order[index] == task.key:
            del self._order[index]
        self._account(task, -1)

    def _trim_pending(self) -> None:
        """Over ``pending_window`` pending tasks held: let the oldest one go (still counted)."""
        group = GROUP[lc.PENDING]
        low = bisect.bisect_left(self._order, (group, -1))
        high = bisect.bisect_left(self._order, (group + 1, -1))
        if high - low > self.pending_window:
            self._remove(self.tasks[self._order[low][1]])

    def _finish(self, task: Task) -> None:
        self.finished[task.id] = task
        self.finished.move_to_end(task.id)
        while len(self.finished) > self.keep_finished:
            self.finished.popitem(last=False)

    def _changed(self, *views: str) -> None:
        for view in views:
            self._views[view] = None
        self.version += 1
