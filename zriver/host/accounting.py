"""Usage accounting (pure): who held how many cores and GPUs for how long.

A task counts from ``started_at`` to ``finished_at`` (or ``now`` while it runs), clipped to the
window ``[since, now]``. Core-hours are cores allocated x hours held; GPU-hours likewise. The
owner is whoever submitted the task (from config/env today; the authenticated identity once
authentication exists).

Times are counted in whole microseconds (``to_us``) and sums are integers
(core-microseconds), so a sum does not depend on the order it was added in: a report made
from task rows and one made from hourly roll-ups of the same rows (``rollup``, what
``zriver.host.retention`` keeps of pruned tasks) are equal, not just close. (A task counts
when it held something for at least a microsecond of the window.)

Roll-ups: ``rollup(rows)`` splits each finished task's held time into the hours
(``HOUR_US``) it overlapped, keyed ``(hour, owner, node)`` with ``[tasks, failed, core_us,
gpu_us]``; the task itself (``tasks``, ``failed``) is counted in the hour its end falls in
(an end exactly on an hour's start belongs to the hour before). A report over roll-ups
includes each hour that ends after ``since`` (``first_hour``): exact for a ``since`` on an
hour boundary, and otherwise the hour holding ``since`` counts whole.
"""

from __future__ import annotations

from typing import Any, Iterable

FINAL_FAILED = {"failed", "killed_oom", "lost", "timeout"}
HOUR_US = 3_600_000_000
_US_RANGE = 1 << 62
"""Times are clamped to +-2^62 us so that any finite ``since`` binds as a 64-bit integer."""


def to_us(seconds: float) -> int:
    """Epoch seconds as whole microseconds (clamped to +-2^62)."""
    return max(-_US_RANGE, min(_US_RANGE, round(seconds * 1_000_000)))


def first_hour(since: float) -> int:
    """The first roll-up hour a report from ``since`` includes (the one holding ``since``)."""
    return to_us(since) // HOUR_US


def _resources(row: dict[str, Any]) -> tuple[int, int]:
    """``(cores, gpus)`` the task held: its allocation's, else (an allocation without its
    cores) the spec's cores."""
    alloc = row.get("alloc") or {}
    cores = len(alloc["cores"]) if "cores" in alloc else row["spec"]["cores"]
    return cores, len(alloc.get("gpus") or [])


def rollup(rows: Iterable[dict[str, Any]]) -> dict[tuple[int, str, str], list[int]]:
    """Finished task rows -> ``{(hour, owner, node): [tasks, failed, core_us, gpu_us]}``
    (see the module docstring); rows that never held anything add nothing."""
    sums: dict[tuple[int, str, str], list[int]] = {}
    for row in rows:
        if row["started_at"] is None or row["finished_at"] is None:
            continue
        start, end = to_us(row["started_at"]), to_us(row["finished_at"])
        if end <= start:
            continue
        cores, gpus = _resources(row)
        owner, node = row["owner"] or "", row["node"] or ""
        last = (end - 1) // HOUR_US
        for hour in range(start // HOUR_US, last + 1):
            held = min(end, (hour + 1) * HOUR_US) - max(start, hour * HOUR_US)
            entry = sums.setdefault((hour, owner, node), [0, 0, 0, 0])
            entry[2] += cores * held
            entry[3] += gpus * held
        entry = sums[(last, owner, node)]
        entry[0] += 1
        entry[1] += row["state"] in FINAL_FAILED
    return sums


def usage_report(rows: list[dict[str, Any]], since: float, now: float, by: str,
                 rolled: Iterable[tuple[str, int, int, int, int]] = ()) -> list[dict]:
    """One row per owner (``by="user"``) or node (``by="node"``), busiest first.

    ``rows``: task rows; ``rolled``: roll-ups already summed per key from ``first_hour(since)``
    on, as ``(key, tasks, failed, core_us, gpu_us)`` (key: the owner or node, ``""`` when
    none)."""
    totals: dict[str, list[int]] = {}
    since_us, now_us = to_us(since), to_us(now)
    for row in rows:
        start = max(to_us(row["started_at"]), since_us)
        end = min(to_us(row["finished_at"]) if row["finished_at"] is not None else now_us,
                  now_us)
        if end <= start:
            continue
        cores, gpus = _resources(row)
        key = (row["owner"] if by == "user" else row["node"]) or "-"
        entry = totals.setdefault(key, [0, 0, 0, 0])
        entry[0] += 1
        entry[1] += row["state"] in FINAL_FAILED
        entry[2] += cores * (end - start)
        entry[3] += gpus * (end - start)
    for key, *sums in rolled:
        entry = totals.setdefault(key or "-", [0, 0, 0, 0])
        for index, value in enumerate(sums):
            entry[index] += value
    ordered = sorted((item for item in totals.items() if item[1][0] > 0),
                     key=lambda item: (-item[1][2], item[0]))
    return [{by: key, "tasks": tasks, "failed": failed,
             "core_hours": round(core_us / HOUR_US, 6), "gpu_hours": round(gpu_us / HOUR_US, 6)}
            for key, (tasks, failed, core_us, gpu_us) in ordered]
