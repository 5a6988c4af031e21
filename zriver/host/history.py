"""Cluster usage history: cores, memory and GPUs held and offered, sampled over time.

A host extension (``host.history``) for the dashboard's chart:

* every ``SAMPLE_EVERY`` seconds (60) a loop (as ``zriver.host.vps``'s idle loop) calls
  ``sample(now)``: one row of the scheduler's node usage summed over the nodes that count
  (``COUNTED``: online, degraded or unreachable; an offline node offers nothing), written in
  the host's tick (``host.begin()``: committed with it);
* ``compact(now)`` (after each sample): minute rows older than ``FINE_KEPT`` (48 h) become one
  row per ``COARSE_STEP`` (15 min: the mean of its minutes; only whole intervals, so none is
  made twice) and coarse rows older than ``COARSE_KEPT`` (30 days) are deleted. So the table
  holds at most about 2,880 + 2,880 rows; ``MAX_FINE_ROWS`` bounds it even if the clock jumps;
* op ``usage.history {since?, step?}`` (people): the samples at or after ``since`` (default:
  ``FINE_KEPT`` ago), oldest first, as ``{"samples": [{"at", "step", "cores_used",
  "cores_total", "memory_used", "memory_total", "gpus_used", "gpus_total"}], "step"}``; with
  ``step`` (seconds, at least 60) the samples are averaged into intervals of that length
  (``at``: each interval's start), without it each row keeps its own (60 or 900).

Table ``usage_samples`` (migration 9). Memory is in bytes; ``*_used`` are what the scheduler
holds for tasks (not what they really use).
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import structlog

from zriver.errors import InvalidArgument
from zriver.host.ops import PEOPLE_ONLY, SERVICE, OpTable
from zriver.host.store import Migration, Store
from zriver.protocol import arg

log = structlog.get_logger("zriver.host")

MIGRATION = Migration(9, "history", """
CREATE TABLE usage_samples(
    step INTEGER NOT NULL,
    at REAL NOT NULL,
    cores_used REAL NOT NULL,
    cores_total REAL NOT NULL,
    memory_used REAL NOT NULL,
    memory_total REAL NOT NULL,
    gpus_used REAL NOT NULL,
    gpus_total REAL NOT NULL,
    PRIMARY KEY (step, at)
);
""")
SAMPLE_EVERY = 60.0
FINE_STEP = 60
COARSE_STEP = 900
FINE_KEPT = 48 * 3600.0
COARSE_KEPT = 30 * 86400.0
MAX_FINE_ROWS = 2 * int(FINE_KEPT // FINE_STEP)
"""A hard bound on minute rows (a clock set back could otherwise keep rows from its future)."""
MAX_SAMPLES = 10_000
"""The most samples one ``usage.history`` answers."""
FIELDS = ("cores_used", "cores_total", "memory_used", "memory_total", "gpus_used",
          "gpus_total")
COUNTED = frozenset({"online", "degraded", "unreachable"})


def node_usage(core: Any) -> list[dict[str, Any]]:
    """Per node, sorted by name: ``name``, ``state``, ``drained`` and the ``FIELDS`` (the
    scheduler's capacities and what it holds)."""
    rows = []
    for name in sorted(core.nodes):
        node, scheduler = core.nodes[name], core.scheduler
        if not scheduler.has_node(name):
            continue
        spec = scheduler.node_spec(name)
        cores_used, memory_used = scheduler.node_usage(name)
        rows.append({"name": name, "state": node.state, "drained": node.drained is not None,
                     "cores_used": cores_used, "cores_total": len(spec.cores),
                     "memory_used": memory_used, "memory_total": spec.memory,
                     "gpus_used": len(spec.gpus) - len(scheduler.free_gpus(name)),
                     "gpus_total": len(spec.gpus)})
    return rows


def cluster_usage(nodes: list[dict[str, Any]]) -> dict[str, int]:
    """The ``FIELDS`` summed over the nodes in a ``COUNTED`` state."""
    counted = [row for row in nodes if row["state"] in COUNTED]
    return {field: sum(row[field] for row in counted) for field in FIELDS}


def average(rows: list[dict[str, Any]], step: int) -> list[dict[str, Any]]:
    """``rows`` (oldest first) averaged into intervals of ``step`` seconds."""
    buckets: dict[float, list[dict[str, Any]]] = {}
    for row in rows:
        buckets.setdefault(math.floor(row["at"] / step) * step, []).append(row)
    return [{"at": at, "step": step,
             **{f: sum(r[f] for r in group) / len(group) for f in FIELDS}}
            for at, group in buckets.items()]


class SampleRecords:
    """All the SQL of ``usage_samples``, on the host's store connection."""

    def __init__(self, store: Store) -> None:
        self.conn = store.conn

    def put(self, step: int, at: float, values: dict[str, float]) -> None:
        with self.conn:
            self.conn.execute(
                f"INSERT OR REPLACE INTO usage_samples(step, at, {', '.join(FIELDS)}) "
                f"VALUES (?, ?, {', '.join('?' * len(FIELDS))})",
                (step, at, *(values[f] for f in FIELDS)))

    def since(self, since: float, limit: int, step: int | None = None) -> list[dict[str, Any]]:
        """Rows at or after ``since`` (of one ``step`` when given), oldest first."""
        where, params = "at >= ?", [since]
        if step is not None:
            where, params = where + " AND step = ?", params + [step]
        rows = self.conn.execute(
            f"SELECT step, at, {', '.join(FIELDS)} FROM usage_samples WHERE {where} "
            f"ORDER BY at, step LIMIT ?", (*params, limit)).fetchall()
        return [dict(zip(("step", "at") + FIELDS, row)) for row in rows]

    def fine_before(self, before: float) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            f"SELECT step, at, {', '.join(FIELDS)} FROM usage_samples WHERE step = ? AND "
            f"at < ? ORDER BY at", (FINE_STEP, before)).fetchall()
        return [dict(zip(("step", "at") + FIELDS, row)) for row in rows]

    def delete(self, step: int, before: float) -> None:
        with self.conn:
            self.conn.execute("DELETE FROM usage_samples WHERE step = ? AND at < ?",
                              (step, before))

    def keep_newest(self, step: int, count: int) -> None:
        with self.conn:
            self.conn.execute(
                "DELETE FROM usage_samples WHERE step = ? AND at <= (SELECT at FROM "
                "usage_samples WHERE step = ? ORDER BY at DESC LIMIT 1 OFFSET ?)",
                (step, step, count))

    def count(self) -> int:
        return self.conn.execute("SELECT count(*) FROM usage_samples").fetchall()[0][0]


