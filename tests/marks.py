"""Tasks that leave marks: each appends its id to a marks file when it starts, so "ran exactly
once" is read from what the tasks themselves wrote (real-process tests of crashes and cuts)."""

from __future__ import annotations

from pathlib import Path

from procs import Cluster


def gated(cluster: Cluster, marks: Path, gate: Path, code: int, **spec) -> int:
    """Appends its id to ``marks``, runs until ``gate`` exists, exits ``code``."""
    script = (f"echo $ZRIVER_TASK_ID >> '{marks}'; "
              f"while [ ! -e '{gate}' ]; do sleep 0.05; done; exit {code}")
    return cluster.submit(["sh", "-c", script], cores=1, **spec)


def quick(cluster: Cluster, marks: Path) -> int:
    """Appends its id to ``marks`` and ends."""
    return cluster.submit(["sh", "-c", f"echo $ZRIVER_TASK_ID >> '{marks}'"], cores=1)


def marks_of(marks: Path) -> list[int]:
    try:
        return [int(line) for line in marks.read_text().split()]
    except FileNotFoundError:
        return []


def running_and_staged(cluster: Cluster, marks: Path, gate: Path, codes: tuple[int, ...],
                       staged_count: int) -> tuple[list[int], list[int]]:
    """Gated tasks exiting ``codes`` running (confirmed by the host), and ``staged_count``
    quick ones staged behind them on the runner."""
    running = [gated(cluster, marks, gate, code) for code in codes]
    for task_id in running:
        cluster.wait_task_state(task_id, "running", timeout=10)
    staged = [quick(cluster, marks) for _ in range(staged_count)]
    for task_id in staged:
        task = cluster.wait_task_state(task_id, "assigned", timeout=10)
        assert "starts when task" in task["detail"], task
    cluster.wait_for(lambda: sorted(marks_of(marks)) == sorted(running), 10,
                     "the gated tasks to start")
    return running, staged
