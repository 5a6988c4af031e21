"""Task dependencies (pure): who waits for whom, and what an ending means for the waiters.

``--after`` ids must complete successfully; ``--after-any`` ids must merely end. A waiter is
released to the scheduler when everything it waits for has ended as required, and fails when an
``--after`` dependency ends any other way (its dependants then fail in turn, by the host
calling ``ended`` again for it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

COMPLETED = "completed"


@dataclass(slots=True)
class _Waiter:
    after: set[int]
    after_any: set[int]


@dataclass
class Verdict:
    """``ready``: may be queued now; ``failed``: the reason it can never run; else waiting."""

    ready: bool = False
    failed: str | None = None


@dataclass
class Dependencies:
    _waiters: dict[int, _Waiter] = field(default_factory=dict)
    _blocking: dict[int, set[int]] = field(default_factory=dict)  # dep -> its waiters

    def add(self, task_id: int, after: list[int], after_any: list[int],
            ended: dict[int, str]) -> Verdict:
        """Register ``task_id``; ``ended`` maps the deps that are already final to their state."""
        for dep in after:
            if dep in ended and ended[dep] != COMPLETED:
                return Verdict(failed=f"dependency {dep} ended {ended[dep]}")
        waiter = _Waiter({d for d in after if d not in ended},
                         {d for d in after_any if d not in ended})
        if not waiter.after and not waiter.after_any:
            return Verdict(ready=True)
        self._waiters[task_id] = waiter
        for dep in waiter.after | waiter.after_any:
            self._blocking.setdefault(dep, set()).add(task_id)
        return Verdict()

    def ended(self, task_id: int, state: str) -> tuple[list[int], list[tuple[int, str]]]:
        """``task_id`` reached final ``state``: (waiters now ready, (waiter, reason) that fail)."""
        ready, failed = [], []
        for waiter_id in sorted(self._blocking.pop(task_id, ())):
            waiter = self._waiters.get(waiter_id)
            if waiter is None:
                continue
            if task_id in waiter.after and state != COMPLETED:
                self.forget(waiter_id)
                failed.append((waiter_id, f"dependency {task_id} ended {state}"))
                continue
            waiter.after.discard(task_id)
            waiter.after_any.discard(task_id)
            if not waiter.after and not waiter.after_any:
                del self._waiters[waiter_id]
                ready.append(waiter_id)
        return ready, failed

    def forget(self, task_id: int) -> None:
        """Drop a waiter (killed while waiting)."""
        waiter = self._waiters.pop(task_id, None)
        if waiter is not None:
            for dep in waiter.after | waiter.after_any:
                self._blocking.get(dep, set()).discard(task_id)

    def waiting_for(self, task_id: int) -> list[int] | None:
        waiter = self._waiters.get(task_id)
        return None if waiter is None else sorted(waiter.after | waiter.after_any)
