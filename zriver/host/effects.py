"""What the host core asks its adapters to do: typed effects, and the request they answer.

The core (``zriver.host.core``) never writes, sends or waits itself. Every entry point returns
the list of effects it produced, in order; an adapter (``zriver.host.service`` for ZeroMQ)
carries them out in a fixed order per tick: ``Write`` at once (inside the tick's transaction,
so later reads of the tick see them), then after the commit ``Command``, ``TaskEvent`` and
``Publish``, ``Reply``/``Refuse``; ``ArmTimer``/``CancelTimer`` and ``ReadLog``/``CallService``
as they come. Effects are named tuples: cheap to make, and equal by value in table tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from zriver.principal import Principal


class Now(NamedTuple):
    """The clock, read by the adapter once per call: wall time for records people read,
    monotonic time for liveness (a wall-clock jump must not mark nodes lost)."""

    wall: float
    mono: float


@dataclass(slots=True, eq=False)
class Request:
    """One call of an op by ``principal``, answered exactly once by a ``Reply`` or ``Refuse``.

    ``link`` and ``rid`` are the ZeroMQ adapter's return address (ROUTER identity, request id);
    an in-process caller (relay, web) leaves them empty and sets ``future``, which its adapter
    resolves with the answer. The core treats all three as opaque."""

    principal: Principal
    rid: int = 0
    link: bytes | None = None
    future: Any = None


class Write(NamedTuple):
    """Call store write method ``method(*args, **fields)`` inside the tick's transaction."""

    method: str
    args: tuple
    fields: dict | None = None


class Reply(NamedTuple):
    request: Request
    body: dict | None


class Refuse(NamedTuple):
    """An error answer: ``code`` is a ``zriver.errors`` code."""

    request: Request
    code: str
    msg: str


class Command(NamedTuple):
    """A host->runner command for ``node`` (sent after the commit). ``link`` overrides where
    it goes (a runner that is not the node's registered one: ``runner.reregister``)."""

    node: str
    op: str
    body: dict
    link: bytes | None = None


class TaskEvent(NamedTuple):
    """``evt.task.<id>``: a task's new state (the adapter keeps one per task per tick)."""

    task_id: int
    body: dict


class Publish(NamedTuple):
    """Any other event, e.g. ``evt.node.<name>``."""

    topic: str
    op: str
    body: dict


class ArmTimer(NamedTuple):
    """Call ``core.timer(key, now)`` after ``delay`` seconds (re-arming a key replaces it)."""

    key: tuple
    delay: float


class CancelTimer(NamedTuple):
    key: tuple


class ReadLog(NamedTuple):
    """Answer ``request`` with a slice of a task's log: from the file ``path`` when it exists,
    else from the runner of ``node`` (op ``log.read`` with ``read``), else empty; the answer
    carries ``final``."""

    request: Request
    path: str | None
    node: str | None
    read: dict
    final: bool


class CallService(NamedTuple):
    """Run an extension's I/O op (``kind="service"``): the role check has passed."""

    handler: Any
    request: Request
    body: dict


class Rows:
    """The store's write methods, recorded as ``Write`` effects into ``out``."""

    __slots__ = ("_out",)

    def __init__(self, out: list) -> None:
        self._out = out

    def insert_task(self, row: dict[str, Any]) -> None:
        self._out.append(Write("insert_task", (row,)))

    def insert_tasks(self, first_id: int, groups: list, at: float,
                     batch_id: int | None) -> None:
        self._out.append(Write("insert_tasks", (first_id, groups, at, batch_id)))

    def update_task(self, task_id: int, **fields: Any) -> None:
        self._out.append(Write("update_task", (task_id,), fields))

    def add_event(self, task_id: int, state: str, at: float, detail: str = "") -> None:
        self._out.append(Write("add_event", (task_id, state, at, detail)))

    def save_node(self, name: str, info: dict, state: str, registered_at: float,
                  last_seen: float) -> None:
        self._out.append(Write("save_node", (name, info, state, registered_at, last_seen)))

    def set_node_state(self, name: str, state: str, last_seen: float | None) -> None:
        self._out.append(Write("set_node_state", (name, state, last_seen)))

    def set_node_drained(self, name: str, reason: str | None) -> None:
        self._out.append(Write("set_node_drained", (name, reason)))

    def remember_submit(self, key: str, ids: list[int], batch_id: int | None,
                        at: float) -> None:
        self._out.append(Write("remember_submit", (key, ids, batch_id, at)))

    def prune_submit_keys(self, before: float) -> None:
        self._out.append(Write("prune_submit_keys", (before,)))


WRITE_METHODS = frozenset(name for name in vars(Rows) if not name.startswith("_"))
"""The store methods a ``Write`` may name: exactly those ``Rows`` records."""
