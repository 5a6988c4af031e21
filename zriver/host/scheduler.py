"""The pure scheduler: node capacities, allocations, the pending queue and placement.

No sockets, no database, no clock (``schedule(now)`` takes the time). The host service feeds
it events (nodes appear, change state, tasks are submitted or end) and carries out the
``Placement``s that ``schedule`` returns.

Resources: cores (by id, grouped in NUMA zones), memory (bytes, per node), GPUs (by index,
exclusive). A request may pin a node, a NUMA zone of it, or GPU ids of it; ask for a number of
GPUs anywhere; need node features (``docker``); belong to a batch with a ``max_parallel``.

Invariants (``validate``; tests call it after every step):

* a core, a GPU or a byte of memory is never held by two tasks on one node;
* every pending task is in the queue exactly once and holds nothing;
* a batch never holds more than its ``max_parallel`` allocations.

Chained starts (the runner's prefetch): when the next task in line fits nowhere now but has
the same shape (cores, memory, GPU count) as a placed task that has no successor yet, it is
placed *behind* that task (or behind the last of a chain of at most ``CHAIN_DEPTH``): it takes
over exactly its allocation when it ends, so the runner starts it at once, without a round trip
to the host. A staged task holds nothing of its own
(its books are its predecessor's); it counts towards its batch's ``max_parallel``. Chaining
stops at the first task that has to wait otherwise, so it never jumps a reservation.

Placement does not scan the nodes: the usable ones are filed by free cores and free GPUs
(``host/freeindex.py``) and a task takes the first node that fits in its policy's order, so a
plain placement costs O(log nodes). Each node keeps the set of tasks holding resources there,
and the placed tasks open to a successor are kept by shape and node too (a chained start
pinned to a node looks at that node only). A walk also stops once the reservation is made and
no queued task is small enough for what is free; the tasks it did not reach are told why they
wait when asked (``_Cutoff``), exactly as the whole walk would have told them.

Queue order: priority (higher first), then submission order. A task that does not fit now
does not block the others (backfill), except that the first blocked task that could run
somewhere gets a reservation on one node: no new task is placed there until it starts, unless
the newcomer's time limit ends before the reserved task could start anyway (all tasks running
there have time limits that free enough by then: EASY backfill). So small tasks never starve a
large one, and a large one never blocks small ones forever.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field
from typing import Iterator

from zriver.errors import Impossible, NotFound
from zriver.host.freeindex import FreeIndex
from zriver.sizes import format_size

ONLINE = "online"
OFFLINE = "offline"
DEGRADED = "degraded"
UNREACHABLE = "unreachable"
"""Silent for longer than the lease: not usable; its tasks wait for it (or the grace)."""
PACK = "pack"
SPREAD = "spread"
CHAIN_DEPTH = 3
"""At most this many tasks staged one behind the other on the same resources."""
_INF = float("inf")


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """What a node offers: core ids grouped by NUMA zone, memory in bytes, GPU indices."""

    zones: tuple[tuple[int, ...], ...]
    memory: int
    gpus: tuple[int, ...] = ()
    features: frozenset[str] = frozenset()

    @property
    def cores(self) -> tuple[int, ...]:
        return tuple(core for zone in self.zones for core in zone)

    @classmethod
    def flat(cls, cores: int, memory: int, gpus: int = 0,
             features: frozenset[str] = frozenset()) -> "NodeSpec":
        """A one-zone node with cores ``0..cores-1`` (for tests and simple nodes)."""
        return cls((tuple(range(cores)),), memory, tuple(range(gpus)), features)


@dataclass(frozen=True, slots=True)
class Request:
    """What the scheduler needs of a task. ``memory`` 0 means nothing accounted."""

    task_id: int
    cores: int = 1
    memory: int = 0
    target: str | None = None
    numa: int | None = None
    gpu_ids: tuple[int, ...] = ()
    gpus: int = 0
    needs: frozenset[str] = frozenset()
    priority: int = 0
    batch: int | None = None
    max_parallel: int = 0
    time_limit: float | None = None

    @property
    def gpu_count(self) -> int:
        return len(self.gpu_ids) or self.gpus


@dataclass(frozen=True, slots=True)
class Allocation:
    node: str
    cores: tuple[int, ...]
    memory: int
    gpus: tuple[int, ...] = ()
    numa: int | None = None


@dataclass(frozen=True, slots=True)
class Placement:
    """Start ``task_id`` with ``allocation`` now, or, with ``behind``, as soon as task
    ``behind`` ends, on the very resources it holds (a chained start: see ``_chain``)."""

    task_id: int
    allocation: Allocation
    behind: int | None = None


@dataclass(slots=True)
class _Node:
    name: str
    spec: NodeSpec
    state: str = OFFLINE
    drained: bool = False
    free_cores: set[int] = field(default_factory=set)
    free_memory: int = 0
    free_gpus: set[int] = field(default_factory=set)

    @property
    def usable(self) -> bool:
        return self.state == ONLINE and not self.drained

    def fits_now(self, req: Request) -> bool:
        if self.free_memory < req.memory or len(self.free_gpus) < req.gpu_count:
            return False
        if req.gpu_ids and not set(req.gpu_ids) <= self.free_gpus:
            return False
        if req.numa is not None:
            return len(self.free_cores.intersection(self.spec.zones[req.numa])) >= req.cores
        return len(self.free_cores) >= req.cores

    def fits_ever(self, req: Request) -> bool:
        if req.target is not None and req.target != self.name:
            return False
        if not req.needs <= self.spec.features:
            return False
        zones = self.spec.zones
        cores = len(zones[req.numa]) if req.numa is not None else sum(map(len, zones))
        return (cores >= req.cores and self.spec.memory >= req.memory
                and len(self.spec.gpus) >= req.gpu_count
                and set(req.gpu_ids) <= set(self.spec.gpus))


@dataclass(slots=True)
class _Cutoff:
    """A walk that stopped early though cores were free: the reservation was made and no queued
    task was small enough for what was free, so the rest of the walk could only have told each
    task why it waits. ``pending_reason`` works that out from here, for tasks no later walk
    looked at: ``reserved`` held the reservation, ``batches`` were the running counts, and
    ``nodes`` what the nodes were once one has changed since (None: they have not)."""

    walk: int
    reserved: str
    batches: dict[int, int]
    nodes: dict[str, _Node] | None = None


class Scheduler:
    """Accounting and placement for the whole cluster; mutated only through its methods."""

    def __init__(self, placement: str = SPREAD, gpu_placement: str = PACK,
                 chain: bool = False) -> None:
        self.placement, self.gpu_placement, self.chain = placement, gpu_placement, chain
        self._nodes: dict[str, _Node] = {}
        self._queues: dict[int, dict[int, Request]] = {}  # priority -> FIFO of requests
        self._held: dict[int, Allocation] = {}
        self._held_req: dict[int, Request] = {}
        self._started_at: dict[int, float] = {}
        self._batch_running: dict[int, int] = {}
        self._reasons: dict[int, str] = {}
        self._stalled = False
        """No usable node at the last pass: every pending task's reason is worked out when asked."""
        self._successor: dict[int, int] = {}  # placed task -> the task staged behind it
        self._staged: dict[int, tuple[int, Allocation, Request]] = {}  # -> (behind, alloc, req)
        self._open: dict[tuple[int, int, int], dict[int, None]] = {}  # shape -> placed, no successor
        self._open_at: dict[tuple[tuple[int, int, int], str], dict[int, None]] = {}
        """(shape, node) -> those of ``_open`` on that node, in the same order."""
        self._open_where: dict[int, tuple[tuple[int, int, int], str]] = {}
        self._on_node: dict[str, set[int]] = {}  # node -> tasks holding an allocation there
        self._limited: dict[int, str] = {}  # held task with a time limit -> its node
        self._limited_on: dict[str, int] = {}  # node -> how many of those it has
        self._usable: dict[str, _Node] = {}
        self._index = FreeIndex()  # the usable nodes by free cores and GPUs
        self._hopeless: set[tuple] = set()
        """Shapes (``_fit_key``) no usable node can ever run, found so far in this pass."""
        self._queued_sizes: dict[tuple[int, int], int] = {}  # (cores, GPUs) -> queued tasks
        self._walks = 0  # passes that walked the queue
        self._told: dict[int, int] = {}  # queued task -> the walk that last gave its reason
        self._cutoff: _Cutoff | None = None  # the last walk that stopped early, cores free

    # ---- nodes -------------------------------------------------------------------------
    def set_node(self, name: str, spec: NodeSpec) -> None:
        """Add a node, or replace its capacity (allocations held there are kept)."""
        self._freeze_nodes()
        old = self._nodes.get(name)
        node = _Node(name, spec, old.state if old else OFFLINE, old.drained if old else False)
        node.free_cores, node.free_memory, node.free_gpus = set(spec.cores), spec.memory, set(spec.gpus)
        for task_id in self._on_node.get(name, ()):
            alloc = self._held[task_id]
            node.free_cores -= set(alloc.cores)
            node.free_memory -= alloc.memory
            node.free_gpus -= set(alloc.gpus)
        self._nodes[name] = node
        self._refile(node)

    def set_node_state(self, name: str, state: str) -> None:
        node = self._node(name)
        self._freeze_nodes()
        node.state = state
        self._refile(node)

    def set_drained(self, name: str, drained: bool) -> None:
        node = self._node(name)
        self._freeze_nodes()
        node.drained = drained
        self._refile(node)

    def _freeze_nodes(self) -> None:
        """Before a node changes: keep what the nodes were for the last cutoff's reasons."""
        cut = self._cutoff
        if cut is not None and cut.nodes is None:
            cut.nodes = {name: _Node(name, node.spec, node.state, node.drained)
                         for name, node in self._nodes.items()}

    def _refile(self, node: _Node) -> None:
        """Bring the usable set and the free index up to date after ``node`` changed."""
        if node.usable:
            self._usable[node.name] = node
            self._index.file(node.name, len(node.free_cores), len(node.free_gpus))
        else:
            self._usable.pop(node.name, None)
            self._index.drop(node.name)

    def has_node(self, name: str) -> bool:
        return name in self._nodes

    def node_spec(self, name: str) -> NodeSpec:
        return self._node(name).spec

    def node_usage(self, name: str) -> tuple[int, int]:
        """(cores held, memory held) on ``name``."""
        node = self._node(name)
        return len(node.spec.cores) - len(node.free_cores), node.spec.memory - node.free_memory

    def free_gpus(self, name: str) -> list[int]:
        return sorted(self._node(name).free_gpus)

    # ---- tasks -------------------------------------------------------------------------
    def check_possible(self, req: Request) -> None:
        """Raise ``NotFound``/``Impossible`` when ``req`` could never run on any known node."""
        if req.target is not None:
            node = self._nodes.get(req.target)
            if node is None:
                raise NotFound(f"unknown node {req.target!r}; known: "
                               f"{', '.join(sorted(self._nodes)) or 'none'}")
            _check_target_ids(node, req)
            candidates = [node]
        else:
            candidates = list(self._nodes.values())
        if candidates and not any(node.fits_ever(req) for node in candidates):
            raise Impossible(_impossible_message(req, candidates))

    def submit(self, req: Request) -> None:
        """Queue a task (after ``check_possible``); it holds nothing until placed."""
        queue = self._queues.setdefault(req.priority, {})
        if req.task_id in queue:
            self._count_queued(queue[req.task_id], -1)
        queue[req.task_id] = req
        self._count_queued(req, 1)
        self._reasons[req.task_id] = "waiting for free resources"
        self._told[req.task_id] = self._walks

    def _unqueue(self, req: Request) -> None:
        """``req`` leaves the queue to be placed or staged."""
        del self._queues[req.priority][req.task_id]
        self._count_queued(req, -1)
        self._reasons.pop(req.task_id, None)
        self._told.pop(req.task_id, None)

    def _count_queued(self, req: Request, step: int) -> None:
        size = (req.cores, req.gpu_count)
        count = self._queued_sizes.get(size, 0) + step
        if count:
            self._queued_sizes[size] = count
        else:
            del self._queued_sizes[size]

    def _small_enough_queued(self, cores: int, gpus: int) -> bool:
        """Whether a queued task asks for at most ``cores`` cores and ``gpus`` GPUs."""
        return any(c <= cores and g <= gpus for c, g in self._queued_sizes)

    def hold(self, task_id: int, alloc: Allocation, req: Request | None = None,
             started_at: float | None = None, behind: int | None = None) -> None:
        """Record an allocation that already exists (host restart): take it from the node, or
        stage it again behind ``behind`` when that task still holds it (call for those last)."""
        if req is not None and req.batch is not None:
            self._batch_running[req.batch] = self._batch_running.get(req.batch, 0) + 1
        known = behind is not None and (behind in self._held or behind in self._staged)
        if known and behind not in self._successor:
            self._stage(task_id, behind, alloc, req or Request(task_id, len(alloc.cores)))
            return
        node = self._node(alloc.node)
        node.free_cores -= set(alloc.cores)
        node.free_memory -= alloc.memory
        node.free_gpus -= set(alloc.gpus)
        self._refile(node)
        self._keep(task_id, alloc, req)
        if req is not None:
            self._open_add(task_id, req)
        if started_at is not None:
            self._started_at[task_id] = started_at

    def started(self, task_id: int, at: float) -> None:
        """The task began running at ``at`` (its time limit counts from here)."""
        if task_id in self._held:
            self._started_at[task_id] = at

    def release(self, task_id: int) -> None:
        """The task ended or was withdrawn: drop it from the queue or free what it held (to
        the task staged behind it, when there is one)."""
        for queue in self._queues.values():
            queued = queue.pop(task_id, None)
            if queued is not None:
                self._count_queued(queued, -1)
        self._reasons.pop(task_id, None)
        self._told.pop(task_id, None)
        self._started_at.pop(task_id, None)
        if task_id in self._staged:
            self._unstage(task_id)
            return
        req = self._held_req.pop(task_id, None)
        if req is not None:
            if req.batch is not None:
                self._batch_running[req.batch] -= 1
            self._open_drop(task_id)
        alloc = self._held.pop(task_id, None)
        if alloc is not None:
            self._on_node[alloc.node].discard(task_id)
            self._unlimit(task_id)
        successor = self._successor.pop(task_id, None)
        if successor is not None and alloc is not None:
            self._take_over(successor)
            return
        if alloc is not None and alloc.node in self._nodes:
            node = self._nodes[alloc.node]
            node.free_cores |= set(alloc.cores)
            node.free_memory += alloc.memory
            node.free_gpus |= set(alloc.gpus)
            self._refile(node)

    def _keep(self, task_id: int, alloc: Allocation, req: Request | None) -> None:
        """Book ``alloc`` as held by ``task_id`` for ``req`` (its node's resources are taken
        already; ``req`` None: the request is unknown, or kept from before)."""
        old = self._held.get(task_id)
        if old is not None:
            self._on_node[old.node].discard(task_id)
            self._unlimit(task_id)
        self._held[task_id] = alloc
        if req is not None:
            self._held_req[task_id] = req
        self._on_node.setdefault(alloc.node, set()).add(task_id)
        known = self._held_req.get(task_id)
        if known is not None and known.time_limit is not None:
            self._limited[task_id] = alloc.node
            self._limited_on[alloc.node] = self._limited_on.get(alloc.node, 0) + 1

    def _unlimit(self, task_id: int) -> None:
        node = self._limited.pop(task_id, None)
        if node is not None:
            self._limited_on[node] -= 1

    def _stage(self, task_id: int, behind: int, alloc: Allocation, req: Request) -> None:
        self._staged[task_id] = (behind, alloc, req)
        self._successor[behind] = task_id
        self._close(behind)
        if self._depth(task_id) < CHAIN_DEPTH:
            self._open_add(task_id, req)

    def _unstage(self, task_id: int) -> None:
        """A staged task is withdrawn: what was behind it moves up; else its predecessor may
        take another successor."""
        self._close(task_id)
        behind, alloc, req = self._staged.pop(task_id)
        if req.batch is not None:
            self._batch_running[req.batch] -= 1
        self._successor.pop(behind, None)
        follower = self._successor.pop(task_id, None)
        if follower is not None:
            _, _, follower_req = self._staged[follower]
            self._staged[follower] = (behind, alloc, follower_req)
            self._successor[behind] = follower
            self._reopen_tail(follower)
        else:
            self._reopen_tail(behind)

    def _take_over(self, task_id: int) -> None:
        """The predecessor ended: its resources are now the staged task's own (whatever is
        staged behind it stays there, one step closer to the front)."""
        _, alloc, req = self._staged.pop(task_id)
        self._keep(task_id, alloc, req)
        self._reopen_tail(task_id)

    def _req_of(self, task_id: int) -> Request | None:
        """The request of a placed or staged task."""
        if task_id in self._staged:
            return self._staged[task_id][2]
        return self._held_req.get(task_id)

    def _close(self, task_id: int) -> None:
        self._open_drop(task_id)

    def _open_add(self, task_id: int, req: Request) -> None:
        """``task_id`` (placed or staged, for ``req``) may take a successor."""
        if task_id in self._open_where:
            return  # already open: keeps its place
        alloc = self._held.get(task_id) or self._staged[task_id][1]
        where = _shape(req), alloc.node
        self._open.setdefault(where[0], {})[task_id] = None
        self._open_at.setdefault(where, {})[task_id] = None
        self._open_where[task_id] = where

    def _open_drop(self, task_id: int) -> None:
        where = self._open_where.pop(task_id, None)
        if where is not None:
            del self._open[where[0]][task_id]
            del self._open_at[where][task_id]

    def _reopen_tail(self, task_id: int) -> None:
        """The last task of ``task_id``'s chain may take a successor if the chain is short."""
        while task_id in self._successor:
            task_id = self._successor[task_id]
        req = self._req_of(task_id)
        if req is not None and self._depth(task_id) < CHAIN_DEPTH:
            self._open_add(task_id, req)

    def _depth(self, task_id: int) -> int:
        """How many staged links lead from ``task_id`` back to a placed task."""
        depth = 0
        while task_id in self._staged:
            depth += 1
            task_id = self._staged[task_id][0]
        return depth

    def behind(self, task_id: int) -> int | None:
        """The task ``task_id`` is staged behind, if it is staged."""
        staged = self._staged.get(task_id)
        return None if staged is None else staged[0]

    def allocation(self, task_id: int) -> Allocation | None:
        return self._held.get(task_id)

    def pending_reason(self, task_id: int) -> str | None:
        if self._stalled:
            for queue in self._queues.values():
                if task_id in queue:
                    return _unusable_reason(queue[task_id], self._nodes)
        cut = self._cutoff
        if cut is not None and self._told.get(task_id, cut.walk) < cut.walk:
            for queue in self._queues.values():
                if task_id in queue:
                    return self._reason_after(cut, queue[task_id])
        return self._reasons.get(task_id)

    def _reason_after(self, cut: _Cutoff, req: Request) -> str:
        """The reason the walk that ``cut`` stopped would have given ``req`` had it gone on
        (then nothing but reasons could change: ``req`` was too large for what was free)."""
        if req.batch is not None and req.max_parallel and \
                cut.batches.get(req.batch, 0) >= req.max_parallel:
            return _batch_full_reason(req)
        if req.target is None:
            return _waiting(req)
        nodes = self._nodes if cut.nodes is None else cut.nodes
        target = nodes.get(req.target)
        if target is None or not target.usable or not target.fits_ever(req):
            return _unusable_reason(req, nodes)
        if target.name == cut.reserved:
            return _reserved_reason(cut.reserved)
        return _waiting(req)

    @property
    def pending_count(self) -> int:
        return sum(len(queue) for queue in self._queues.values())

    def queued(self) -> Iterator[Request]:
        """Pending requests in scheduling order, lazily (a pass that stops early pays for what
        it looked at); placing or staging the request just yielded is allowed.

        Each queue is copied in chunks that double in size: those the walk placed are gone
        from the queue, those it passed over are still at its front and are skipped."""
        for prio in sorted(self._queues, reverse=True):
            queue = self._queues[prio]
            kept, size = 0, 8
            while True:
                chunk = list(itertools.islice(queue.values(), kept, kept + size))
                yield from chunk
                if len(chunk) < size:
                    break
                kept += sum(1 for req in chunk if req.task_id in queue)
                size *= 2

    # ---- placement ---------------------------------------------------------------------
    def schedule(self, now: float = 0.0) -> list[Placement]:
        """Place every queued task that fits now, in queue order, honouring one reservation.

        Cost: a placement looks at the best nodes by the free index first and stops at the
        first that fits (O(log nodes) for a plain request); a task that cannot fit anywhere by
        size is passed over in O(1) (the largest free core and GPU counts come from the index);
        the walk stops once the reservation is made and no core is free, or no queued task is
        small enough for what is free (then the rest are told why they wait when asked: see
        ``_Cutoff``), so a pass over a big queue that cannot move costs O(1) tasks.
        """
        placements: list[Placement] = []
        if not any(self._queues.values()):
            self._cutoff = None
            return placements  # nothing waits (the common case after a task ends)
        usable = self._usable
        self._stalled = not usable
        if self._stalled:
            return placements  # nothing can run: reasons are worked out when asked
        most_cores, most_gpus = self._most_free()
        self._hopeless.clear()
        self._walks += 1
        walk, told = self._walks, self._told
        reservation: tuple[str, float] | None = None  # (node, earliest start of its owner)
        looked = None  # the free counts at which a queued task was last found small enough
        for req in self.queued():
            if reservation is not None and most_cores == 0:
                break  # nothing can fit anywhere: the rest keep their last reason
            sized = req.cores <= most_cores and req.gpu_count <= most_gpus
            if not sized and reservation is not None and looked != (most_cores, most_gpus):
                if not self._small_enough_queued(most_cores, most_gpus):
                    # nothing after this can change but reasons: they are worked out when asked
                    self._cutoff = _Cutoff(walk, reservation[0], dict(self._batch_running))
                    break
                looked = most_cores, most_gpus
            told[req.task_id] = walk
            if self._batch_full(req):
                self._reasons[req.task_id] = _batch_full_reason(req)
                continue
            if sized:
                node = self._choose(req, usable, reservation, now)
                if node is not None:
                    placements.append(self._place(req, node))
                    most_cores, most_gpus = self._most_free()
                    continue
            if self.chain and reservation is None and self._chain(req, placements):
                continue
            if reservation is None or req.target is not None:
                reservation = self._block(req, usable, reservation, now)
            elif sized:
                self._reasons[req.task_id] = (f"waiting for {_wants(req)}: {reservation[0]} is "
                                              f"reserved for an earlier task")
            else:
                self._reasons[req.task_id] = _waiting(req)
        else:
            self._cutoff = None  # every queued task was told why it waits
        return placements

    def _chain(self, req: Request, placements: list[Placement]) -> bool:
        """Stage ``req`` behind a placed task of the same shape on a usable node, if any."""
        if req.numa is not None or req.gpu_ids:
            return False
        shape = _shape(req)
        open_ = (self._open.get(shape, {}) if req.target is None
                 else self._open_at.get((shape, req.target), {}))  # same order, one node
        for candidate in open_:
            alloc = self._held.get(candidate) or self._staged[candidate][1]
            node = self._nodes.get(alloc.node)
            if node is None or not node.usable or not req.needs <= node.spec.features:
                continue
            if req.target is not None and node.name != req.target:
                continue
            self._unqueue(req)
            if req.batch is not None:
                self._batch_running[req.batch] = self._batch_running.get(req.batch, 0) + 1
            self._stage(req.task_id, candidate, alloc, req)
            placements.append(Placement(req.task_id, alloc, behind=candidate))
            return True
        return False

    def _batch_full(self, req: Request) -> bool:
        return bool(req.batch is not None and req.max_parallel
                    and self._batch_running.get(req.batch, 0) >= req.max_parallel)

    def _most_free(self) -> tuple[int, int]:
        """The largest free core count and free GPU count of any usable node."""
        return self._index.most_free()

    def _choose(self, req: Request, usable: dict[str, _Node],
                reservation: tuple[str, float] | None, now: float) -> _Node | None:
        """The usable node ``req`` goes to now, if any: of those it fits (and that the
        reservation lets it use), the first by the policy's key, ``(-free, name)`` for spread
        and ``(free, name)`` for pack, *free* counting GPUs for a GPU task, else cores."""
        if req.target is not None:
            node = usable.get(req.target)
            return node if node is not None and self._admits(node, req, reservation, now) else None
        if req.cores < 1 or req.gpus < 0:  # never from a spec; the walks assume a core at least
            return self._scan(req, usable, reservation, now)
        policy = self.gpu_placement if req.gpu_count else self.placement
        least = req.gpu_count or req.cores
        for name in self._index.walk(bool(req.gpu_count), least, policy != PACK):
            node = usable[name]
            if self._admits(node, req, reservation, now):
                return node
        return None

    def _scan(self, req: Request, usable: dict[str, _Node],
              reservation: tuple[str, float] | None, now: float) -> _Node | None:
        """``_choose`` over every usable node, by the same key."""
        policy = self.gpu_placement if req.gpu_count else self.placement
        fitting = [n for n in usable.values() if self._admits(n, req, reservation, now)]
        if not fitting:
            return None
        sign = 1 if policy == PACK else -1
        return min(fitting, key=lambda n: (
            sign * len(n.free_gpus if req.gpu_count else n.free_cores), n.name))

    @staticmethod
    def _admits(node: _Node, req: Request, reservation: tuple[str, float] | None,
                now: float) -> bool:
        """``req`` fits ``node`` now, ``node`` offers its features, and the reservation (if
        ``node`` is the reserved one) lets it in."""
        if not node.fits_now(req) or not req.needs <= node.spec.features:
            return False
        return not (reservation and node.name == reservation[0]
                    and not _ends_before(req, now, reservation[1]))

    def _place(self, req: Request, node: _Node) -> Placement:
        cores = _pick_cores(node, req)
        gpus = req.gpu_ids or (tuple(sorted(node.free_gpus)[: req.gpus]) if req.gpus else ())
        node.free_cores.difference_update(cores)
        node.free_memory -= req.memory
        if gpus:
            node.free_gpus.difference_update(gpus)
        self._index.file(node.name, len(node.free_cores), len(node.free_gpus))  # still usable
        alloc = Allocation(node.name, cores, req.memory, gpus, req.numa)
        self._unqueue(req)
        self._keep(req.task_id, alloc, req)
        self._open_add(req.task_id, req)
        if req.batch is not None:
            self._batch_running[req.batch] = self._batch_running.get(req.batch, 0) + 1
        return Placement(req.task_id, alloc)

    def _block(self, req: Request, usable: dict[str, _Node],
               reservation: tuple[str, float] | None, now: float) -> tuple[str, float] | None:
        """Record why ``req`` waits; give it the reservation if it is the first blocked one."""
        if req.target is not None:
            target = usable.get(req.target)
            candidates = [target] if target is not None and target.fits_ever(req) else []
        elif _fit_key(req) in self._hopeless:
            candidates = []  # another task of this shape found no node in this pass
        else:
            candidates = [n for n in usable.values() if n.fits_ever(req)]
            if not candidates:
                self._hopeless.add(_fit_key(req))
        if not candidates:
            self._reasons[req.task_id] = _unusable_reason(req, self._nodes)
            return reservation
        if reservation is None:
            chosen = min(candidates, key=lambda n: (self._earliest_start(n, req, now), n.name))
            self._reasons[req.task_id] = f"waiting for {_wants(req)} on {chosen.name} (reserved for it)"
            return chosen.name, self._earliest_start(chosen, req, now)
        if any(n.name == reservation[0] for n in candidates) and len(candidates) == 1:
            self._reasons[req.task_id] = _reserved_reason(reservation[0])
        else:
            self._reasons[req.task_id] = _waiting(req)
        return reservation

    def _earliest_start(self, node: _Node, req: Request, now: float) -> float:
        """When enough frees on ``node`` for ``req``, from its running tasks' time limits
        (infinity when any task in the way has none)."""
        if node.fits_now(req):
            return now
        if not self._limited_on.get(node.name):
            return _INF  # nothing there has a time limit
        ends = sorted((self._limit_end(task_id, now), task_id)
                      for task_id in self._on_node.get(node.name, ()))
        if req.numa is None and not req.gpu_ids:  # counts suffice: allocations are disjoint
            cores, memory, gpus = len(node.free_cores), node.free_memory, len(node.free_gpus)
            for end, task_id in ends:
                if end == _INF:
                    break  # whatever frees from here on frees too late to know when
                alloc = self._held[task_id]
                cores, memory, gpus = (cores + len(alloc.cores), memory + alloc.memory,
                                       gpus + len(alloc.gpus))
                if cores >= req.cores and memory >= req.memory and gpus >= req.gpu_count:
                    return end
            return _INF
        probe = _Node(node.name, node.spec, ONLINE, False, set(node.free_cores),
                      node.free_memory, set(node.free_gpus))
        for end, task_id in ends:
            if end == _INF:
                break
            alloc = self._held[task_id]
            probe.free_cores |= set(alloc.cores)
            probe.free_memory += alloc.memory
            probe.free_gpus |= set(alloc.gpus)
            if probe.fits_now(req):
                return end
        return _INF

    def _limit_end(self, task_id: int, now: float) -> float:
        req = self._held_req.get(task_id)
        if req is None or req.time_limit is None:
            return _INF
        return self._started_at.get(task_id, now) + req.time_limit

    # ---- checks ------------------------------------------------------------------------
    def validate(self) -> None:
        """Assert the invariants of the module docstring (for tests)."""
        queued = [req.task_id for req in self.queued()]
        assert len(queued) == len(set(queued)), "a task is queued twice"
        assert set(self._told) == set(queued), "reason stamps off"
        sizes: dict[tuple[int, int], int] = {}
        for req in self.queued():
            sizes[req.cores, req.gpu_count] = sizes.get((req.cores, req.gpu_count), 0) + 1
        assert self._queued_sizes == sizes, "queued sizes off"
        assert not set(queued) & set(self._held), "a task is both queued and placed"
        by_node: dict[str, list[Allocation]] = {name: [] for name in self._nodes}
        for task_id, alloc in self._held.items():
            by_node.setdefault(alloc.node, []).append(alloc)
            assert task_id in self._on_node.get(alloc.node, ()), f"task {task_id} not on its node"
        assert sum(map(len, self._on_node.values())) == len(self._held), "node task sets off"
        limited = {t: a.node for t, a in self._held.items()
                   if t in self._held_req and self._held_req[t].time_limit is not None}
        assert self._limited == limited, "time-limited task books off"
        assert {n: c for n, c in self._limited_on.items() if c} == \
            {n: sum(1 for m in limited.values() if m == n) for n in set(limited.values())}, \
            "time-limited counts off"
        for node in self._nodes.values():
            allocs = by_node[node.name]
            for kind, free in (("cores", node.free_cores), ("gpus", node.free_gpus)):
                taken = [x for a in allocs for x in getattr(a, kind)]
                assert len(taken) == len(set(taken)), f"{kind} held twice on {node.name}"
                assert not set(taken) & free, f"held {kind} marked free on {node.name}"
            used = sum(a.memory for a in allocs)
            assert node.free_memory == node.spec.memory - used, f"memory books off on {node.name}"
        assert self._usable == {n.name: n for n in self._nodes.values() if n.usable}, "usable off"
        self._index.check({n.name: (len(n.free_cores), len(n.free_gpus))
                           for n in self._usable.values()})
        for task_id, (behind, alloc, _) in self._staged.items():
            head = behind
            while head in self._staged:
                head = self._staged[head][0]
            assert head in self._held, f"task {task_id} staged behind a chain that holds nothing"
            assert self._successor.get(behind) == task_id, f"chain books off at {task_id}"
            assert self._held[head] == alloc, f"task {task_id} staged with another allocation"
            assert self._depth(task_id) <= CHAIN_DEPTH, f"chain too long at {task_id}"
        mirror: dict[tuple[tuple[int, int, int], str], list[int]] = {}
        for shape, tasks in self._open.items():
            for task_id in tasks:
                alloc = self._held.get(task_id) or self._staged[task_id][1]
                mirror.setdefault((shape, alloc.node), []).append(task_id)
                assert self._open_where[task_id] == (shape, alloc.node), "open books off"
        assert mirror == {k: list(v) for k, v in self._open_at.items() if v}, "open by node off"
        counts: dict[int, int] = {}
        placed = list(self._held_req.items()) + [(t, r) for t, (_, _, r) in self._staged.items()]
        for task_id, req in placed:
            if req.batch is not None:
                counts[req.batch] = counts.get(req.batch, 0) + 1
                assert not req.max_parallel or counts[req.batch] <= req.max_parallel, \
                    f"batch {req.batch} over max_parallel"
        for batch, count in counts.items():
            assert self._batch_running.get(batch, 0) == count, f"batch {batch} books off"

    def _node(self, name: str) -> _Node:
        try:
            return self._nodes[name]
        except KeyError:
            raise NotFound(f"unknown node {name!r}") from None


