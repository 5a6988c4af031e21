#!/usr/bin/env python
"""Listing benchmark: what a page of ``task.list`` costs the host beside the unbounded reply
it replaces, what ``task.counts`` costs, and the snapshot behind ``zriver top`` / ``shell``,
with ``--tasks`` queued (pending) tasks and ``--finished`` finished ones in the store.

    python bench/listings.py [--tasks 100000] [--finished 20000] [--rounds 5] [--json out.json]

In-process, through the host core as the service runs it (``HostCore.handle`` on a real
``Store``, the reply packed with ``protocol.encode_ok``), in the same run:

* **old reply**: 20,000 rows (the ``limit`` the old ``task.list`` honoured, up to 100,000),
  built the old way (``Store.list_tasks`` + ``public_task``) and packed;
* **page**: ``task.list`` of the default 200 and of the largest page (1,000), with its ``next``
  and ``more`` (counted through the indexes);
* **counts**: ``task.counts`` of the unfinished states (from the live tasks in memory) and of
  every state (finished ones in SQL, capped);
* **snapshot**: what ``live.Feed`` asks for at start (counts, active pages, the newest 1,000
  pending, 200 recent), beside the old snapshot (every unfinished task: the ``--tasks`` rows).

Times are medians of ``--rounds`` (milliseconds of the loop: building and packing the reply);
sizes are packed bytes. Bounded: each measurement runs ``--rounds`` times; the temporary store
is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # this checkout, whatever else is installed

from prefill import prefill  # noqa: E402
from zriver.config import HostSettings  # noqa: E402
from zriver.host.core import HostCore  # noqa: E402
from zriver.host.effects import Now, Refuse, Reply, Request, Write  # noqa: E402
from zriver.host.handlers import public_task  # noqa: E402
from zriver.host.service import Host  # noqa: E402
from zriver.host.store import Store  # noqa: E402
from zriver.principal import ADMIN, Principal  # noqa: E402
from zriver.protocol import encode_ok  # noqa: E402

ROOT = Principal("root", ADMIN, key="C" * 40)
UNFINISHED = ["pending", "assigned", "running", "paused", "unreachable"]


class Harness:
    """A host core on a store under ``data`` (nothing listens)."""

    def __init__(self, data: Path) -> None:
        settings = HostSettings(data_dir=str(data)).resolved()
        host = Host(settings)  # its op table and migrations only
        self.store = Store(data / "host.db", host.migrations)
        self.core = HostCore(settings, self.store, host.ops, "bench")
        now = time.time()
        self.clock = Now(now, time.monotonic())
        self.apply(self.core.load(self.clock))

    def apply(self, effects: list) -> list:
        with self.store.batch():
            for effect in effects:
                if isinstance(effect, Write):
                    self.store.apply(effect.method, effect.args, effect.fields)
        return effects

    def call(self, op: str, body: dict) -> tuple[dict, bytes]:
        request = Request(ROOT, 1, b"bench")
        effects = self.apply(self.core.handle(request, op, body, self.clock))
        answer = next(e for e in effects if isinstance(e, (Reply, Refuse)))
        assert isinstance(answer, Reply), answer
        return answer.body, encode_ok(1, answer.body)


def timed(fn, rounds: int) -> tuple[float, int]:
    """Median milliseconds of ``fn()`` over ``rounds`` and the bytes it returned last."""
    times, size = [], 0
    for _ in range(rounds):
        started = time.perf_counter()
        size = len(fn())
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), size


def finish_some(harness: Harness, count: int) -> None:
    """Mark the ``count`` oldest tasks completed in the store (history, not in memory)."""
    with harness.store.batch():
        harness.store.conn.execute("UPDATE tasks SET state='completed', finished_at=? "
                                   "WHERE id <= ?", (time.time(), count))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000, help="queued (pending) tasks")
    parser.add_argument("--finished", type=int, default=20_000, help="finished tasks")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="zriver-bench-listings-"))
    try:
        data = tmp / "host"
        started = time.monotonic()
        prefill(data, args.finished + args.tasks)
        store = Store(data / "host.db", Host(HostSettings(data_dir=str(data))).migrations)
        with store.batch():
            store.conn.execute("UPDATE tasks SET state='completed', finished_at=? WHERE id <= ?",
                               (time.time(), args.finished))
        store.close()
        harness = Harness(data)
        print(f"store: {args.tasks:,} queued + {args.finished:,} finished tasks "
              f"({time.monotonic() - started:.1f}s to make and load)")
        results = measure(harness, args)
        harness.store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for name, (ms, size) in results.items():
        print(f"{name:<34} {ms:9.2f} ms {size / 1024:11.1f} KiB")
    old_ms, old_size = results["old reply (20,000 rows)"]
    page_ms, page_size = results["task.list page (200)"]
    snap_ms, snap_size = results["top snapshot"]
    old_snap_ms, old_snap_size = results["old top snapshot (every unfinished)"]
    ratios = {"page/old time": page_ms / old_ms, "page/old bytes": page_size / old_size,
              "snapshot/old snapshot time": snap_ms / old_snap_ms,
              "snapshot/old snapshot bytes": snap_size / old_snap_size}
    for name, value in ratios.items():
        print(f"{name:<34} {value:9.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "command": " ".join(sys.argv), "tasks": args.tasks, "finished": args.finished,
            "results": {k: {"ms": ms, "bytes": size} for k, (ms, size) in results.items()},
            "ratios": ratios}, indent=2))
    return 0


def measure(h: Harness, args) -> dict[str, tuple[float, int]]:
    core, rounds = h.core, args.rounds

    def old(states: list[str] | None, limit: int) -> bytes:
        rows = h.store.list_tasks(states, limit)
        return encode_ok(1, {"tasks": [public_task(core, row) for row in rows]})

    def snapshot() -> bytes:
        parts = [h.call("task.counts", {"states": UNFINISHED})[1]]
        before = None
        for _ in range(5):
            body, packed = h.call("task.list", {"states": ["assigned", "running", "paused",
                                                           "unreachable"], "limit": 1000,
                                                "before": before})
            parts.append(packed)
            before = body["next"]
            if before is None:
                break
        parts.append(h.call("task.list", {"states": ["pending"], "limit": 1000})[1])
        parts.append(h.call("task.list", {"limit": 200})[1])
        return b"".join(parts)

    return {
        "old reply (20,000 rows)": timed(lambda: old(None, 20_000), rounds),
        "task.list page (200)": timed(lambda: h.call("task.list", {})[1], rounds),
        "task.list page (1,000)": timed(lambda: h.call("task.list", {"limit": 1000})[1],
                                        rounds),
        "task.list completed page (200)": timed(
            lambda: h.call("task.list", {"states": ["completed"]})[1], rounds),
        "task.counts (unfinished)": timed(
            lambda: h.call("task.counts", {"states": UNFINISHED})[1], rounds),
        "task.counts (every state)": timed(lambda: h.call("task.counts", {})[1], rounds),
        "top snapshot": timed(snapshot, rounds),
        "old top snapshot (every unfinished)": timed(
            lambda: old(["pending", "assigned", "running", "paused"], 100_000),
            max(1, rounds // 2)),
    }


if __name__ == "__main__":
    sys.exit(main())
