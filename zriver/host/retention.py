"""History that can grow for years: old finished tasks pruned, their usage kept as roll-ups.

A host extension (``host.retention``):

* every ``PRUNE_EVERY`` seconds (an hour; the first time ``FIRST_PRUNE`` after the start) a
  loop calls ``prune(now)``: tasks in a final state that finished more than ``retention``
  (a host setting, default 180 days; ``forever`` turns pruning off) before ``now`` are
  rolled up and then deleted with their events, ``BATCH`` (200) tasks at a time, oldest
  first. Each batch is one savepoint in the host's tick transaction (``host.begin()``:
  committed with it), and the loop is yielded to between batches (``breathe``), so a prune of
  a million rows never holds the host for longer than one batch (a few milliseconds).
  Unfinished tasks are never pruned, whatever their age;
* before a batch is deleted, its tasks' core- and GPU-microseconds are added to
  ``usage_rollups`` per (hour, owner, node), with the task counted in the hour it ended in
  (``zriver.host.accounting.rollup``), in the same savepoint as the delete: a task is in
  exactly one of ``tasks`` and ``usage_rollups``;
* op ``usage.report {since?, by?}`` (people): core-hours, GPU-hours and task counts per
  ``user`` (owner) or ``node`` since ``since`` (epoch seconds, default 0), from the task
  rows still kept plus the roll-ups of the hours from ``since`` on
  (``accounting.usage_report``): the same reply before and after a prune for any
  ``since`` newer than the retention or on an hour boundary (for an older ``since`` inside an
  hour, that hour of pruned tasks counts whole). Its cost follows the tasks that ran in the
  window (a week of a busy lab: tens of thousands of rows, seconds), so it is read off the
  loop: in one worker thread, on a connection of its own to the same database, both reads in
  one read transaction (one committed snapshot: a prune is seen wholly or not at all).

Tables (migration 11): ``usage_rollups`` and the index ``tasks_by_finished`` on
``tasks(finished_at)`` that makes each batch an index range (and ``usage.report`` over a
recent window a range too), so the cost of a prune, of the host's start and of a submit does
not grow with the history.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from typing import Any

import structlog

from zriver.errors import InvalidArgument
from zriver.host.accounting import first_hour, rollup, usage_report
from zriver.host.ops import PEOPLE_ONLY, SERVICE, OpTable
from zriver.host.store import Migration, Store
from zriver.protocol import arg

log = structlog.get_logger("zriver.host")

MIGRATION = Migration(11, "retention", """
CREATE TABLE usage_rollups(
    hour INTEGER NOT NULL,
    owner TEXT NOT NULL,
    node TEXT NOT NULL,
    tasks INTEGER NOT NULL,
    failed INTEGER NOT NULL,
    core_us INTEGER NOT NULL,
    gpu_us INTEGER NOT NULL,
    PRIMARY KEY (hour, owner, node)
) WITHOUT ROWID;
CREATE INDEX tasks_by_finished ON tasks(finished_at);
""")
BATCH = 200
"""Tasks rolled up and deleted per savepoint (15-70 us each on a 2-core VM: a batch holds the
loop for 3-15 ms; docs/performance.md, "History")."""
FIRST_PRUNE = 60.0
"""Seconds after the host's start before the first prune (the start itself stays quick)."""
PRUNE_EVERY = 3600.0
_GROUP = {"user": "owner", "node": "node"}
ERA = 256
"""Hours SQLite sums at once in ``RollupRecords.sums``: 256 h of a million busy cores is
under 2^60 core-microseconds."""


class RollupRecords:
    """All the SQL of ``usage_rollups``, on the host's store connection."""

    def __init__(self, store: Store) -> None:
        self.conn = store.conn

    def add(self, sums: dict[tuple[int, str, str], list[int]]) -> None:
        """Add ``accounting.rollup`` sums (inside the caller's transaction)."""
        self.conn.executemany(
            "INSERT INTO usage_rollups(hour, owner, node, tasks, failed, core_us, gpu_us) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(hour, owner, node) DO UPDATE SET "
            "tasks = tasks + excluded.tasks, failed = failed + excluded.failed, "
            "core_us = core_us + excluded.core_us, gpu_us = gpu_us + excluded.gpu_us",
            [(*key, *values) for key, values in sums.items()])

    def sums(self, by: str, from_hour: int) -> list[tuple[str, int, int, int, int]]:
        """``(key, tasks, failed, core_us, gpu_us)`` per owner (``by="user"``) or node, over
        the hours from ``from_hour`` on. SQLite sums each ``ERA`` of hours (a sum that stays
        far inside 64 bits), Python adds the eras (its integers do not overflow)."""
        column = _GROUP[by]
        totals: dict[str, list[int]] = {}
        for key, *sums in self.conn.execute(
                f"SELECT {column}, sum(tasks), sum(failed), sum(core_us), sum(gpu_us) "
                f"FROM usage_rollups WHERE hour >= ? GROUP BY {column}, hour / {ERA}",
                (from_hour,)):
            entry = totals.setdefault(key, [0, 0, 0, 0])
            for index, value in enumerate(sums):
                entry[index] += value
        return [(key, *sums) for key, sums in totals.items()]

    def count(self) -> int:
        return self.conn.execute("SELECT count(*) FROM usage_rollups").fetchall()[0][0]


