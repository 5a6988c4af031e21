"""Usage accounting (pure): who held how many cores and GPUs for how long.

A task counts from ``started_at`` to ``finished_at`` (or ``now`` while it runs), clipped to the
window ``[since, now]``. Core-hours are cores allocated x hours held; GPU-hours likewise. The
owner is whoever submitted the task (from config/env today; the authenticated identity once
authentication exists).
"""

from __future__ import annotations

from typing import Any

FINAL_FAILED = {"failed", "killed_oom", "lost", "timeout"}


def usage_report(rows: list[dict[str, Any]], since: float, now: float, by: str) -> list[dict]:
    """One row per owner (``by="user"``) or node (``by="node"``), busiest first."""
    totals: dict[str, dict[str, Any]] = {}
    for row in rows:
        start = max(row["started_at"], since)
        end = min(row["finished_at"] or now, now)
        if end <= start:
            continue
        hours = (end - start) / 3600.0
        key = (row["owner"] if by == "user" else row["node"]) or "-"
        entry = totals.setdefault(key, {by: key, "tasks": 0, "failed": 0, "core_hours": 0.0,
                                        "gpu_hours": 0.0})
        entry["tasks"] += 1
        entry["failed"] += row["state"] in FINAL_FAILED
        entry["core_hours"] += row["spec"]["cores"] * hours
        entry["gpu_hours"] += len((row["alloc"] or {}).get("gpus") or []) * hours
    ordered = sorted(totals.values(), key=lambda e: (-e["core_hours"], str(e[by])))
    for entry in ordered:
        entry["core_hours"] = round(entry["core_hours"], 6)
        entry["gpu_hours"] = round(entry["gpu_hours"], 6)
    return ordered
