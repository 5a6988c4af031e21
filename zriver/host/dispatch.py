"""Task transitions as the host carries them out: store, scheduler, events, runner commands.

Every function here runs inside the host's tick (an open transaction); what it sends is queued
and leaves after the commit. ``move`` is the single place a task changes state: it refuses
illegal transitions (so duplicates and stale updates are harmless), records the event, keeps
the scheduler's books and wakes waiters.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import msgpack
import structlog

from zriver.host import lifecycle as lc
from zriver.host.scheduler import OFFLINE, Placement

if TYPE_CHECKING:
    from zriver.host.service import Host, LiveTask, NodeRecord

log = structlog.get_logger("zriver.host")


def move(host: "Host", task: "LiveTask", state: str, *, at: float | None = None,
         detail: str = "", exit_code: int | None = None) -> bool:
    """Apply ``task -> state`` if legal; return whether anything changed."""
    if not lc.can_move(task.state, state):
        return False
    at = time.time() if at is None else at
    fields: dict[str, Any] = {"state": state, "detail": detail}
    if state == lc.RUNNING and task.state == lc.ASSIGNED:
        fields["started_at"] = at
    if state == lc.PENDING:
        fields.update(node=None, alloc=None)
    if lc.is_final(state):
        fields.update(finished_at=at, exit_code=exit_code)
    host.begin()
    host.store.update_task(task.id, **fields)
    host.store.add_event(task.id, state, at, detail)
    task.state = state
    if lc.is_final(state):
        host.scheduler.release(task.id)
        del host.tasks[task.id]
        host.request_schedule()
        from zriver.host.waiting import wake

        wake(host, task.id)
    host.publish(f"evt.task.{task.id}", "task.state",
                 {"id": task.id, "state": state, "node": task.node, "exit_code": exit_code,
                  "detail": detail, "name": task.spec.name})
    return True


def place(host: "Host", placement: Placement) -> None:
    """Record a scheduler placement and send the start command to the runner."""
    task = host.tasks[placement.task_id]
    alloc = placement.allocation
    task.node, task.alloc = alloc.node, alloc
    alloc_wire = {"node": alloc.node, "cores": list(alloc.cores), "memory": alloc.memory}
    host.store.update_task(task.id, node=alloc.node, alloc=alloc_wire)
    move(host, task, lc.ASSIGNED, detail=f"on {alloc.node}")
    host.command(alloc.node, "task.start", start_body(task))


def start_body(task: "LiveTask") -> dict[str, Any]:
    return {"id": task.id, "spec": task.spec.to_wire(),
            "alloc": {"node": task.alloc.node, "cores": list(task.alloc.cores),
                      "memory": task.alloc.memory}}


def apply_update(host: "Host", node: str, update: dict[str, Any]) -> None:
    """One runner-reported state change (idempotent; unknown or stale ones are ignored)."""
    task = host.tasks.get(update.get("id"))
    if task is None or task.node != node:
        return  # already final (a resend), or not this runner's task any more
    move(host, task, update.get("state"), at=update.get("at"), detail=update.get("detail", ""),
         exit_code=update.get("exit_code"))


def node_lost(host: "Host", node: "NodeRecord", reason: str) -> None:
    """A node stopped answering: mark it offline and its active tasks lost."""
    if node.state != OFFLINE:
        host.set_node_state(node, OFFLINE, reason)
    for task in [t for t in host.tasks.values() if t.node == node.name]:
        if task.state in lc.ACTIVE:
            move(host, task, lc.LOST, detail=f"node {node.name} lost: {reason}")


def runner_unreachable(host: "Host", name: str, frames: list[bytes]) -> None:
    """A command could not be delivered: a start goes back to the queue, the node offline."""
    try:
        env = msgpack.unpackb(frames[1], raw=False)
    except Exception:
        return
    node = host.nodes.get(name)
    if node is not None and node.state != OFFLINE:
        host.set_node_state(node, OFFLINE, "not connected")
    if env.get("op") == "task.start":
        task = host.tasks.get(env["body"]["id"])
        if task is not None and task.state == lc.ASSIGNED:
            requeue(host, task, f"node {name} unreachable")
    host.flush()


def requeue(host: "Host", task: "LiveTask", reason: str) -> None:
    host.scheduler.release(task.id)
    task.node, task.alloc = None, None
    move(host, task, lc.PENDING, detail=reason)
    host.scheduler.submit(task.request())
    host.request_schedule()


def signal(host: "Host", task: "LiveTask", action: str) -> None:
    """Forward kill/pause/resume of a placed task to its runner."""
    host.command(task.node, "task.signal", {"id": task.id, "action": action})