def _shape(req: Request) -> tuple[int, int, int]:
    return req.cores, req.memory, req.gpu_count


def _batch_full_reason(req: Request) -> str:
    return f"batch {req.batch} is at its limit of {req.max_parallel} at once"


def _reserved_reason(node: str) -> str:
    return f"waiting: {node} is reserved for an earlier task"


def _fit_key(req: Request) -> tuple:
    """What ``_Node.fits_ever`` looks at in an untargeted request."""
    return req.cores, req.memory, req.numa, req.gpu_ids, req.gpu_count, req.needs


def _ends_before(req: Request, now: float, reserved_start: float) -> bool:
    return req.time_limit is not None and now + req.time_limit <= reserved_start


def _pick_cores(node: _Node, req: Request) -> tuple[int, ...]:
    """Lowest free core ids: of the requested zone, else from one zone when one has enough."""
    zones = [node.spec.zones[req.numa]] if req.numa is not None else node.spec.zones
    for zone in zones:
        free = [c for c in zone if c in node.free_cores]
        if len(free) >= req.cores:
            return tuple(free[: req.cores])
    return tuple(sorted(node.free_cores)[: req.cores])


def _check_target_ids(node: _Node, req: Request) -> None:
    if req.numa is not None and not 0 <= req.numa < len(node.spec.zones):
        raise NotFound(f"node {node.name} has no NUMA zone {req.numa} (zones: "
                       f"0-{len(node.spec.zones) - 1})")
    unknown = sorted(set(req.gpu_ids) - set(node.spec.gpus))
    if unknown:
        have = ",".join(map(str, node.spec.gpus)) or "none"
        raise NotFound(f"node {node.name} has no GPU {','.join(map(str, unknown))} (GPUs: {have})")


