"""The host's handler table: one small function per op, keyed by op name.

A handler gets ``(host, caller, body)``, validates ``body`` with ``protocol.arg``, and returns
the reply body, ``DEFERRED`` (it answers later), or a coroutine (awaited, then answered). It
raises a ``ZriverError`` for a clear error reply; the service rolls its writes back then.
Handlers of ``runner.*``/``task.update`` only accept runner identities.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from zriver.errors import BadRequest, Conflict, InvalidArgument, NotFound, Unavailable
from zriver import lifecycle as lc
from zriver.host import waiting
from zriver.host.dispatch import (apply_update, enqueue, move, publish_task, signal,
                                  start_body)
from zriver.host.scheduler import DEGRADED, ONLINE
from zriver.host.service import (DEFERRED, Caller, Host, LiveTask, NodeRecord, gpu_change,
                                 node_spec)
from zriver.logfiles import SUFFIX as STREAMS, log_path, read_slice
from zriver.protocol import arg, arg_list
from zriver.spec import AUTO, DOCKER, NATIVE, TaskSpec

MAX_SUBMIT = 100_000
MAX_LOG_READ = 1024 * 1024
MAX_LOG_OFFSET = 1 << 53
MAX_SUBMIT_KEY = 128
SUBMIT_KEY_TTL = 24 * 3600.0
"""Seconds an idempotency key of ``task.submit`` is remembered."""


# ---- clients: tasks ------------------------------------------------------------------------
def hello(host: Host, caller: Caller, body: dict) -> dict:
    return host.hello()


def submit(host: Host, caller: Caller, body: dict) -> dict:
    """Validate every spec first, then insert them all (one batch id when several).

    With an idempotency ``key`` (a string of at most 128 characters), a submit whose key is
    already stored answers the stored ``ids``/``batch_id`` and stores nothing new; the key is
    stored in the same transaction as the tasks."""
    key = _submit_key(body)
    if key is not None:
        host.store.prune_submit_keys(time.time() - SUBMIT_KEY_TTL)
        known = host.store.submitted(key)
        if known is not None:
            return {"ids": known[0], "batch_id": known[1]}
    raw = arg(body, "tasks", list)
    if not raw:
        raise InvalidArgument("submit needs at least one task")
    if len(raw) > MAX_SUBMIT:
        raise InvalidArgument(f"at most {MAX_SUBMIT} tasks in one submit")
    specs = [TaskSpec.from_wire(item) for item in raw]
    deps = sorted({d for spec in specs for d in spec.after + spec.after_any})
    missing = sorted(set(deps) - set(host.store.task_states(deps)))
    if missing:
        raise NotFound(f"no task {', '.join(map(str, missing))} to depend on")
    for spec in specs:
        resolve_backend(host, spec)
        host.scheduler.check_possible(LiveTask(0, spec, lc.PENDING).request())
    now = time.time()
    ids: list[int] = []
    batch_id = None
    for spec in specs:
        wire = spec.to_wire()
        task_id = host.store.insert_task({"name": spec.name, "owner": spec.owner,
                                          "state": lc.PENDING, "spec": wire,
                                          "submitted_at": now, "batch_id": batch_id})
        if len(specs) > 1 and batch_id is None:
            batch_id = task_id
            host.store.update_task(task_id, batch_id=batch_id)
        host.store.add_event(task_id, lc.PENDING, now, "submitted")
        task = LiveTask(task_id, spec, lc.PENDING, batch_id=batch_id, wire=wire)
        host.tasks[task_id] = task
        publish_task(host, task, lc.PENDING, "submitted", None)
        enqueue(host, task)
        ids.append(task_id)
    if key is not None:
        host.store.remember_submit(key, ids, batch_id, now)
    return {"ids": ids, "batch_id": batch_id}


def _submit_key(body: dict) -> str | None:
    key = arg(body, "key", str, None)
    if key is not None and not 1 <= len(key) <= MAX_SUBMIT_KEY:
        raise InvalidArgument(f"an idempotency key is 1 to {MAX_SUBMIT_KEY} characters")
    return key


def resolve_backend(host: Host, spec: TaskSpec) -> None:
    """Decide native or docker for an ``auto`` spec; pin a docker spec's env version."""
    if spec.backend == AUTO:
        spec.backend = DOCKER if host.settings.default_container else NATIVE
        if spec.backend == DOCKER:
            spec.container = host.settings.default_container
        elif spec.mounts or spec.privileged:
            raise InvalidArgument("--mount and --privileged need a container, and this cluster "
                                  "has no default_container")
    if spec.backend == DOCKER:
        from zriver.host import envs

        envs.pin_version(host, spec)