class History:
    """The usage history extension (see the module docstring)."""

    name = "history"
    migrations = [MIGRATION]

    def __init__(self) -> None:
        self.host: Any = None
        self.records: SampleRecords | None = None
        self._loop_task: asyncio.Task | None = None

    def register(self, ops: OpTable) -> None:
        ops.add("usage.history", self.history, PEOPLE_ONLY, SERVICE)

    def attach(self, service: Any) -> None:
        self.host = service
        self.records = SampleRecords(service.store)
        self._loop_task = asyncio.ensure_future(self._sample_loop())

    async def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)

    async def _sample_loop(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_EVERY - time.time() % SAMPLE_EVERY)
            try:
                self.sample(time.time())
            except Exception:  # a failed sample must not end the history
                log.exception("history.sample_failed")

    # ---- sampling ------------------------------------------------------------------------
    def sample(self, now: float) -> dict[str, Any]:
        """Record the cluster's usage now (one minute row at ``now``, whole seconds), then
        compact; returns the row."""
        at = float(math.floor(now))
        values = cluster_usage(node_usage(self.host.core))
        self.host.begin()
        self.records.put(FINE_STEP, at, values)
        self.compact(now)
        return {"at": at, "step": FINE_STEP, **values}

    def compact(self, now: float) -> None:
        """Minute rows of whole 15-minute intervals older than 48 h -> one row each; coarse
        rows older than 30 days, and minute rows beyond ``MAX_FINE_ROWS``, deleted."""
        cutoff = math.floor((now - FINE_KEPT) / COARSE_STEP) * COARSE_STEP
        old = self.records.fine_before(cutoff)
        for row in average(old, COARSE_STEP):
            self.records.put(COARSE_STEP, row["at"], row)
        if old:
            self.records.delete(FINE_STEP, cutoff)
        self.records.delete(COARSE_STEP, now - COARSE_KEPT)
        self.records.keep_newest(FINE_STEP, MAX_FINE_ROWS)

    # ---- the op --------------------------------------------------------------------------
    def history(self, service: Any, request: Any, body: dict) -> dict:
        """``usage.history {since?, step?}``: see the module docstring."""
        since = arg(body, "since", (int, float), time.time() - FINE_KEPT)
        step = arg(body, "step", int, None)
        if step is not None and step < FINE_STEP:
            raise InvalidArgument(f"step must be at least {FINE_STEP} seconds")
        rows = self.records.since(float(since), MAX_SAMPLES)
        if step is not None:
            rows = average(rows, step)
        return {"samples": rows, "step": step}