def _unusable_reason(req: Request, nodes: dict[str, _Node]) -> str:
    """Why ``req`` waits when no usable node could run it."""
    if req.target is not None:
        target = nodes.get(req.target)
        state = "drained" if target and target.drained else (target.state if target else "gone")
        return f"target node {req.target} is {state}"
    return "no usable node can run it (offline, drained or degraded)"


def _wants(req: Request) -> str:
    return _wants_of(req.cores, req.memory, req.gpu_count)


def _waiting(req: Request) -> str:
    """The reason of a task too large for what is free (one string per shape)."""
    return _waiting_for(req.cores, req.memory, req.gpu_count)


@functools.lru_cache(maxsize=1024)
def _wants_of(cores: int, memory: int, gpus: int) -> str:
    parts = [f"{cores} core{'s' if cores != 1 else ''}"]
    if memory:
        parts.append(f"{format_size(memory)} memory")
    if gpus:
        parts.append(f"{gpus} GPU{'s' if gpus != 1 else ''}")
    return " + ".join(parts)


@functools.lru_cache(maxsize=1024)
def _waiting_for(cores: int, memory: int, gpus: int) -> str:
    return f"waiting for {_wants_of(cores, memory, gpus)}"


def _impossible_message(req: Request, candidates: list[_Node]) -> str:
    if req.needs and not any(req.needs <= n.spec.features for n in candidates):
        return f"no node offers {', '.join(sorted(req.needs))}"
    biggest = max(candidates, key=lambda n: (len(n.spec.cores), n.spec.memory, len(n.spec.gpus)))
    where = f"NUMA zone {req.numa} of " if req.numa is not None else ""
    return (f"no node can ever run this task: it asks for {_wants(req)}; the largest node "
            f"({where}{biggest.name}) has {len(biggest.spec.cores)} cores, "
            f"{format_size(biggest.spec.memory)} memory and {len(biggest.spec.gpus)} GPUs")
