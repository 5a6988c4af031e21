"""The host's latency histograms: requests per op, and dispatch (submit -> running).

Pure bookkeeping with no dependency, read by ``zriver.web.metrics`` for ``/metrics``:

* ``Histogram``: fixed bucket bounds (seconds), a count per bucket, a sum and a count;
  ``cumulative()`` gives Prometheus's ``le`` buckets.
* ``Latency.requests``: op name -> ``Histogram`` of the time from a request's arrival
  (``Host._handle``, which every front end goes through) to its answer leaving the host,
  after the commit (the end of ``Host.flush``). Deferred answers (``task.wait``, log reads,
  runner calls) count when they are answered. Ops not in the op table count as
  ``"unknown"``, so callers cannot make labels up.
* ``Latency.dispatch``: the time from a task's submission to its ``running`` event, both
  as the host sends them (``evt.task.<id>`` after the commit). A retried task counts again
  from its return to ``pending``. Tasks already pending when the host started are not
  counted (their submission was not seen).
* ``Latency.finished``: final state -> tasks that reached it since the host started.

Times come from ``time.perf_counter`` (requests) and ``time.monotonic`` (dispatch), taken by
``begin``/``answered``/``sent``; the ``at`` arguments exist so tests can drive them.
"""

from __future__ import annotations

import bisect
import time
from typing import Any, Container, Iterable

REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0, 30.0)
DISPATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    60.0, 300.0, 1800.0, 7200.0)
MAX_OPEN = 100_000
"""At most this many unanswered requests (or pending tasks) are timed; the oldest go first."""
UNKNOWN_OP = "unknown"
FINAL_STATES = ("completed", "failed", "killed", "killed_oom", "lost", "timeout")


class Histogram:
    """Observations counted into fixed buckets: bucket ``i`` holds values ``<= bounds[i]``
    (and above ``bounds[i-1]``); the last bucket is ``+Inf``."""

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = tuple(sorted(bounds))
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """``(le, observations <= le)`` for each bound, then ``(inf, count)``."""
        total, result = 0, []
        for bound, count in zip(self.bounds + (float("inf"),), self.counts):
            total += count
            result.append((bound, total))
        return result


class Latency:
    """The host's request and dispatch clocks (see the module docstring). ``ops``: the op
    table (anything with ``in``), whose names are the only ``op`` labels."""

    def __init__(self, ops: Container[str]) -> None:
        self.ops = ops
        self.requests: dict[str, Histogram] = {}
        self.dispatch = Histogram(DISPATCH_BUCKETS)
        self.finished: dict[str, int] = dict.fromkeys(FINAL_STATES, 0)
        self._open: dict[int, tuple[str, float]] = {}
        self._answered: list[tuple[str, float]] = []
        self._pending: dict[int, float] = {}

    # ---- requests ------------------------------------------------------------------------
    def begin(self, request: Any, op: str, at: float | None = None) -> None:
        """Request ``request`` (an object alive until answered) for ``op`` arrived."""
        self._open[id(request)] = (op if op in self.ops else UNKNOWN_OP,
                                   time.perf_counter() if at is None else at)
        if len(self._open) > MAX_OPEN:
            del self._open[next(iter(self._open))]

    def answered(self, request: Any) -> None:
        """Its answer is queued; it counts once ``sent`` runs (after the commit)."""
        entry = self._open.pop(id(request), None)
        if entry is not None:
            self._answered.append(entry)

    def sent(self, events: Iterable[dict[str, Any]] = (), at: float | None = None,
             mono: float | None = None) -> None:
        """The tick's answers and task events (``evt.task`` bodies) left: count them."""
        now = time.perf_counter() if at is None else at
        answered, self._answered = self._answered, []
        for op, start in answered:
            histogram = self.requests.get(op)
            if histogram is None:
                histogram = self.requests[op] = Histogram(REQUEST_BUCKETS)
            histogram.observe(max(0.0, now - start))
        for body in events:
            self.task_event(body, time.monotonic() if mono is None else mono)

    # ---- dispatch ------------------------------------------------------------------------
    def task_event(self, body: dict[str, Any], at: float) -> None:
        """One ``evt.task`` body sent at ``at``: its ``passed`` states, then its ``state``."""
        task_id = body.get("id")
        for state in list(body.get("passed") or ()) + [body.get("state")]:
            if state == "pending":
                self._pending.setdefault(task_id, at)
                if len(self._pending) > MAX_OPEN:
                    del self._pending[next(iter(self._pending))]
            elif state == "running":
                start = self._pending.pop(task_id, None)
                if start is not None:
                    self.dispatch.observe(max(0.0, at - start))
            elif state in self.finished:
                self._pending.pop(task_id, None)
                self.finished[state] += 1