class Retention:
    """The retention extension (see the module docstring)."""

    name = "retention"
    migrations = [MIGRATION]

    def __init__(self, retention: float | None) -> None:
        """``retention``: seconds finished tasks are kept (``None``: for ever)."""
        self.retention = retention
        self.host: Any = None
        self.records: RollupRecords | None = None
        self.pruned = 0
        """Tasks pruned since the start."""
        self._pruning: asyncio.Lock | None = None
        self._loop_task: asyncio.Task | None = None
        self._reader: Store | None = None
        """The usage reads' own connection (opened and used in the worker thread only)."""
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    def register(self, ops: OpTable) -> None:
        ops.add("usage.report", self.usage, PEOPLE_ONLY, SERVICE)

    def attach(self, service: Any) -> None:
        self.host = service
        self.records = RollupRecords(service.store)
        self._pruning = asyncio.Lock()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="zriver-usage")
        if self.retention is not None:
            self._loop_task = asyncio.ensure_future(self._prune_loop())

    async def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        if self._executor is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._close_reader)
            self._executor.shutdown(wait=True)
            self._executor = None

    async def _prune_loop(self) -> None:
        await asyncio.sleep(FIRST_PRUNE)
        while True:
            try:
                await self.prune(time.time())
            except Exception:  # a failed prune must not end pruning
                log.exception("retention.prune_failed")
            await asyncio.sleep(PRUNE_EVERY)

    # ---- pruning -------------------------------------------------------------------------
    async def prune(self, now: float) -> int:
        """Roll up and delete the tasks that finished more than ``retention`` before ``now``,
        ``BATCH`` at a time with the loop yielded to between batches; returns how many. One
        prune at a time (a second call waits for the first, then finds little to do)."""
        if self.retention is None:
            return 0
        cutoff, total = now - self.retention, 0
        async with self._pruning:
            while True:
                count = self._prune_batch(cutoff)
                total += count
                if count < BATCH:
                    break
                await self.breathe()
        if total:
            self.pruned += total
            log.info("retention.pruned", tasks=total, before=cutoff)
        return total

    def _prune_batch(self, cutoff: float) -> int:
        """One batch in one savepoint of the tick's transaction; the count pruned."""
        store = self.host.store
        self.host.begin()
        with store.conn:
            rows = store.finished_before(cutoff, BATCH)
            if rows:
                self.records.add(rollup(rows))
                store.delete_tasks([row["id"] for row in rows])
        return len(rows)

    async def breathe(self) -> None:
        """Between two batches: let the tick commit and the host serve what waits."""
        await asyncio.sleep(0)

    # ---- the op --------------------------------------------------------------------------
    async def usage(self, service: Any, request: Any, body: dict) -> dict:
        """``usage.report {since?, by?}``: see the module docstring."""
        by = arg(body, "by", str, "user")
        if by not in _GROUP:
            raise InvalidArgument("by must be 'user' or 'node'")
        since = float(arg(body, "since", (int, float), 0.0))
        rows = await asyncio.get_running_loop().run_in_executor(
            self._executor, self._report, since, by)
        return {"rows": rows, "since": since, "by": by}

    def _report(self, since: float, by: str) -> list[dict]:
        """In the worker thread: the report from one snapshot of the store."""
        if self._reader is None:
            self._reader = Store(self.host.data_dir / "host.db", self.host.migrations)
        with self._reader.conn:
            rows = self._reader.tasks_since(since)
            rolled = RollupRecords(self._reader).sums(by, first_hour(since))
        return usage_report(rows, since, time.time(), by, rolled)

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
