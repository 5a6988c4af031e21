"""Task transitions as the core carries them out: records, scheduler, events, runner commands.

Every function here is pure: it changes the core's model and appends effects (``Write``,
``Command``, ``TaskEvent``, timers) to ``core.out``; the adapter writes, commits and sends.
``move`` is the single place a task changes state: it refuses illegal transitions (so
duplicates and stale updates are harmless), records the event, keeps the scheduler's books,
releases or fails dependants, retries, and wakes waiters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zriver import lifecycle as lc
from zriver.host.effects import ArmTimer, CancelTimer, TaskEvent
from zriver.host.model import allocation_to_wire
from zriver.host.scheduler import OFFLINE, UNREACHABLE, Placement
from zriver.sizes import format_duration
from zriver.spec import VPS

if TYPE_CHECKING:
    from zriver.host.core import HostCore
    from zriver.host.model import LiveTask, NodeRecord


def move(core: "HostCore", task: "LiveTask", state: str, *, at: float | None = None,
         detail: str = "", exit_code: int | None = None,
         also: dict[str, Any] | None = None) -> bool:
    """Apply ``task -> state`` if legal (``also``: more columns for the same UPDATE); return
    whether anything changed."""
    if not lc.can_move(task.state, state):
        return False
    at = core.now.wall if at is None else at
    if state in lc.RETRYABLE and task.state in lc.ACTIVE and task.attempt <= task.spec.retries:
        retry(core, task, state, at, detail)
        return True
    fields: dict[str, Any] = {"state": state, "detail": detail, **(also or {})}
    if state == lc.RUNNING and task.state == lc.ASSIGNED:
        fields["started_at"] = task.started_at = at
        core.scheduler.started(task.id, at)
        arm_time_limit(core, task)
    if lc.is_final(state):
        fields.update(finished_at=at, exit_code=exit_code)
    core.rows.update_task(task.id, **fields)
    core.rows.add_event(task.id, state, at, detail)
    core.tasks.set_state(task, state)
    if lc.is_final(state):
        _finish(core, task, state, exit_code)
    publish_task(core, task, state, detail, exit_code)
    return True


def _finish(core: "HostCore", task: "LiveTask", state: str, exit_code: int | None) -> None:
    core.scheduler.release(task.id)
    core.deps.forget(task.id)
    _cancel_time_limit(core, task)
    del core.tasks[task.id]
    core.remember_end(task.id, task.node, state, exit_code)
    core.needs_schedule = True
    core.waiters.wake(task.id)
    ready, failed = core.deps.ended(task.id, state)
    for waiter_id in ready:
        waiter = core.tasks.get(waiter_id)
        if waiter is not None:
            core.scheduler.submit(waiter.request())
    for waiter_id, reason in failed:
        waiter = core.tasks.get(waiter_id)
        if waiter is not None:
            move(core, waiter, lc.FAILED, detail=reason)


def publish_task(core: "HostCore", task: "LiveTask", state: str, detail: str, exit_code) -> None:
    """``evt.task.<id>``: state changes, submission included (clients keep views live).

    One event per task per tick: when a task passes several states in one tick (submitted and
    assigned; running and completed), the adapter sends the last one, with ``passed`` listing
    the ones before it."""
    core.out.append(TaskEvent(task.id, {
        "id": task.id, "state": state, "node": task.node, "exit_code": exit_code,
        "detail": detail, "name": task.spec.name, "attempt": task.attempt, "passed": [],
        "owner": task.spec.owner, "seq": core.next_event_seq()}))


def retry(core: "HostCore", task: "LiveTask", failure: str, at: float, detail: str) -> None:
    """A failed attempt with retries left: record it, then queue the next attempt."""
    core.rows.add_event(task.id, failure, at, f"attempt {task.attempt}: {detail}")
    core.scheduler.release(task.id)
    _cancel_time_limit(core, task)
    task.attempt += 1
    core.tasks.place(task, None)
    task.alloc, task.started_at, task.timing_out = None, None, False
    reason = f"retry {task.attempt - 1} of {task.spec.retries} after {failure}"
    core.rows.update_task(task.id, state=lc.PENDING, node=None, alloc=None, started_at=None,
                          attempt=task.attempt, detail=reason)
    core.rows.add_event(task.id, lc.PENDING, at, reason)
    core.tasks.set_state(task, lc.PENDING)
    core.scheduler.submit(task.request())
    core.needs_schedule = True
    publish_task(core, task, lc.PENDING, reason, None)


def ended_dependencies(core: "HostCore", deps: list[int]) -> dict[int, str]:
    """The final ones among ``deps``, with their states.

    A dependency that is no longer stored was pruned (``zriver.host.retention``; a submit
    refuses unknown ones): it ended long ago, and ended well for its dependants, which would
    have failed with it otherwise, so it counts as ``completed``."""
    states = core.records.task_states(deps) if deps else {}
    return {tid: states.get(tid, lc.COMPLETED) for tid in deps
            if lc.is_final(states.get(tid, lc.COMPLETED))}


def enqueue(core: "HostCore", task: "LiveTask", ended: dict[int, str] | None = None) -> None:
    """A pending task enters the queue, or waits for its dependencies, or fails on them.
    ``ended``: its dependencies that are final, with their states (``ended_dependencies``,
    read here when not given; a sweep reads them once for all its tasks)."""
    deps = task.spec.after + task.spec.after_any
    if not deps:
        core.scheduler.submit(task.request())
        core.needs_schedule = True
        return
    if ended is None:
        ended = ended_dependencies(core, deps)
    verdict = core.deps.add(task.id, task.spec.after, task.spec.after_any, ended)
    if verdict.failed:
        move(core, task, lc.FAILED, detail=verdict.failed)
    elif verdict.ready:
        core.scheduler.submit(task.request())
    core.needs_schedule = True


def place(core: "HostCore", placement: Placement) -> None:
    """Record a scheduler placement and send the start command to the runner."""
    task = core.tasks[placement.task_id]
    alloc = placement.allocation
    core.tasks.place(task, alloc.node)
    task.alloc = alloc
    gpus = f", GPUs {','.join(map(str, alloc.gpus))}" if alloc.gpus else ""
    wire = allocation_to_wire(alloc)
    detail = f"on {alloc.node}{gpus}"
    if placement.behind is not None:
        wire["behind"] = placement.behind
        detail += f", starts when task {placement.behind} ends"
    move(core, task, lc.ASSIGNED, detail=detail, also={"node": alloc.node, "alloc": wire})
    core.command(alloc.node, "task.start", start_body(core, task))


def start_body(core: "HostCore", task: "LiveTask") -> dict[str, Any]:
    """``task.start``: with ``behind`` when the task is staged behind another (the runner
    starts it when that one ends, or at once when it has already ended there)."""
    body = {"id": task.id, "attempt": task.attempt, "spec": task.spec_wire(),
            "alloc": allocation_to_wire(task.alloc)}
    behind = core.scheduler.behind(task.id)
    if behind is not None:
        body["behind"] = behind
    return body


def apply_update(core: "HostCore", node: str, update: dict[str, Any]) -> None:
    """One runner-reported state change (idempotent; unknown or stale ones are ignored)."""
    task = core.tasks.get(update.get("id"))
    if task is None or task.node != node or update.get("attempt", 1) != task.attempt:
        return  # already final (a resend), another attempt's, or not this runner's task
    state, detail = update.get("state"), update.get("detail", "")
    if state == lc.PENDING:  # the runner never started it, or revoked a start we never saw
        if task.state != lc.PENDING:
            requeue(core, task, f"back to the queue: {detail or 'not started on ' + node}")
        return
    if task.timing_out and state == lc.KILLED:
        state, detail = lc.TIMEOUT, f"time limit of {format_duration(task.spec.time_limit)} reached"
    move(core, task, state, at=update.get("at"), detail=detail,
         exit_code=update.get("exit_code"))


def _limit_key(task: "LiveTask") -> tuple:
    return ("limit", task.id, task.attempt)


def arm_time_limit(core: "HostCore", task: "LiveTask", delay: float | None = None) -> None:
    """Kill ``task`` when its time limit (counted from its start) is reached."""
    if task.spec.time_limit is None or task.started_at is None or task.state not in lc.ACTIVE:
        return
    if delay is None:
        delay = max(0.0, task.started_at + task.spec.time_limit - core.now.wall)
    core.out.append(ArmTimer(_limit_key(task), delay))


def _cancel_time_limit(core: "HostCore", task: "LiveTask") -> None:
    if task.spec.time_limit is not None and task.started_at is not None:
        core.out.append(CancelTimer(_limit_key(task)))


def time_limit_reached(core: "HostCore", task_id: int, attempt: int) -> None:
    """The ``("limit", id, attempt)`` timer fired."""
    task = core.tasks.get(task_id)
    if task is None or task.attempt != attempt or task.state not in lc.ACTIVE:
        return
    node = core.nodes.get(task.node)
    if node is not None and node.state == UNREACHABLE:
        # It may run on, cut off: killing it waits until its node is back (or given up).
        arm_time_limit(core, task, core.settings.heartbeat_interval)
        return
    task.timing_out = True
    if node is None or node.state == OFFLINE:
        move(core, task, lc.TIMEOUT, detail="time limit reached while its node was offline")
    else:
        signal(core, task, "kill")


def tasks_on(core: "HostCore", name: str) -> list["LiveTask"]:
    """The live tasks placed on node ``name`` (from the table's node index)."""
    return core.tasks.on(name)


def node_unreachable(core: "HostCore", node: "NodeRecord", reason: str) -> None:
    """A node fell silent: nothing new goes there, and what runs there shows ``unreachable``
    (not final: it may well run on, and reconciles when the node is back)."""
    if node.state == UNREACHABLE:
        return
    core.set_node_state(node, UNREACHABLE, reason)
    node.unstarted_requeued = False
    for task in tasks_on(core, node.name):
        if task.state in (lc.RUNNING, lc.PAUSED):
            move(core, task, lc.UNREACHABLE, detail=f"node {node.name} unreachable: {reason}")


def requeue_unstarted(core: "HostCore", node: "NodeRecord") -> None:
    """The node's lease has surely run out, so it starts nothing more: its assigned and
    staged tasks that never reported a start go back to the queue (a start it made but that
    we never heard of was killed by its keeper when the lease ran out)."""
    node.unstarted_requeued = True
    for task in tasks_on(core, node.name):
        if task.state == lc.ASSIGNED:
            requeue(core, task, f"node {node.name} unreachable before it started this task")


def node_given_up(core: "HostCore", node: "NodeRecord", reason: str) -> None:
    """Past the grace: the node is offline and its tasks are ``lost`` (its runner has ended
    them by itself by now: self-fencing), so their retries may run elsewhere. A VPS is the
    exception: its runner keeps it, and it stays ``unreachable`` until its node is back."""
    node.given_up = True
    core.set_node_state(node, OFFLINE, reason)
    for task in tasks_on(core, node.name):
        if task.state == lc.ASSIGNED:
            requeue(core, task, f"node {node.name} offline before it started this task")
        elif task.spec.kind == VPS:
            pass  # a VPS waits for its node however long it takes: never lost, never moved
        elif task.state in lc.ACTIVE:
            move(core, task, lc.LOST, detail=f"node {node.name} lost: {reason}")


def runner_unreachable(core: "HostCore", name: str, commands: list[dict[str, Any]]) -> None:
    """Commands could not be delivered (the runner is not connected): the node is
    unreachable, and a start among them goes back to the queue at once (it never left)."""
    node = core.nodes.get(name)
    if node is not None and node.state not in (OFFLINE, UNREACHABLE):
        node_unreachable(core, node, "not connected")
    for command in commands:
        if command.get("op") == "task.start":
            task = core.tasks.get((command.get("body") or {}).get("id"))
            if task is not None and task.state == lc.ASSIGNED:
                requeue(core, task, f"node {name} unreachable")


def requeue(core: "HostCore", task: "LiveTask", reason: str) -> None:
    """Back to the queue, same attempt: the task never ran (or its run was revoked)."""
    core.scheduler.release(task.id)
    _cancel_time_limit(core, task)
    task.started_at = None
    core.tasks.place(task, None)
    task.alloc = None
    core.rows.update_task(task.id, node=None, alloc=None, started_at=None)
    move(core, task, lc.PENDING, detail=reason)
    core.scheduler.submit(task.request())
    core.needs_schedule = True


def signal(core: "HostCore", task: "LiveTask", action: str) -> None:
    """Forward kill/pause/resume of a placed task to its runner."""
    core.command(task.node, "task.signal", {"id": task.id, "action": action})
