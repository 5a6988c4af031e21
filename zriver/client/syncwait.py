"""``zriver submit --wait`` of one container task: while the task waits for its env to reach
its node, the sync's progress line on stderr (what ``env sync`` draws for that node).

Only on a terminal (``progress.is_terminal``) and for a submit of one task: otherwise the wait
is ``Client.wait`` as before, and piped output stays byte for byte the same. While the task is
a docker task ``assigned`` to a node, the wait asks the host every ``POLL`` seconds
(``task.wait`` with that timeout, ``task.get``, ``env.sync`` with ``start`` false for that
node), every ``PENDING_POLL`` while it is queued; once it runs (or ends, or is no docker task,
or the host cannot say) it goes back to the plain wait.
"""

from __future__ import annotations

from typing import Any, TextIO

from zriver.client.progress import Progress, bar_phase, is_terminal
from zriver.errors import ZriverError

POLL = 0.5
"""Seconds between two looks at where the task and its env stand, once it is placed."""
PENDING_POLL = 5.0
"""... and while it waits in the queue (a queue can be long: a wait is two calls a look)."""
ASSIGNED = "assigned"
PENDING = object()
"""What ``_sync_line`` says while the task is queued."""


def wait_showing_sync(client: Any, ids: list[int], err: TextIO) -> list[dict[str, Any]]:
    """``client.wait(ids)``, drawing the env sync of a lone docker task meanwhile."""
    if len(ids) != 1 or not is_terminal(err):
        return client.wait(ids)
    poll = 0.0  # the first look at once: a task that is not a docker one needs no more
    with Progress(err) as progress:
        while True:
            reply = client.call("task.wait", {"ids": ids, "timeout": poll}, timeout=poll + 10)
            if reply["done"]:
                return reply["tasks"]
            line = _sync_line(client, ids[0])
            if line is None:
                break
            if line is PENDING:
                poll = PENDING_POLL
            else:
                poll = POLL
                if line:
                    progress.update(*line)
    return client.wait(ids)


def _sync_line(client: Any, task_id: int) -> tuple | object | None:
    """``(phase, done, total)`` of the task's env sync on its node; ``PENDING`` while it is
    queued; ``()`` when there is nothing to draw now (its node has the env, or says nothing
    yet); ``None`` once there is nothing more to watch (it runs, it is not a docker task, the
    host cannot say)."""
    try:
        task = client.call("task.get", {"id": task_id})["task"]
    except ZriverError:
        return None
    if task["backend"] != "docker" or not task.get("container"):
        return None
    if task["state"] == "pending":
        return PENDING
    if task["state"] != ASSIGNED:
        return None
    try:
        reply = client.call("env.sync", {"name": task["container"],
                                         "version": task.get("env_version"),
                                         "nodes": [task["node"]], "start": False})
    except ZriverError:
        return None
    state = reply["nodes"].get(task["node"]) or {}
    if state.get("state") != "syncing":
        return ()
    phase = bar_phase(state.get("phase") or "syncing", state.get("total"))
    return (f"env {reply['name']} {reply['version']} on {task['node']}: {phase}",
            state.get("done"), state.get("total"))