def list_tasks(host: Host, caller: Caller, body: dict) -> dict:
    states = arg_list(body, "states", str, None)
    if states and not set(states) <= set(lc.ALL_STATES):
        raise InvalidArgument(f"unknown state in {states}; states are {', '.join(lc.ALL_STATES)}")
    limit = arg(body, "limit", int, 200)
    rows = host.store.list_tasks(states, max(1, min(limit, 100_000)),
                                 batch=arg(body, "batch", int, None),
                                 owner=arg(body, "owner", str, None))
    return {"tasks": [public_task(host, row) for row in rows]}


def get_task(host: Host, caller: Caller, body: dict) -> dict:
    row = _row(host, arg(body, "id", int))
    return {"task": public_task(host, row), "events": host.store.task_events(row["id"])}


def kill(host: Host, caller: Caller, body: dict) -> dict:
    task = _live(host, arg(body, "id", int), "killed")
    if task.state == lc.PENDING:
        move(host, task, lc.KILLED, detail="killed while pending")
    elif host.nodes.get(task.node) is None or host.nodes[task.node].state != ONLINE:
        move(host, task, lc.KILLED, detail=f"killed; node {task.node} is offline")
    else:
        signal(host, task, "kill")
    return {"id": task.id, "state": task.state}


def pause(host: Host, caller: Caller, body: dict) -> dict:
    return _pause_or_resume(host, arg(body, "id", int), "pause", (lc.RUNNING,))


def resume(host: Host, caller: Caller, body: dict) -> dict:
    return _pause_or_resume(host, arg(body, "id", int), "resume", (lc.PAUSED,))


def _pause_or_resume(host: Host, task_id: int, action: str, allowed: tuple[str, ...]) -> dict:
    task = _live(host, task_id, f"{action}d")
    if task.state not in allowed:
        raise Conflict(f"task {task_id} is {task.state}; only a {' or '.join(allowed)} task "
                       f"can be {action}d")
    signal(host, task, action)
    return {"id": task.id, "state": task.state}


def wait(host: Host, caller: Caller, body: dict) -> Any:
    ids = arg_list(body, "ids", int)
    if not ids:
        raise InvalidArgument("ids must be a non-empty list of task ids")
    known = host.store.task_outcomes([i for i in ids if i not in host.tasks])
    missing = sorted({i for i in ids if i not in host.tasks and i not in known})
    if missing:
        raise NotFound(f"no task {', '.join(map(str, missing))}")
    timeout = float(arg(body, "timeout", (int, float), 30.0))
    if waiting.all_final(host, ids):
        return {"done": True, "tasks": waiting.summaries(host, ids, known)}
    waiting.add(host, caller, ids, max(0.01, min(timeout, 300.0)))
    return DEFERRED


async def logs(host: Host, caller: Caller, body: dict) -> dict:
    """A slice of a task's stdout/stderr from the shared dir or from its runner."""
    row = _row(host, arg(body, "id", int))
    stream = arg(body, "stream", str, "stdout")
    if stream not in STREAMS:
        raise InvalidArgument("stream must be stdout or stderr")
    offset = arg(body, "offset", int, 0)
    limit = min(arg(body, "limit", int, MAX_LOG_READ), MAX_LOG_READ)
    if offset < 0 or limit < 0 or offset > MAX_LOG_OFFSET:
        raise InvalidArgument(f"offset and limit must not be negative, and offset at most "
                              f"{MAX_LOG_OFFSET}")
    final = lc.is_final(row["state"])
    if host.settings.shared_dir:
        path = log_path(Path(host.settings.shared_dir) / "logs", row["id"], stream)
        if os.path.exists(path):
            return read_slice(path, offset, limit) | {"final": final}
    if not row["node"] or row["state"] == lc.PENDING:
        return {"data": b"", "offset": offset, "size": 0, "final": final}
    node = host.nodes.get(row["node"])
    if node is None or node.state != ONLINE:
        raise Unavailable(f"the logs of task {row['id']} are on node {row['node']}, which is offline")
    reply = await host.call_runner(row["node"], "log.read",
                                   {"id": row["id"], "stream": stream, "offset": offset,
                                    "limit": limit})
    return reply | {"final": final}


