"""Long-poll waiters of ``task.wait``: answered when all their tasks are final, or at timeout.

A waiter is answered exactly once. The timeout bounds how long one request is held so that a
client behind a flaky link re-asks instead of waiting forever on a lost reply.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    from zriver.host.service import Caller, Host


@dataclass(slots=True)
class Waiter:
    caller: "Caller"
    ids: list[int]
    timer: asyncio.TimerHandle | None = None
    done: bool = False
    remaining: set[int] = field(default_factory=set)

    def cancel(self) -> None:
        self.done = True
        if self.timer is not None:
            self.timer.cancel()


def add(host: "Host", caller: "Caller", ids: list[int], timeout: float) -> None:
    """Register a waiter for ``ids`` (some not final yet)."""
    waiter = Waiter(caller, ids, remaining={i for i in ids if i in host.tasks})
    waiter.timer = asyncio.get_running_loop().call_later(timeout, answer, host, waiter)
    host.waiters.append(waiter)


def wake(host: "Host", task_id: int) -> None:
    """Called when ``task_id`` became final."""
    for waiter in list(host.waiters):
        waiter.remaining.discard(task_id)
        if not waiter.remaining:
            answer(host, waiter)


def answer(host: "Host", waiter: Waiter) -> None:
    if waiter.done:
        return
    waiter.cancel()
    host.waiters.remove(waiter)
    host.reply(waiter.caller, {"done": not waiter.remaining, "tasks": summaries(host, waiter.ids)})


def summaries(host: "Host", ids: list[int],
              stored: dict[int, tuple[str, int | None]] | None = None) -> list[dict[str, Any]]:
    """State and exit code of each task: live ones from memory, final ones from ``stored``
    (``Store.task_outcomes`` of them, read here in one query when not given)."""
    if stored is None:
        stored = host.store.task_outcomes([i for i in ids if i not in host.tasks])
    result = []
    for task_id in ids:
        live = host.tasks.get(task_id)
        if live is not None:
            state, code = live.state, None
        else:
            state, code = stored.get(task_id, ("unknown", None))
        result.append({"id": task_id, "state": state, "exit_code": code})
    return result


def all_final(host: "Host", ids: list[int]) -> bool:
    return all(i not in host.tasks for i in ids)

