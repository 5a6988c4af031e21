"""The pure scheduler: node capacities, allocations, the pending queue and placement.

No sockets, no database, no clock. The host service feeds it events (nodes appear, go offline,
tasks are submitted or end) and carries out the ``Placement``s that ``schedule`` returns.

Invariants (checked by ``validate``; tests call it after every step):

* a core or a byte of memory is never held by two tasks on one node (no over-subscription);
* every pending task is in the queue exactly once and holds nothing;
* every held allocation belongs to a task that is not in the queue.

Queue order is FIFO by submission sequence. A task that does not fit now does not block the
others (backfill), except that the first blocked task that could run somewhere gets a
reservation: the node chosen for it takes no new tasks until it starts, so a stream of small
tasks can never starve a large one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from zriver.errors import Impossible, NotFound

ONLINE = "online"
OFFLINE = "offline"


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """What a node offers: core ids grouped by NUMA zone, and memory in bytes."""

    zones: tuple[tuple[int, ...], ...]
    memory: int

    @property
    def cores(self) -> tuple[int, ...]:
        return tuple(core for zone in self.zones for core in zone)

    @classmethod
    def flat(cls, cores: int, memory: int) -> "NodeSpec":
        """A one-zone node with cores ``0..cores-1`` (for tests and simple nodes)."""
        return cls((tuple(range(cores)),), memory)


@dataclass(frozen=True, slots=True)
class Request:
    """What the scheduler needs of a task. ``memory`` 0 means nothing accounted."""

    task_id: int
    cores: int = 1
    memory: int = 0
    target: str | None = None


@dataclass(frozen=True, slots=True)
class Allocation:
    node: str
    cores: tuple[int, ...]
    memory: int


@dataclass(frozen=True, slots=True)
class Placement:
    task_id: int
    allocation: Allocation


@dataclass(slots=True)
class _Node:
    name: str
    spec: NodeSpec
    state: str = OFFLINE
    free_cores: set[int] = field(default_factory=set)
    free_memory: int = 0

    def fits_now(self, req: Request) -> bool:
        return len(self.free_cores) >= req.cores and self.free_memory >= req.memory

    def fits_ever(self, req: Request) -> bool:
        return len(self.spec.cores) >= req.cores and self.spec.memory >= req.memory


class Scheduler:
    """Accounting and placement for the whole cluster; mutated only through its methods."""

    def __init__(self) -> None:
        self._nodes: dict[str, _Node] = {}
        self._queue: dict[int, Request] = {}  # insertion order is FIFO order
        self._held: dict[int, Allocation] = {}
        self._reasons: dict[int, str] = {}

    # ---- nodes -------------------------------------------------------------------------
    def set_node(self, name: str, spec: NodeSpec) -> None:
        """Add a node, or replace its capacity (allocations held there are kept)."""
        node = _Node(name, spec, self._nodes[name].state if name in self._nodes else OFFLINE)
        node.free_cores = set(spec.cores)
        node.free_memory = spec.memory
        for alloc in self._held.values():
            if alloc.node == name:
                node.free_cores -= set(alloc.cores)
                node.free_memory -= alloc.memory
        self._nodes[name] = node

    def set_node_state(self, name: str, state: str) -> None:
        self._node(name).state = state

    def has_node(self, name: str) -> bool:
        return name in self._nodes

    def node_usage(self, name: str) -> tuple[int, int]:
        """(cores held, memory held) on ``name``."""
        node = self._node(name)
        return len(node.spec.cores) - len(node.free_cores), node.spec.memory - node.free_memory

    # ---- tasks -------------------------------------------------------------------------
    def check_possible(self, req: Request) -> None:
        """Raise ``NotFound``/``Impossible`` when ``req`` could never run on any known node."""
        if req.target is not None:
            node = self._nodes.get(req.target)
            if node is None:
                raise NotFound(f"unknown node {req.target!r}")
            candidates = [node]
        else:
            candidates = list(self._nodes.values())
        if candidates and not any(node.fits_ever(req) for node in candidates):
            biggest = max(candidates, key=lambda n: (len(n.spec.cores), n.spec.memory))
            raise Impossible(
                f"no node can ever run this task: it asks for {req.cores} cores and "
                f"{req.memory} bytes of memory; the largest node ({biggest.name}) has "
                f"{len(biggest.spec.cores)} cores and {biggest.spec.memory} bytes"
            )

    def submit(self, req: Request) -> None:
        """Queue a task (after ``check_possible``); it holds nothing until placed."""
        self._queue[req.task_id] = req
        self._reasons[req.task_id] = "queued"

    def hold(self, task_id: int, alloc: Allocation) -> None:
        """Record an allocation that already exists (host restart): take it from the node."""
        node = self._node(alloc.node)
        node.free_cores -= set(alloc.cores)
        node.free_memory -= alloc.memory
        self._held[task_id] = alloc

    def release(self, task_id: int) -> None:
        """The task ended or was withdrawn: drop it from the queue or free what it held."""
        self._queue.pop(task_id, None)
        self._reasons.pop(task_id, None)
        alloc = self._held.pop(task_id, None)
        if alloc is not None and alloc.node in self._nodes:
            node = self._nodes[alloc.node]
            node.free_cores |= set(alloc.cores)
            node.free_memory += alloc.memory

    def requeue(self, task_id: int, req: Request) -> None:
        """Put a placed task back in the queue (its start could not be delivered)."""
        self.release(task_id)
        self.submit(req)

    def allocation(self, task_id: int) -> Allocation | None:
        return self._held.get(task_id)

    def pending_reason(self, task_id: int) -> str | None:
        return self._reasons.get(task_id)

    @property
    def pending_count(self) -> int:
        return len(self._queue)

    # ---- placement ---------------------------------------------------------------------
    def schedule(self) -> list[Placement]:
        """Place every queued task that fits now, in queue order, honouring one reservation."""
        placements: list[Placement] = []
        reserved: str | None = None
        online = [n for n in self._nodes.values() if n.state == ONLINE]
        most_free = max((len(n.free_cores) for n in online), default=0)
        for task_id, req in list(self._queue.items()):
            if most_free == 0 and reserved is not None:
                self._reasons[task_id] = "waiting for free cores"
                continue
            node = self._choose(req, online, reserved) if req.cores <= most_free else None
            if node is not None:
                placements.append(self._place(req, node))
                most_free = max((len(n.free_cores) for n in online), default=0)
                continue
            reserved = self._block(req, online, reserved)
        return placements

    def _choose(self, req: Request, online: list[_Node], reserved: str | None) -> _Node | None:
        best = None
        for node in online:
            if node.name == reserved or not node.fits_now(req):
                continue
            if req.target is not None and node.name != req.target:
                continue
            # spread: the node with the most free cores, ties by name
            key = (-len(node.free_cores), node.name)
            if best is None or key < best[0]:
                best = (key, node)
        return None if best is None else best[1]

    def _place(self, req: Request, node: _Node) -> Placement:
        cores = _pick_cores(node, req.cores)
        node.free_cores -= set(cores)
        node.free_memory -= req.memory
        alloc = Allocation(node.name, cores, req.memory)
        del self._queue[req.task_id]
        self._reasons.pop(req.task_id, None)
        self._held[req.task_id] = alloc
        return Placement(req.task_id, alloc)

    def _block(self, req: Request, online: list[_Node], reserved: str | None) -> str | None:
        """Record why ``req`` waits; give it the reservation if it is the first blocked one."""
        if req.target is not None:
            target = self._nodes.get(req.target)
            if target is None or target.state != ONLINE:
                self._reasons[req.task_id] = f"target node {req.target} is offline"
                return reserved
            candidates = [target]
        else:
            candidates = [n for n in online if n.fits_ever(req)]
        if not candidates:
            self._reasons[req.task_id] = "no online node can run it"
            return reserved
        if reserved is None:
            chosen = max(candidates, key=lambda n: (len(n.free_cores), n.free_memory, n.name))
            self._reasons[req.task_id] = (
                f"waiting for {req.cores} cores{_mem(req)} on {chosen.name} (reserved for it)"
            )
            return chosen.name
        if reserved in {n.name for n in candidates} and len(candidates) == 1:
            self._reasons[req.task_id] = f"waiting: {reserved} is reserved for an earlier task"
        else:
            self._reasons[req.task_id] = f"waiting for {req.cores} free cores{_mem(req)}"
        return reserved

    # ---- checks ------------------------------------------------------------------------
    def validate(self) -> None:
        """Assert the invariants of the module docstring (for tests)."""
        assert not set(self._queue) & set(self._held), "a task is both queued and placed"
        for node in self._nodes.values():
            taken = [c for a in self._held.values() if a.node == node.name for c in a.cores]
            assert len(taken) == len(set(taken)), f"core held twice on {node.name}"
            assert not set(taken) & node.free_cores, f"held core marked free on {node.name}"
            used = sum(a.memory for a in self._held.values() if a.node == node.name)
            assert node.free_memory == node.spec.memory - used, f"memory books off on {node.name}"

    def _node(self, name: str) -> _Node:
        try:
            return self._nodes[name]
        except KeyError:
            raise NotFound(f"unknown node {name!r}") from None


def _pick_cores(node: _Node, count: int) -> tuple[int, ...]:
    """Lowest free core ids, from one NUMA zone when one zone has enough."""
    for zone in node.spec.zones:
        free = [c for c in zone if c in node.free_cores]
        if len(free) >= count:
            return tuple(free[:count])
    return tuple(sorted(node.free_cores)[:count])


def _mem(req: Request) -> str:
    return f" and {req.memory} bytes" if req.memory else ""
