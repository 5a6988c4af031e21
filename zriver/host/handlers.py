"""The core's ops: one small pure function per op, and the table of who may call each.

A handler gets ``(core, request, body)``, validates ``body`` with ``protocol.arg``, and returns
the reply body or ``DEFERRED`` (it answers later through an effect). It raises a
``ZriverError`` for a clear error reply; the core then drops the call's effects. The role
check has already run (``OpTable.resolve``); handlers check ownership (a user's own task)
where the op acts on one task. ``register_core_ops`` puts them in an ``OpTable``.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from zriver import PROTOCOL_VERSION, __version__
from zriver import lifecycle as lc
from zriver.errors import BadRequest, Conflict, Forbidden, InvalidArgument, NotFound
from zriver.host import waiting
from zriver.host.dispatch import apply_update, move, signal, start_body
from zriver.host.effects import ReadLog, Request
from zriver.host.model import LiveTask, NodeRecord, gpu_change, node_spec
from zriver.host.ops import ADMINS, DEFERRED, EVERYONE, PEOPLE_ONLY, RUNNERS, OpTable
from zriver.host.scheduler import DEGRADED, OFFLINE, ONLINE, UNREACHABLE
from zriver.host.submit import submit
from zriver.logfiles import SUFFIX as STREAMS, log_path
from zriver.principal import Principal
from zriver.protocol import arg, arg_list

if TYPE_CHECKING:
    from zriver.host.core import HostCore

PAGE = 200
"""Rows of a ``task.list`` page by default..."""
MAX_PAGE = 1000
"""...and at most (a page of 1,000 is about 0.4 MiB)."""
MAX_LOG_READ = 1024 * 1024
MAX_LOG_OFFSET = 1 << 53


# ---- clients: tasks ------------------------------------------------------------------------
def hello(core: "HostCore", request: Request, body: dict) -> dict:
    principal = request.principal
    return {"version": __version__, "protocol": PROTOCOL_VERSION, **core.hello(),
            "principal": {"name": principal.name, "role": principal.role}}


def list_tasks(core: "HostCore", request: Request, body: dict) -> dict:
    """One page of tasks, newest first: ``{tasks, next, more, more_exact, seq}`` (``seq``: as
    in ``counts``, the last event the rows include).

    ``limit`` rows at most (default ``PAGE``, at most ``MAX_PAGE``), filtered by ``states``,
    ``batch``, ``owner``, ``node`` (in SQL, through indexes) and ``name`` (a substring), with
    ids below ``before``. ``next`` is the ``before`` of the following page (``None`` on the
    last one): ids only go up, so paging by it loses and repeats no row while tasks are
    added. ``more`` is how many rows match beyond this page, counted exactly up to
    ``store.COUNT_CAP`` per listed state; ``more_exact`` is false above that (then there are
    at least ``more``)."""
    filters = _list_filters(body)
    limit = max(1, min(arg(body, "limit", int, PAGE), MAX_PAGE))
    rows = core.records.list_tasks(limit=limit + 1, before=arg(body, "before", int, None),
                                   **filters)
    page, after, more, exact = rows[:limit], None, 0, True
    if len(rows) > limit:
        after = page[-1]["id"]
        more, exact = core.records.count_tasks(before=after, **filters)
    return {"tasks": [public_task(core, row) for row in page], "next": after, "more": more,
            "more_exact": exact, "seq": core.event_seq}


def _list_filters(body: dict) -> dict:
    """The filters of ``task.list`` and ``task.counts`` (states checked)."""
    return {"states": _states(body), "batch": arg(body, "batch", int, None),
            "owner": arg(body, "owner", str, None), "node": arg(body, "node", str, None),
            "name": arg(body, "name", str, None)}


def _states(body: dict) -> list[str] | None:
    states = arg_list(body, "states", str, None)
    if states and not set(states) <= set(lc.ALL_STATES):
        raise InvalidArgument(f"unknown state in {states}; states are {', '.join(lc.ALL_STATES)}")
    return states or None


def counts(core: "HostCore", request: Request, body: dict) -> dict:
    """Tasks per state: ``{counts: {state: n}, capped: [state...], seq}``, for ``states`` (default
    all), optionally of one ``owner`` and/or ``batch``. Unfinished states are counted from the
    live tasks in memory (exact; no SQL; without a filter from the table's counts per state,
    with one by a walk of the live tasks), finished ones in SQL through the state indexes,
    exactly up to ``store.COUNT_CAP`` (a state in ``capped`` has at least that many). ``seq``
    is the last task or batch event's ``seq`` (``HostCore.next_event_seq``): the counts
    include every change up to that event and none after it."""
    states = _states(body) or list(lc.ALL_STATES)
    owner, batch = arg(body, "owner", str, None), arg(body, "batch", int, None)
    result = dict.fromkeys(states, 0)
    if any(not lc.is_final(state) for state in states):
        if owner is None and batch is None:
            live = core.tasks.state_counts()  # kept as tasks move: no walk
        else:
            live = Counter(t.state for t in core.tasks.values()
                           if (owner is None or t.spec.owner == owner)
                           and (batch is None or t.batch_id == batch))
        for state, n in live.items():
            if state in result:
                result[state] = n
    capped = []
    for state in (s for s in states if lc.is_final(s)):
        result[state], exact = core.records.count_tasks([state], batch=batch, owner=owner)
        if not exact:
            capped.append(state)
    return {"counts": result, "capped": capped, "seq": core.event_seq}


def get_task(core: "HostCore", request: Request, body: dict) -> dict:
    row = _row(core, arg(body, "id", int))
    return {"task": public_task(core, row), "events": core.records.task_events(row["id"]),
            "seq": core.event_seq}


def kill(core: "HostCore", request: Request, body: dict) -> dict:
    """``{"id": N}``: kill one task (its errors raised, as before). ``{"ids": [...]}`` and/or
    ``{"batch": B}``: kill every listed task, and every live task of batch B, that is still
    live and the caller's to kill; the rest are reported, not raised: ``{"killed": [{id,
    state}], "skipped": [{id, state, reason}]}`` (state ``unknown`` for an id the host never
    had). Owner checks are per task, as for one id."""
    if "ids" not in body and "batch" not in body:
        return _kill_one(core, _own_live(core, request, arg(body, "id", int), "killed"))
    ids = arg_list(body, "ids", int) if "ids" in body else []
    batch = arg(body, "batch", int, None)
    if batch is not None:
        live = sorted(t.id for t in core.tasks.values() if t.batch_id == batch)
        if not live and not core.records.count_tasks(None, batch=batch, cap=1)[0]:
            raise NotFound(f"no batch {batch}")
        ids = list(dict.fromkeys([*ids, *live]))
    killed, skipped = [], []
    for task_id in ids:
        try:
            killed.append(_kill_one(core, _own_live(core, request, task_id, "killed")))
        except (Conflict, Forbidden, NotFound) as exc:
            skipped.append(_skipped(core, task_id, exc))
    return {"killed": killed, "skipped": skipped}


def _skipped(core: "HostCore", task_id: int, exc: Exception) -> dict:
    """What ``kill`` reports for a task it did not kill (final, not the caller's, unknown)."""
    if isinstance(exc, NotFound):
        return {"id": task_id, "state": "unknown", "reason": f"no task {task_id}"}
    live = core.tasks.get(task_id)
    row = None if live is not None else core.records.get_task(task_id)
    state = live.state if live is not None else (row["state"] if row else "unknown")
    reason = (f"task {task_id} already {state}" if isinstance(exc, Conflict) else str(exc))
    return {"id": task_id, "state": state, "reason": reason}


def _kill_one(core: "HostCore", task: LiveTask) -> dict:
    if task.state == lc.PENDING:
        move(core, task, lc.KILLED, detail="killed while pending")
    elif core.nodes.get(task.node) is None or core.nodes[task.node].state != ONLINE:
        move(core, task, lc.KILLED, detail=f"killed; node {task.node} is offline")
    else:
        signal(core, task, "kill")
    return {"id": task.id, "state": task.state}


def pause(core: "HostCore", request: Request, body: dict) -> dict:
    return _pause_or_resume(core, request, arg(body, "id", int), "pause", (lc.RUNNING,))


def resume(core: "HostCore", request: Request, body: dict) -> dict:
    return _pause_or_resume(core, request, arg(body, "id", int), "resume", (lc.PAUSED,))


def _pause_or_resume(core: "HostCore", request: Request, task_id: int, action: str,
                     allowed: tuple[str, ...]) -> dict:
    task = _own_live(core, request, task_id, f"{action}d")
    if task.state not in allowed:
        raise Conflict(f"task {task_id} is {task.state}; only a {' or '.join(allowed)} task "
                       f"can be {action}d")
    signal(core, task, action)
    return {"id": task.id, "state": task.state}


def wait(core: "HostCore", request: Request, body: dict) -> Any:
    ids = arg_list(body, "ids", int)
    if not ids:
        raise InvalidArgument("ids must be a non-empty list of task ids")
    known = core.records.task_outcomes([i for i in ids if i not in core.tasks])
    missing = sorted({i for i in ids if i not in core.tasks and i not in known})
    if missing:
        raise NotFound(f"no task {', '.join(map(str, missing))}")
    if not request.principal.is_admin:
        _check_owned(core, request.principal, ids, "wait on")
    timeout = float(arg(body, "timeout", (int, float), 30.0))
    if waiting.all_final(core, ids):
        return {"done": True, "tasks": waiting.summaries(core, ids, known)}
    core.waiters.add(request, ids, max(0.01, min(timeout, 300.0)))
    return DEFERRED


def logs(core: "HostCore", request: Request, body: dict) -> Any:
    """A slice of a task's stdout/stderr: from the shared dir, else from its runner (the
    adapter reads it: ``ReadLog``). Its owner and admins only."""
    row = _row(core, arg(body, "id", int))
    check_owner(request.principal, row["owner"], row["id"], "read the logs of")
    stream = arg(body, "stream", str, "stdout")
    if stream not in STREAMS:
        raise InvalidArgument("stream must be stdout or stderr")
    offset = arg(body, "offset", int, 0)
    limit = min(arg(body, "limit", int, MAX_LOG_READ), MAX_LOG_READ)
    if offset < 0 or limit < 0 or offset > MAX_LOG_OFFSET:
        raise InvalidArgument(f"offset and limit must not be negative, and offset at most "
                              f"{MAX_LOG_OFFSET}")
    final = lc.is_final(row["state"])
    shared = core.settings.shared_dir
    path = log_path(f"{shared}/logs", row["id"], stream) if shared else None
    node = row["node"] if row["node"] and row["state"] != lc.PENDING else None
    read = {"id": row["id"], "stream": stream, "offset": offset, "limit": limit}
    core.out.append(ReadLog(request, path, node, read, final))
    return DEFERRED


# ---- clients: nodes ------------------------------------------------------------------------
def list_nodes(core: "HostCore", request: Request, body: dict) -> dict:
    return {"nodes": [public_node(core, node) for node in sorted(core.nodes.values(),
                                                                 key=lambda n: n.name)],
            "security": core.hello_info.get("security", "curve")}


def health(core: "HostCore", request: Request, body: dict) -> dict:
    name = arg(body, "name", str, None)
    nodes = [_node(core, name)] if name else sorted(core.nodes.values(), key=lambda n: n.name)
    return {"nodes": [{"name": n.name, "state": n.state, "last_seen": n.last_seen,
                       **{k: v for k, v in n.heartbeat.items() if k != "instance"}}
                      for n in nodes],
            "security": core.hello_info.get("security", "curve"),
            "dropped_publications": core.dropped_publications,
            "foreign_heartbeats": core.foreign_heartbeats}


def drain(core: "HostCore", request: Request, body: dict) -> dict:
    """No new tasks on the node; what runs there finishes."""
    return _set_drained(core, arg(body, "name", str), arg(body, "reason", str, "") or "drained")


def undrain(core: "HostCore", request: Request, body: dict) -> dict:
    return _set_drained(core, arg(body, "name", str), None)


def _set_drained(core: "HostCore", name: str, reason: str | None) -> dict:
    node = _node(core, name)
    node.drained = reason
    core.scheduler.set_drained(node.name, reason is not None)
    core.rows.set_node_drained(node.name, reason)
    core.publish(f"evt.node.{node.name}", "node.state",
                 {"name": node.name, "state": node.state, "drained": reason})
    core.needs_schedule = True
    return public_node(core, node)


# ---- runners -------------------------------------------------------------------------------
def register(core: "HostCore", request: Request, body: dict) -> dict:
    """A runner (re)joins: record it, reconcile what it runs with what the host believes.

    A second runner claiming the name of a node whose runner is connected is refused
    (``conflict``) and changes nothing."""
    name = _runner_name(request, body)
    info = _runner_info(arg(body, "info", dict))
    known = _known_tasks(arg(body, "tasks", list, []))
    node = core.nodes.get(name)
    if node is not None and node.link not in (None, request.link) and core.connected(node):
        raise Conflict(f"node {name!r} is already connected from another runner "
                       f"({node.info.get('hostname', '?')}, pid {node.info.get('pid', '?')}); "
                       f"stop that one first, or give this runner another name")
    now = core.now.wall
    node = node or NodeRecord(name, info)
    node.info, node.registered, node.registered_at = info, True, now
    node.link, node.given_up = request.link, False
    core.nodes[name] = node
    core.touch(name, request.link, core.now)
    node.heartbeat = arg(body, "usage", dict, node.heartbeat)
    core.scheduler.set_node(name, node_spec(info))
    core.rows.save_node(name, info, node.state, now, now)
    stop = [tid for tid, attempt in known.items() if tid not in core.tasks
            or core.tasks[tid].node != name or core.tasks[tid].attempt != attempt[0]]
    for task in core.tasks.on(name):
        _reconcile(core, name, task, known.get(task.id))
    changed = gpu_change(info, node.heartbeat)
    node.degraded = changed
    core.set_node_state(node, DEGRADED if changed else ONLINE, changed or "registered")
    reply = {"heartbeat_interval": core.settings.heartbeat_interval, "stop": stop,
             "lease": core.lease, "grace": core.settings.unreachable_grace,
             "incarnation": core.incarnation, "shared_dir": core.settings.shared_dir,
             "stream_port": _stream_port(core)}
    if core.heartbeat_requests:
        reply["heartbeat_request"] = True  # this host takes ``runner.heartbeat``
    return reply


def _stream_port(core: "HostCore") -> int | None:
    """The port runners dial for byte streams (``zriver.host.streamhub``); None without one."""
    endpoint = (core.hello_info.get("endpoints") or {}).get("streams")
    return int(endpoint.rsplit(":", 1)[1]) if endpoint else None


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
    arg_list(info, "allowed_mounts", str, [], max_len=256)
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


def _reconcile(core: "HostCore", name: str, task: LiveTask,
               known: tuple[int, str] | None) -> None:
    """One task the host places on ``name``, against what the registering runner has."""
    if known is not None and known[0] == task.attempt:
        if task.state == lc.UNREACHABLE:
            state = lc.PAUSED if known[1] == lc.PAUSED else lc.RUNNING
            move(core, task, state, detail=f"node {name} is back; the task ran on")
        return
    if task.state == lc.ASSIGNED:
        core.command(name, "task.start", start_body(core, task))  # the start never arrived
    elif task.state in lc.ACTIVE:
        move(core, task, lc.LOST, detail=f"runner {name} came back without it")


def ping(core: "HostCore", request: Request, body: dict) -> dict:
    """A runner renews its lease (the reply is the point); ``registered`` false asks it to
    register with this host."""
    name = _runner_name(request, body)
    node = core.nodes.get(name)
    if node is not None and node.link not in (None, request.link):
        raise Conflict(f"this runner is not the registered runner of node {name!r}")
    return {"registered": bool(node is not None and node.registered
                               and node.link == request.link)}


def heartbeat(core: "HostCore", request: Request, body: dict) -> dict:
    """A runner's heartbeat as a request, for runners whose registration reply said
    ``heartbeat_request``: sent when the runner's lease is due for renewal, instead of a
    ``hb.<node>`` publication and a ``runner.ping``. ``usage`` is what ``hb.<node>`` carries; it
    is kept and published as ``hb.<node>`` to subscribers (without the runner's instance), and
    the reply renews the runner's lease as a ping's does. ``registered`` false (a host that
    does not know this runner, or holds its node unreachable or offline) asks it to register."""
    name = _runner_name(request, body)
    usage = {k: v for k, v in arg(body, "usage", dict).items() if k != "instance"}
    node = core.nodes.get(name)
    if node is not None and node.link not in (None, request.link):
        core.foreign_heartbeats += 1
        raise Conflict(f"this runner is not the registered runner of node {name!r}")
    if (node is None or not node.registered
            or node.state in (UNREACHABLE, OFFLINE)):
        return {"registered": False}
    core.publish(f"hb.{name}", "hb", usage)
    core.take_heartbeat(node, usage)
    return {"registered": True}


def task_update(core: "HostCore", request: Request, body: dict) -> dict:
    name = _runner_name(request, body)
    node = core.nodes.get(name)
    if node is not None and node.link not in (None, request.link):
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
        apply_update(core, name, update)
    return {"count": len(updates)}


# ---- helpers -------------------------------------------------------------------------------
def _runner_name(request: Request, body: dict) -> str:
    name = request.principal.node
    if name is None:
        raise BadRequest("only runners may send this op")
    claimed = arg(body, "name", str, name)
    if claimed != name:
        raise Forbidden(f"this runner's key is for node {name!r}; it may not speak as "
                        f"{claimed!r}")
    return name


def _row(core: "HostCore", task_id: int) -> dict:
    row = core.records.get_task(task_id)
    if row is None:
        raise NotFound(f"no task {task_id}")
    return row


def check_owner(principal: Principal, owner: str, task_id: int, verb: str) -> None:
    """``Forbidden`` unless ``principal`` may act on a task of ``owner``."""
    if not principal.may_act_on(owner):
        raise Forbidden(f"task {task_id} belongs to {owner!r}: only its owner or an admin may "
                        f"{verb} it")


def _check_owned(core: "HostCore", principal: Principal, ids: list[int], verb: str) -> None:
    owners = core.records.task_owners([i for i in ids if i not in core.tasks])
    for task_id in ids:
        live = core.tasks.get(task_id)
        check_owner(principal, live.spec.owner if live else owners.get(task_id, ""), task_id,
                    verb)


def _own_live(core: "HostCore", request: Request, task_id: int, verb: str) -> LiveTask:
    task = core.tasks.get(task_id)
    if task is None:
        row = _row(core, task_id)
        check_owner(request.principal, row["owner"], task_id, _infinitive(verb))
        raise Conflict(f"task {task_id} is already {row['state']}; it cannot be {verb}")
    check_owner(request.principal, task.spec.owner, task_id, _infinitive(verb))
    return task


def _infinitive(verb: str) -> str:
    return {"killed": "kill", "paused": "pause", "resumed": "resume"}.get(verb, verb)


def _node(core: "HostCore", name: str) -> NodeRecord:
    node = core.nodes.get(name)
    if node is None:
        raise NotFound(f"unknown node {name!r}; known: {', '.join(sorted(core.nodes)) or 'none'}")
    return node


def public_task(core: "HostCore", row: dict) -> dict:
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
        "max_parallel": spec.get("max_parallel", 0), "user": spec.get("user"),
        "kind": spec.get("kind", "task"), "idle_stop": spec.get("idle_stop"),
        "allocated_cores": alloc.get("cores"), "allocated_gpus": alloc.get("gpus"),
        "numa_zone": alloc.get("numa"),
        "exit_code": row["exit_code"], "detail": pending_reason(core, row) or row["detail"],
        "submitted_at": row["submitted_at"], "started_at": row["started_at"],
        "finished_at": row["finished_at"], "batch_id": row["batch_id"],
    }