# ---- clients: nodes ------------------------------------------------------------------------
def list_nodes(host: Host, caller: Caller, body: dict) -> dict:
    return {"nodes": [public_node(host, node) for node in sorted(host.nodes.values(),
                                                                 key=lambda n: n.name)]}


def health(host: Host, caller: Caller, body: dict) -> dict:
    name = arg(body, "name", str, None)
    nodes = [_node(host, name)] if name else sorted(host.nodes.values(), key=lambda n: n.name)
    return {"nodes": [{"name": n.name, "state": n.state, "last_seen": n.last_seen,
                       **n.heartbeat} for n in nodes]}


def drain(host: Host, caller: Caller, body: dict) -> dict:
    """No new tasks on the node; what runs there finishes."""
    return _set_drained(host, arg(body, "name", str), arg(body, "reason", str, "") or "drained")


def undrain(host: Host, caller: Caller, body: dict) -> dict:
    return _set_drained(host, arg(body, "name", str), None)


def _set_drained(host: Host, name: str, reason: str | None) -> dict:
    node = _node(host, name)
    node.drained = reason
    host.scheduler.set_drained(node.name, reason is not None)
    host.store.set_node_drained(node.name, reason)
    host.publish(f"evt.node.{node.name}", "node.state",
                 {"name": node.name, "state": node.state, "drained": reason})
    host.request_schedule()
    return public_node(host, node)


def usage(host: Host, caller: Caller, body: dict) -> dict:
    """Core-hours, GPU-hours and task counts since ``since`` (epoch seconds), grouped."""
    from zriver.host.accounting import usage_report

    by = arg(body, "by", str, "user")
    if by not in ("user", "node"):
        raise InvalidArgument("by must be 'user' or 'node'")
    since = float(arg(body, "since", (int, float), 0.0))
    return {"rows": usage_report(host.store.tasks_since(since), since, time.time(), by),
            "since": since, "by": by}


# ---- runners -------------------------------------------------------------------------------
def register(host: Host, caller: Caller, body: dict) -> dict:
    """A runner (re)joins: record it, reconcile what it runs with what the host believes.

    A second runner claiming the name of a node whose runner is connected is refused
    (``conflict``) and changes nothing."""
    name = _runner_name(caller, body)
    info = _runner_info(arg(body, "info", dict))
    known = _known_tasks(arg(body, "tasks", list, []))
    node = host.nodes.get(name)
    if node is not None and node.identity not in (None, caller.identity) and host.connected(node):
        raise Conflict(f"node {name!r} is already connected from another runner "
                       f"({node.info.get('hostname', '?')}, pid {node.info.get('pid', '?')}); "
                       f"stop that one first, or give this runner another name")
    now = time.time()
    node = node or NodeRecord(name, info)
    node.info, node.registered, node.registered_at = info, True, now
    node.identity, node.given_up = caller.identity, False
    host.touch(node)
    node.heartbeat = arg(body, "usage", dict, node.heartbeat)
    host.nodes[name] = node
    host.scheduler.set_node(name, node_spec(info))
    host.store.save_node(name, info, node.state, now, now)
    stop = [tid for tid, attempt in known.items() if tid not in host.tasks
            or host.tasks[tid].node != name or host.tasks[tid].attempt != attempt[0]]
    for task in [t for t in host.tasks.values() if t.node == name]:
        _reconcile(host, name, task, known.get(task.id))
    changed = gpu_change(info, node.heartbeat)
    node.degraded = changed
    host.set_node_state(node, DEGRADED if changed else ONLINE, changed or "registered")
    return {"heartbeat_interval": host.settings.heartbeat_interval, "stop": stop,
            "lease": host.lease, "grace": host.settings.unreachable_grace,
            "incarnation": host.incarnation, "shared_dir": host.settings.shared_dir}


