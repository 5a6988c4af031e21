"""Long-poll waiters of ``task.wait``: answered when all their tasks are final, or at timeout.

A waiter is answered exactly once, with a ``Reply`` effect. The timeout is a ``("wait", n)``
timer: it bounds how long one request is held so that a client behind a flaky link re-asks
instead of waiting forever on a lost reply. Pure: no clock, no loop.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from zriver.host.effects import ArmTimer, CancelTimer, Reply, Request

if TYPE_CHECKING:
    from zriver.host.core import HostCore


@dataclass(slots=True)
class Waiter:
    number: int
    request: Request
    ids: list[int]
    remaining: set[int] = field(default_factory=set)


class Waiters:
    """The core's open ``task.wait`` requests."""

    def __init__(self, core: "HostCore") -> None:
        self._core = core
        self._open: dict[int, Waiter] = {}
        self._numbers = itertools.count(1)

    def __len__(self) -> int:
        return len(self._open)

    def add(self, request: Request, ids: list[int], timeout: float) -> None:
        """Hold ``request`` until every task of ``ids`` (some not final yet) is final."""
        waiter = Waiter(next(self._numbers), request, ids,
                        remaining={i for i in ids if i in self._core.tasks})
        self._open[waiter.number] = waiter
        self._core.out.append(ArmTimer(("wait", waiter.number), timeout))

    def wake(self, task_id: int) -> None:
        """``task_id`` became final."""
        for waiter in list(self._open.values()):
            waiter.remaining.discard(task_id)
            if not waiter.remaining:
                self.answer(waiter.number, timed_out=False)

    def answer(self, number: int, timed_out: bool = True) -> None:
        """Answer waiter ``number`` (its timer fired, or its tasks are all final)."""
        waiter = self._open.pop(number, None)
        if waiter is None:
            return
        if not timed_out:
            self._core.out.append(CancelTimer(("wait", number)))
        self._core.out.append(Reply(waiter.request, {
            "done": not waiter.remaining, "tasks": summaries(self._core, waiter.ids)}))

    def clear(self) -> None:
        self._open.clear()


def summaries(core: "HostCore", ids: list[int],
              stored: dict[int, tuple[str, int | None]] | None = None) -> list[dict[str, Any]]:
    """State and exit code of each task: live and recently finished ones from memory, the
    others from ``stored`` (``task_outcomes`` of them, read here in one query when not
    given)."""
    if stored is None:
        stored = core.records.task_outcomes([i for i in ids if i not in core.tasks
                                             and i not in core.ended])
    result = []
    for task_id in ids:
        live = core.tasks.get(task_id)
        ended = core.ended.get(task_id)
        if live is not None:
            state, code = live.state, None
        elif ended is not None:
            state, code = ended[1], ended[2]
        else:
            state, code = stored.get(task_id, ("unknown", None))
        result.append({"id": task_id, "state": state, "exit_code": code})
    return result


def all_final(core: "HostCore", ids: list[int]) -> bool:
    return all(i not in core.tasks for i in ids)
