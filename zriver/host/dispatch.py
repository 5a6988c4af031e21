"""Task transitions as the host carries them out: store, scheduler, events, runner commands.

Every function here runs inside the host's tick (an open transaction); what it sends is queued
and leaves after the commit. ``move`` is the single place a task changes state: it refuses
illegal transitions (so duplicates and stale updates are harmless), records the event, keeps
the scheduler's books, releases or fails dependants, retries, and wakes waiters.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import msgpack
import structlog

from zriver import lifecycle as lc
from zriver.host.scheduler import OFFLINE, UNREACHABLE, Placement
from zriver.sizes import format_duration

if TYPE_CHECKING:
    from zriver.host.service import Host, LiveTask, NodeRecord

log = structlog.get_logger("zriver.host")


def move(host: "Host", task: "LiveTask", state: str, *, at: float | None = None,
         detail: str = "", exit_code: int | None = None,
         also: dict[str, Any] | None = None) -> bool:
    """Apply ``task -> state`` if legal (``also``: more columns for the same UPDATE); return
    whether anything changed."""
    if not lc.can_move(task.state, state):
        return False
    at = time.time() if at is None else at
    if state in lc.RETRYABLE and task.state in lc.ACTIVE and task.attempt <= task.spec.retries:
        retry(host, task, state, at, detail)
        return True
    fields: dict[str, Any] = {"state": state, "detail": detail, **(also or {})}
    if state == lc.RUNNING and task.state == lc.ASSIGNED:
        fields["started_at"] = task.started_at = at
        host.scheduler.started(task.id, at)
        arm_time_limit(host, task)
    if lc.is_final(state):
        fields.update(finished_at=at, exit_code=exit_code)
    host.begin()
    host.store.update_task(task.id, **fields)
    host.store.add_event(task.id, state, at, detail)
    task.state = state
    if lc.is_final(state):
        _finish(host, task, state)
    publish_task(host, task, state, detail, exit_code)
    return True


def _finish(host: "Host", task: "LiveTask", state: str) -> None:
    host.scheduler.release(task.id)
    host.deps.forget(task.id)
    if task.limit_timer is not None:
        task.limit_timer.cancel()
    del host.tasks[task.id]
    host.request_schedule()
    from zriver.host.waiting import wake

    wake(host, task.id)
    ready, failed = host.deps.ended(task.id, state)
    for waiter_id in ready:
        waiter = host.tasks.get(waiter_id)
        if waiter is not None:
            host.scheduler.submit(waiter.request())
    for waiter_id, reason in failed:
        waiter = host.tasks.get(waiter_id)
        if waiter is not None:
            move(host, waiter, lc.FAILED, detail=reason)


def publish_task(host: "Host", task: "LiveTask", state: str, detail: str, exit_code) -> None:
    """``evt.task.<id>``: state changes, submission included (clients keep views live).

    One event per task per tick: when a task passes several states in one tick (submitted and
    assigned; running and completed), the event carries the last one and ``passed`` lists the
    ones before it."""
    host.publish_task_event(task.id, {
        "id": task.id, "state": state, "node": task.node, "exit_code": exit_code,
        "detail": detail, "name": task.spec.name, "attempt": task.attempt, "passed": []})


def retry(host: "Host", task: "LiveTask", failure: str, at: float, detail: str) -> None:
    """A failed attempt with retries left: record it, then queue the next attempt."""
    host.begin()
    host.store.add_event(task.id, failure, at, f"attempt {task.attempt}: {detail}")
    host.scheduler.release(task.id)
    if task.limit_timer is not None:
        task.limit_timer.cancel()
    task.attempt += 1
    task.node, task.alloc, task.started_at, task.timing_out = None, None, None, False
    reason = f"retry {task.attempt - 1} of {task.spec.retries} after {failure}"
    host.store.update_task(task.id, state=lc.PENDING, node=None, alloc=None, started_at=None,
                           attempt=task.attempt, detail=reason)
    host.store.add_event(task.id, lc.PENDING, at, reason)
    task.state = lc.PENDING
    host.scheduler.submit(task.request())
    host.request_schedule()
    publish_task(host, task, lc.PENDING, reason, None)


def enqueue(host: "Host", task: "LiveTask") -> None:
    """A pending task enters the queue, or waits for its dependencies, or fails on them."""
    deps = task.spec.after + task.spec.after_any
    ended = {tid: state for tid, state in host.store.task_states(deps).items()
             if lc.is_final(state)}
    verdict = host.deps.add(task.id, task.spec.after, task.spec.after_any, ended)
    if verdict.failed:
        move(host, task, lc.FAILED, detail=verdict.failed)
    elif verdict.ready:
        host.scheduler.submit(task.request())
    host.request_schedule()


def place(host: "Host", placement: Placement) -> None:
    """Record a scheduler placement and send the start command to the runner."""
    from zriver.host.service import allocation_to_wire

    task = host.tasks[placement.task_id]
    alloc = placement.allocation
    task.node, task.alloc = alloc.node, alloc
    gpus = f", GPUs {','.join(map(str, alloc.gpus))}" if alloc.gpus else ""
    wire = allocation_to_wire(alloc)
    detail = f"on {alloc.node}{gpus}"
    if placement.behind is not None:
        wire["behind"] = placement.behind
        detail += f", starts when task {placement.behind} ends"
    move(host, task, lc.ASSIGNED, detail=detail, also={"node": alloc.node, "alloc": wire})
    host.command(alloc.node, "task.start", start_body(host, task))


def start_body(host: "Host", task: "LiveTask") -> dict[str, Any]:
    """``task.start``: with ``behind`` when the task is staged behind another (the runner
    starts it when that one ends, or at once when it has already ended there)."""
    from zriver.host.service import allocation_to_wire

    body = {"id": task.id, "attempt": task.attempt, "spec": task.wire or task.spec.to_wire(),
            "alloc": allocation_to_wire(task.alloc)}
    behind = host.scheduler.behind(task.id)
    if behind is not None:
        body["behind"] = behind
    return body


def apply_update(host: "Host", node: str, update: dict[str, Any]) -> None:
    """One runner-reported state change (idempotent; unknown or stale ones are ignored)."""
    task = host.tasks.get(update.get("id"))
    if task is None or task.node != node or update.get("attempt", 1) != task.attempt:
        return  # already final (a resend), another attempt's, or not this runner's task
    state, detail = update.get("state"), update.get("detail", "")
    if state == lc.PENDING:  # the runner never started it, or revoked a start we never saw
        if task.state != lc.PENDING:
            requeue(host, task, f"back to the queue: {detail or 'not started on ' + node}")
        return
    if task.timing_out and state == lc.KILLED:
        state, detail = lc.TIMEOUT, f"time limit of {format_duration(task.spec.time_limit)} reached"
    move(host, task, state, at=update.get("at"), detail=detail,
         exit_code=update.get("exit_code"))


def arm_time_limit(host: "Host", task: "LiveTask") -> None:
    """Kill ``task`` when its time limit (counted from its start) is reached."""
    if task.spec.time_limit is None or task.started_at is None or task.state not in lc.ACTIVE:
        return
    delay = max(0.0, task.started_at + task.spec.time_limit - time.time())
    attempt = task.attempt
    task.limit_timer = asyncio.get_running_loop().call_later(
        delay, _time_limit_reached, host, task.id, attempt)


def _time_limit_reached(host: "Host", task_id: int, attempt: int) -> None:
    task = host.tasks.get(task_id)
    if task is None or task.attempt != attempt or task.state not in lc.ACTIVE:
        return
    node = host.nodes.get(task.node)
    if node is not None and node.state == UNREACHABLE:
        # It may run on, cut off: killing it waits until its node is back (or given up).
        task.limit_timer = asyncio.get_running_loop().call_later(
            host.settings.heartbeat_interval, _time_limit_reached, host, task_id, attempt)
        return
    task.timing_out = True
    host.begin()
    if node is None or node.state == OFFLINE:
        move(host, task, lc.TIMEOUT, detail="time limit reached while its node was offline")
    else:
        signal(host, task, "kill")
    host.schedule_flush()


def tasks_on(host: "Host", name: str) -> list["LiveTask"]:
    return [t for t in host.tasks.values() if t.node == name]


def node_unreachable(host: "Host", node: "NodeRecord", reason: str) -> None:
    """A node fell silent: nothing new goes there, and what runs there shows ``unreachable``
    (not final: it may well run on, and reconciles when the node is back)."""
    if node.state == UNREACHABLE:
        return
    host.set_node_state(node, UNREACHABLE, reason)
    node.unstarted_requeued = False
    for task in tasks_on(host, node.name):
        if task.state in (lc.RUNNING, lc.PAUSED):
            move(host, task, lc.UNREACHABLE, detail=f"node {node.name} unreachable: {reason}")


def requeue_unstarted(host: "Host", node: "NodeRecord") -> None:
    """The node's lease has surely run out, so it starts nothing more: its assigned and
    staged tasks that never reported a start go back to the queue (a start it made but that
    we never heard of was killed by its keeper when the lease ran out)."""
    node.unstarted_requeued = True
    for task in tasks_on(host, node.name):
        if task.state == lc.ASSIGNED:
            requeue(host, task, f"node {node.name} unreachable before it started this task")


def node_given_up(host: "Host", node: "NodeRecord", reason: str) -> None:
    """Past the grace: the node is offline and its tasks are ``lost`` (its runner has ended
    them by itself by now: self-fencing), so their retries may run elsewhere."""
    node.given_up = True
    host.set_node_state(node, OFFLINE, reason)
    for task in tasks_on(host, node.name):
        if task.state == lc.ASSIGNED:
            requeue(host, task, f"node {node.name} offline before it started this task")
        elif task.state in lc.ACTIVE:
            move(host, task, lc.LOST, detail=f"node {node.name} lost: {reason}")


def runner_unreachable(host: "Host", name: str, frames: list[bytes]) -> None:
    """A command could not be delivered (the runner is not connected): the node is
    unreachable, and a start in it goes back to the queue at once (it never left)."""
    try:
        env = msgpack.unpackb(frames[1], raw=False)
    except Exception:
        return
    node = host.nodes.get(name)
    if node is not None and node.state not in (OFFLINE, UNREACHABLE):
        host.begin()
        node_unreachable(host, node, "not connected")
    body = env.get("body") or {}
    commands = body.get("commands") or [env]  # runner.batch, an ack carrying commands, or one
    for command in commands:
        if command.get("op") == "task.start":
            task = host.tasks.get(command["body"]["id"])
            if task is not None and task.state == lc.ASSIGNED:
                requeue(host, task, f"node {name} unreachable")
    host.schedule_flush()  # the next tick: this runs inside ``flush``, while it sends


def requeue(host: "Host", task: "LiveTask", reason: str) -> None:
    """Back to the queue, same attempt: the task never ran (or its run was revoked)."""
    host.begin()
    host.scheduler.release(task.id)
    if task.limit_timer is not None:
        task.limit_timer.cancel()
    task.started_at = None
    task.node, task.alloc = None, None
    host.store.update_task(task.id, node=None, alloc=None, started_at=None)
    move(host, task, lc.PENDING, detail=reason)
    host.scheduler.submit(task.request())
    host.request_schedule()


def signal(host: "Host", task: "LiveTask", action: str) -> None:
    """Forward kill/pause/resume of a placed task to its runner."""
    host.command(task.node, "task.signal", {"id": task.id, "action": action})