def _runner_info(info: dict) -> dict:
    """A registration's ``info`` checked field by field (what the scheduler reads)."""
    arg_list(info, "cores", int, max_len=1 << 16)
    arg(info, "memory", int)
    for zone in arg_list(info, "zones", list, [], max_len=1 << 10):
        arg_list({"zone": zone}, "zone", int)
    for gpu in arg_list(info, "gpus", dict, [], max_len=1 << 10):
        arg(gpu, "index", int)
        arg(gpu, "uuid", str, "")
    arg_list(info, "backends", str, [], max_len=16)
    for key in ("hostname", "version"):
        arg(info, key, str, "")
    return info


def _known_tasks(items: list) -> dict[int, tuple[int, str]]:
    """A registration's task list as ``id -> (attempt, state)`` (malformed entries refused).
    An id listed twice (a retry running beside the unacknowledged end of the attempt before
    it) counts with its newest attempt."""
    known: dict[int, tuple[int, str]] = {}
    for item in items:
        if not isinstance(item, dict):
            raise BadRequest("each registered task must be a map")
        task_id, attempt = arg(item, "id", int), arg(item, "attempt", int, 1)
        if task_id not in known or attempt > known[task_id][0]:
            known[task_id] = (attempt, arg(item, "state", str, lc.RUNNING))
    return known


def _reconcile(host: Host, name: str, task: LiveTask, known: tuple[int, str] | None) -> None:
    """One task the host places on ``name``, against what the registering runner has."""
    if known is not None and known[0] == task.attempt:
        if task.state == lc.UNREACHABLE:
            state = lc.PAUSED if known[1] == lc.PAUSED else lc.RUNNING
            move(host, task, state, detail=f"node {name} is back; the task ran on")
        return
    if task.state == lc.ASSIGNED:
        host.command(name, "task.start", start_body(host, task))  # the start never arrived
    elif task.state in lc.ACTIVE:
        move(host, task, lc.LOST, detail=f"runner {name} came back without it")


def ping(host: Host, caller: Caller, body: dict) -> dict:
    """A runner renews its lease (the reply is the point); ``registered`` false asks it to
    register with this host."""
    name = _runner_name(caller, body)
    node = host.nodes.get(name)
    if node is not None and node.identity not in (None, caller.identity):
        raise Conflict(f"this runner is not the registered runner of node {name!r}")
    return {"registered": bool(node is not None and node.registered
                               and node.identity == caller.identity)}


def task_update(host: Host, caller: Caller, body: dict) -> dict:
    name = _runner_name(caller, body)
    node = host.nodes.get(name)
    if node is not None and node.identity not in (None, caller.identity):
        raise Conflict(f"this runner is not the registered runner of node {name!r}; "
                       f"its updates are refused")
    updates = arg(body, "updates", list)
    for update in updates:
        if not isinstance(update, dict) or not isinstance(update.get("id"), int):
            raise BadRequest("each update must be a map with an integer 'id'")
        if update.get("state") not in lc.ALL_STATES:
            raise BadRequest(f"unknown state {update.get('state')!r} in update")
        arg(update, "attempt", int, 1)
        arg(update, "at", (int, float), 0.0)
        arg(update, "exit_code", int, None)
        arg(update, "detail", str, "")
    for update in updates:
        apply_update(host, name, update)
    return {"count": len(updates)}


# ---- helpers -------------------------------------------------------------------------------
def _runner_name(caller: Caller, body: dict) -> str:
    name = caller.node
    if name is None:
        raise BadRequest("only runners may send this op")
    claimed = arg(body, "name", str, name)
    if claimed != name:
        raise BadRequest(f"runner identity {name!r} does not match name {claimed!r}")
    return name


