"""The host's in-memory records of tasks and nodes, and their wire shapes (pure data).

``LiveTask`` is an unfinished task; ``NodeRecord`` a runner as the host knows it. Neither holds
a socket, a timer or a clock: times are passed in by the core's callers.
"""

from __future__ import annotations

from dataclasses import InitVar, dataclass, field
from typing import Any

from zriver.host.scheduler import OFFLINE, Allocation, NodeSpec, Request
from zriver.spec import TaskSpec, parse_target

RUNNER_PREFIX = b"r:"


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
    wire: InitVar[dict[str, Any] | None] = None
    """Accepted and not kept: ``spec.to_wire()`` is rebuilt for each start (3 us), which
    saves about 0.8 KiB per live task, 43% of what the core holds for a queued one
    (docs/performance.md, "200 nodes through one host")."""
    command: list[str] | None = None
    """A sweep's task: its own command. Its ``spec`` is then shared by the sweep's tasks and
    carries the sweep's template as its command (``spec_wire`` has the task's own)."""

    def __post_init__(self, wire: dict[str, Any] | None) -> None:
        pass

    def spec_wire(self) -> dict[str, Any]:
        """The task's full spec as the runner gets it (``task.start``)."""
        wire = self.spec.to_wire()
        if self.command is not None:
            wire["command"] = self.command
        return wire

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
    """Monotonic time of its last message: liveness is judged on this."""
    sent: float = 0.0
    """Monotonic time of the host's last message to it (the lease: see runner/lease.py)."""
    link: bytes | None = None
    """Where its registered runner is reached: the ROUTER identity ``r:<name>:<instance>``,
    new per runner life. Opaque to the core, which only compares it."""
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


def node_of(identity: bytes) -> str | None:
    """The node name in a runner identity ``r:<name>:<instance>``; ``None`` for a client."""
    if not identity.startswith(RUNNER_PREFIX):
        return None
    name = identity[len(RUNNER_PREFIX):].decode(errors="replace")
    return name.rsplit(":", 1)[0] if ":" in name else name


def runner_identity(name: str, instance: str) -> bytes:
    return f"r:{name}:{instance}".encode()


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
