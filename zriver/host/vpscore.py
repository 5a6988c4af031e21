"""The VPS ops that change tasks, and the idle rule (pure: no I/O, no clock but ``core.now``).

Registered by the ``Vps`` extension (``zriver.host.vps``) as ``core`` ops, so they run inside
the core like ``task.kill``: their writes and commands are effects.

* ``vps.stop {id, reason?}``: end a VPS (``killed``, its history says why: "stopped on
  request" or the idle reason); its runner stops and removes the container.
* ``vps.restart {id}``: ``docker restart`` on its node (same container, same disk); only a
  ``running`` VPS.
* ``vps.restarted {id}`` (runners): the restart happened; recorded in its history.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zriver import lifecycle as lc
from zriver.errors import Conflict, InvalidArgument, NotFound
from zriver.host.dispatch import move, signal
from zriver.host.effects import Request
from zriver.host.handlers import check_owner
from zriver.host.scheduler import ONLINE
from zriver.protocol import arg
from zriver.spec import VPS

if TYPE_CHECKING:
    from zriver.host.core import HostCore
    from zriver.host.model import LiveTask

IDLE_CPU_PERCENT = 5.0
"""Under this much CPU (percent of one core) a VPS with no stream counts as idle."""


def own_vps(core: "HostCore", request: Request, task_id: int, verb: str) -> "LiveTask":
    """The live VPS ``task_id`` that ``request``'s principal may act on, else a clear error."""
    task = core.tasks.get(task_id)
    if task is None:
        row = core.records.get_task(task_id)
        if row is None:
            raise NotFound(f"no task {task_id}")
        check_owner(request.principal, row["owner"], task_id, verb)
        raise Conflict(f"VPS {task_id} has already ended ({row['state']}); it cannot {verb}")
    check_owner(request.principal, task.spec.owner, task_id, verb)
    if task.spec.kind != VPS:
        raise InvalidArgument(f"task {task_id} is not a VPS (use `zriver kill {task_id}`)")
    return task


def stop(core: "HostCore", request: Request, body: dict) -> dict:
    task = own_vps(core, request, arg(body, "id", int), "stop")
    reason = arg(body, "reason", str, "") or "stopped on request"
    if task.state == lc.PENDING:
        move(core, task, lc.KILLED, detail=reason)
        return {"id": task.id, "state": task.state}
    core.rows.add_event(task.id, task.state, core.now.wall, f"stopping: {reason}")
    node = core.nodes.get(task.node)
    if node is None or node.state != ONLINE:
        move(core, task, lc.KILLED, detail=f"{reason}; node {task.node} is not online")
    else:
        signal(core, task, "kill")
    return {"id": task.id, "state": task.state}


def restart(core: "HostCore", request: Request, body: dict) -> dict:
    task = own_vps(core, request, arg(body, "id", int), "restart")
    if task.state != lc.RUNNING:
        raise Conflict(f"VPS {task.id} is {task.state}; only a running VPS can be restarted")
    core.rows.add_event(task.id, task.state, core.now.wall, "restart requested")
    signal(core, task, "restart")
    return {"id": task.id, "state": task.state}


def restarted(core: "HostCore", request: Request, body: dict) -> dict:
    task = core.tasks.get(arg(body, "id", int))
    if task is not None and task.node == request.principal.name:
        core.rows.add_event(task.id, task.state, core.now.wall,
                            "restarted (same container, same disk)")
    return {}


def idle_since(previous: float | None, streams: int, cpu_percent: float | None,
               last_activity: float, now: float) -> float | None:
    """When a VPS became idle (``None``: it is busy now).

    Idle = no stream open and under ``IDLE_CPU_PERCENT`` CPU (an unmeasured CPU counts as
    idle: the sessions decide). Idleness starts no earlier than the last stream's end."""
    if streams > 0 or (cpu_percent is not None and cpu_percent >= IDLE_CPU_PERCENT):
        return None
    start = now if previous is None else previous
    return max(start, last_activity)