def _row(host: Host, task_id: int) -> dict:
    row = host.store.get_task(task_id)
    if row is None:
        raise NotFound(f"no task {task_id}")
    return row


def _live(host: Host, task_id: int, verb: str) -> LiveTask:
    task = host.tasks.get(task_id)
    if task is None:
        row = _row(host, task_id)
        raise Conflict(f"task {task_id} is already {row['state']}; it cannot be {verb}")
    return task


def _node(host: Host, name: str) -> NodeRecord:
    node = host.nodes.get(name)
    if node is None:
        raise NotFound(f"unknown node {name!r}; known: {', '.join(sorted(host.nodes)) or 'none'}")
    return node


def public_task(host: Host, row: dict) -> dict:
    """The stable JSON shape of a task (``zriver tasks --json``, ``zriver status --json``)."""
    spec = row["spec"]
    alloc = row["alloc"] or {}
    return {
        "id": row["id"], "name": row["name"], "owner": row["owner"], "state": row["state"],
        "node": row["node"], "command": spec["command"], "cores": spec["cores"],
        "memory": spec["memory"], "gpus": spec.get("gpus", 0), "env": spec["env"],
        "workdir": spec["workdir"], "target": spec["target"], "backend": spec["backend"],
        "container": spec.get("container"), "env_version": spec.get("env_version"),
        "priority": spec.get("priority", 0), "after": spec.get("after", []),
        "after_any": spec.get("after_any", []), "time_limit": spec.get("time_limit"),
        "retries": spec.get("retries", 0), "attempt": row["attempt"],
        "max_parallel": spec.get("max_parallel", 0),
        "allocated_cores": alloc.get("cores"), "allocated_gpus": alloc.get("gpus"),
        "numa_zone": alloc.get("numa"),
        "exit_code": row["exit_code"], "detail": pending_reason(host, row) or row["detail"],
        "submitted_at": row["submitted_at"], "started_at": row["started_at"],
        "finished_at": row["finished_at"], "batch_id": row["batch_id"],
    }


def pending_reason(host: Host, row: dict) -> str | None:
    """Why a pending task waits: dependencies first, else the scheduler's reason."""
    if row["state"] != lc.PENDING:
        return None
    waiting = host.deps.waiting_for(row["id"])
    if waiting:
        return f"waiting for task{'s' if len(waiting) > 1 else ''} {', '.join(map(str, waiting))}"
    return host.scheduler.pending_reason(row["id"])


def public_node(host: Host, node: NodeRecord) -> dict:
    info = node.info
    used_cores, used_memory = host.scheduler.node_usage(node.name)
    return {
        "name": node.name, "state": node.state, "hostname": info.get("hostname", ""),
        "version": info.get("version", ""), "cores": len(info.get("cores", [])),
        "cores_used": used_cores, "memory": info.get("memory", 0), "memory_used": used_memory,
        "numa_zones": len(info.get("zones") or [1]), "gpus": info.get("gpus", []),
        "labels": info.get("labels", {}), "last_seen": node.last_seen,
        "memory_limit": info.get("memory_limit", ""), "drained": node.drained,
        "degraded": node.degraded or None, "backends": info.get("backends", ["native"]),
        "gpus_free": host.scheduler.free_gpus(node.name),
        "docker": (node.heartbeat.get("docker") or {}).get("available"),
        "docker_error": (node.heartbeat.get("docker") or {}).get("error") or None,
    }


HANDLERS = {
    "cluster.hello": hello,
    "task.submit": submit,
    "task.list": list_tasks,
    "task.get": get_task,
    "task.kill": kill,
    "task.pause": pause,
    "task.resume": resume,
    "task.wait": wait,
    "task.logs": logs,
    "node.list": list_nodes,
    "node.health": health,
    "node.drain": drain,
    "node.undrain": undrain,
    "usage.report": usage,
    "runner.register": register,
    "runner.ping": ping,
    "task.update": task_update,
}

from zriver.host.envs import ENV_HANDLERS  # noqa: E402  (the env ops: zriver/host/envs.py)

HANDLERS.update(ENV_HANDLERS)