def pending_reason(core: "HostCore", row: dict) -> str | None:
    """Why a pending task waits: dependencies first, else the scheduler's reason."""
    if row["state"] != lc.PENDING:
        return None
    waiting_for = core.deps.waiting_for(row["id"])
    if waiting_for:
        return (f"waiting for task{'s' if len(waiting_for) > 1 else ''} "
                f"{', '.join(map(str, waiting_for))}")
    return core.scheduler.pending_reason(row["id"])


def public_node(core: "HostCore", node: NodeRecord) -> dict:
    info = node.info
    used_cores, used_memory = core.scheduler.node_usage(node.name)
    return {
        "name": node.name, "state": node.state, "hostname": info.get("hostname", ""),
        "version": info.get("version", ""), "cores": len(info.get("cores", [])),
        "cores_used": used_cores, "memory": info.get("memory", 0), "memory_used": used_memory,
        "numa_zones": len(info.get("zones") or [1]), "gpus": info.get("gpus", []),
        "labels": info.get("labels", {}), "last_seen": node.last_seen,
        "memory_limit": info.get("memory_limit", ""), "drained": node.drained,
        "degraded": node.degraded or None, "backends": info.get("backends", ["native"]),
        "gpus_free": core.scheduler.free_gpus(node.name),
        "docker": (node.heartbeat.get("docker") or {}).get("available"),
        "docker_error": (node.heartbeat.get("docker") or {}).get("error") or None,
        "allowed_mounts": info.get("allowed_mounts", []),
    }


def register_core_ops(ops: OpTable) -> None:
    """The core's ops and who may call each (the one table of roles: docs/security.md)."""
    for name, handler, roles in (
        ("cluster.hello", hello, EVERYONE),
        ("task.submit", submit, PEOPLE_ONLY),
        ("task.list", list_tasks, PEOPLE_ONLY),
        ("task.counts", counts, PEOPLE_ONLY),
        ("task.get", get_task, PEOPLE_ONLY),
        ("task.kill", kill, PEOPLE_ONLY),
        ("task.pause", pause, PEOPLE_ONLY),
        ("task.resume", resume, PEOPLE_ONLY),
        ("task.wait", wait, PEOPLE_ONLY),
        ("task.logs", logs, PEOPLE_ONLY),
        ("node.list", list_nodes, PEOPLE_ONLY),
        ("node.health", health, PEOPLE_ONLY),
        ("node.drain", drain, ADMINS),
        ("node.undrain", undrain, ADMINS),
        ("runner.register", register, RUNNERS),
        ("runner.ping", ping, RUNNERS),
        ("runner.heartbeat", heartbeat, RUNNERS),
        ("task.update", task_update, RUNNERS),
    ):
        ops.add(name, handler, roles)
