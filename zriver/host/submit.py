"""``task.submit`` (pure): a list of specs, or a sweep the host expands; checked, then stored
all at once.

Two forms of the body, each with an optional idempotency ``key``:

* ``{"tasks": [spec, ...]}``: every spec on its own (names, dependencies, targets may differ);
  at most ``MAX_LIST`` of them (the message cap allows about 40,000 anyway);
* ``{"sweep": {"spec": spec, "targets": [target, ...]}}``: ``spec``'s command carries
  ``span:{a..b}``/``span:[x,y]`` words (``zriver.sweep``); the host makes one task per target
  (default: ``spec``'s own) and command, targets outermost, at most ``sweep.MAX_TASKS``.

What cannot differ between a sweep's tasks is checked once per target, not once per task:
the spec's fields, the caller's rights, the backend, the extensions' submit checks, whether
any node could ever run it, and its dependencies. The tasks of one target then share one
``TaskSpec`` (each ``LiveTask`` keeps its own ``command``), and the store
gets them all in one ``insert_tasks`` write, inside the request's transaction: a refusal
stores nothing, and so does a failed write.

A submit of up to ``BATCH_EVENT_OVER`` tasks publishes one ``evt.task.<id>`` per task, as
before; a bigger one publishes one ``evt.batch.<batch_id>`` (op ``batch.state``) with
``{batch_id, count, first_id, last_id, state: "pending", owner, name}``: its tasks have the
consecutive ids ``first_id..last_id``. Their later changes publish the usual task events.
"""

from __future__ import annotations

import dataclasses
import posixpath
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from zriver import lifecycle as lc
from zriver import sweep
from zriver.errors import BadRequest, Forbidden, InvalidArgument, NotFound
from zriver.host.dispatch import ended_dependencies, enqueue, publish_task
from zriver.host.effects import Request
from zriver.host.model import LiveTask
from zriver.host.scheduler import Request as Want
from zriver.principal import Principal
from zriver.protocol import arg
from zriver.spec import AUTO, DOCKER, NATIVE, VPS, TaskSpec

if TYPE_CHECKING:
    from zriver.host.core import HostCore

MAX_LIST = 100_000
"""The most specs in one ``tasks`` list (a sweep says the same in a few bytes)."""
MAX_SUBMIT_KEY = 128
SUBMIT_KEY_TTL = 24 * 3600.0
"""Seconds an idempotency key of ``task.submit`` is remembered."""
BATCH_EVENT_OVER = 1_000
"""A submit of more tasks than this publishes one batch event instead of one per task."""
STANDARD_MOUNTS = ("/shared", "/local_temp")


@dataclass(slots=True)
class Group:
    """Tasks that share one checked spec: one task (``commands`` is None: the spec's own
    command), or one per command of a sweep."""

    spec: TaskSpec
    commands: list[list[str]] | None = None

    @property
    def count(self) -> int:
        return 1 if self.commands is None else len(self.commands)


def submit(core: "HostCore", request: Request, body: dict) -> dict:
    """Check every task first, then store them all (one batch id when several).

    The owner of each task is the caller (with ``security = "none"``, whoever it says it
    is). With an idempotency ``key`` (a string of at most 128 characters), a submit whose key
    is already stored answers the stored ``ids``/``batch_id`` and stores nothing new; the key
    is stored in the same transaction as the tasks."""
    now = core.now.wall
    key = _submit_key(body)
    if key is not None:
        core.rows.prune_submit_keys(now - SUBMIT_KEY_TTL)
        known = core.records.submitted(key)
        if known is not None:
            return {"ids": known[0], "batch_id": known[1]}
    if "sweep" in body and body.get("tasks") is not None:
        raise BadRequest("a submit carries either 'tasks' or 'sweep', not both")
    groups = _sweep_groups(body) if "sweep" in body else _list_groups(body)
    for group in groups:
        admit(core, request, group.spec)
    _check_dependencies(core, groups)
    first, count, batch_id = store(core, groups, now)
    ids = list(range(first, first + count))
    if key is not None:
        core.rows.remember_submit(key, ids, batch_id, now)
    return {"ids": ids, "batch_id": batch_id}


# ---- the two forms -------------------------------------------------------------------------
def _list_groups(body: dict) -> list[Group]:
    raw = arg(body, "tasks", list)
    if not raw:
        raise InvalidArgument("submit needs at least one task")
    if len(raw) > MAX_LIST:
        raise InvalidArgument(
            f"{len(raw)} tasks in one submit; at most {MAX_LIST} in a list: send a sweep "
            f"instead (one spec whose command has span:{{a..b}} or span:[x,y] words, which "
            f"the host expands: `zriver submit -- cmd span:{{1..{len(raw)}}}`), or split it")
    groups: list[Group] = []
    previous = None
    for item in raw:
        if previous is not None and same_wire(item, previous):
            group = groups[-1]  # the same spec again: checked once, one task more
            if group.commands is None:
                group.commands = [group.spec.command]
            group.commands.append(group.spec.command)
            continue
        groups.append(Group(TaskSpec.from_wire(item)))
        previous = item
    return groups


def same_wire(one: object, other: object) -> bool:
    """Whether two decoded values are the same, types included all the way down (``==``
    alone takes ``True`` for ``1`` and ``1.0`` for ``1``, which ``TaskSpec.from_wire`` tells
    apart). A run of identical specs in a ``tasks`` list is checked once and becomes one
    group, as a sweep's tasks are."""
    if type(one) is not type(other):
        return False
    if type(one) is dict:
        return len(one) == len(other) and all(
            key in other and same_wire(value, other[key]) for key, value in one.items())
    if type(one) is list:
        return len(one) == len(other) and all(map(same_wire, one, other))
    return one == other


def _sweep_groups(body: dict) -> list[Group]:
    """One group per target, all sharing the expanded commands (a list made once)."""
    form = arg(body, "sweep", dict)
    template = arg(form, "spec", dict)
    targets = form.get("targets")
    if targets is None:
        targets = [template.get("target")]
    elif not isinstance(targets, list) or not targets or not all(
            t is None or isinstance(t, str) for t in targets):
        raise BadRequest("sweep 'targets' must be a non-empty list of targets (or null)")
    spec = TaskSpec.from_wire(template)
    plan = sweep.parse(spec.command)
    total = plan.count * len(targets)
    if total > sweep.MAX_TASKS:
        raise InvalidArgument(f"this sweep has {total} tasks ({plan.count} commands x "
                              f"{len(targets)} targets); at most {sweep.MAX_TASKS} in one "
                              f"submit: split it into several submits")
    commands = list(plan.commands())
    groups = []
    for target in targets:
        one = dataclasses.replace(spec, target=target or None)
        one.check()
        groups.append(Group(one, commands))
    return groups


# ---- checks --------------------------------------------------------------------------------
def admit(core: "HostCore", request: Request, spec: TaskSpec) -> None:
    """Everything a spec must pass at submit that depends on the caller or the cluster:
    its owner, the backend, the caller's rights, the extensions' checks (which may fill
    fields: an env's version), and whether any known node could ever run it."""
    principal = request.principal
    spec.owner = owner_of(principal, spec)
    spec.admin = principal.is_admin
    resolve_backend(core, spec)
    check_allowed(core, principal, spec)
    for check in core.submit_checks:
        check(request, spec)
    core.scheduler.check_possible(LiveTask(0, spec, lc.PENDING).request())


def _check_dependencies(core: "HostCore", groups: list[Group]) -> None:
    deps = sorted({d for group in groups for d in group.spec.after + group.spec.after_any})
    missing = sorted(set(deps) - set(core.records.task_states(deps))) if deps else []
    if missing:
        raise NotFound(f"no task {', '.join(map(str, missing))} to depend on")


def owner_of(principal: Principal, spec: TaskSpec) -> str:
    """The authenticated caller; with security off (no key), the owner the client names."""
    if principal.key:
        return principal.name
    return spec.owner or principal.name


def _submit_key(body: dict) -> str | None:
    key = arg(body, "key", str, None)
    if key is not None and not 1 <= len(key) <= MAX_SUBMIT_KEY:
        raise InvalidArgument(f"an idempotency key is 1 to {MAX_SUBMIT_KEY} characters")
    return key


def resolve_backend(core: "HostCore", spec: TaskSpec) -> None:
    """Decide native or docker for an ``auto`` spec."""
    if spec.backend == AUTO:
        spec.backend = DOCKER if core.settings.default_container else NATIVE
        if spec.backend == DOCKER:
            spec.container = core.settings.default_container
        elif spec.kind == VPS:
            raise InvalidArgument("a VPS runs in a container and this cluster has no "
                                  "default_container: give --container ENV")
        elif spec.mounts or spec.privileged:
            raise InvalidArgument("--mount and --privileged need a container, and this cluster "
                                  "has no default_container")


def check_allowed(core: "HostCore", principal: Principal, spec: TaskSpec) -> None:
    """What only an admin may ask of a node: another Unix account (root included), a
    privileged container, a bind mount of a host path outside every runner's
    ``allowed_mounts``. ``Forbidden`` names the role or the setting needed."""
    if principal.is_admin:
        return
    if spec.user is not None:
        raise Forbidden(f"--user {spec.user} needs the admin role; a user's native tasks run "
                        f"as their own account on the node, else its task_user")
    if spec.privileged:
        raise Forbidden("--privileged needs the admin role")
    if not spec.mounts:
        return
    allowed = sorted({path for node in core.nodes.values()
                      for path in node.info.get("allowed_mounts") or []})
    for mount in spec.mounts:
        source = posixpath.normpath(mount.split(":", 1)[0])
        if source in STANDARD_MOUNTS or any(_inside(source, root) for root in allowed):
            continue
        where = (f"inside a runner's allowed_mounts ({', '.join(allowed)})" if allowed
                 else "listed in a runner's allowed_mounts (none is)")
        raise Forbidden(f"--mount {mount}: mounting host path {source} needs the admin role, "
                        f"or a directory {where}")


def _inside(path: str, root: str) -> bool:
    root = posixpath.normpath(root)
    return path == root or path.startswith(root.rstrip("/") + "/")


# ---- storing -------------------------------------------------------------------------------
def store(core: "HostCore", groups: list[Group], now: float) -> tuple[int, int, int | None]:
    """Give the groups' tasks consecutive ids, write them (one ``insert_tasks``), make them
    live and queue them; publish their submission. Returns ``(first_id, count, batch_id)``."""
    first = core.next_task_id
    count = sum(group.count for group in groups)
    batch_id = first if count > 1 else None
    core.next_task_id += count
    core.rows.insert_tasks(first, [(group.spec.to_wire(), group.spec.name, group.spec.owner,
                                    group.commands) for group in groups], now, batch_id)
    task_id = first
    quiet = count > BATCH_EVENT_OVER
    for group in groups:
        made = _live(core, group, task_id, batch_id)
        _queue(core, group.spec, made, announce=not quiet)
        task_id += len(made)
    if quiet:
        spec = groups[0].spec
        core.publish(f"evt.batch.{batch_id}", "batch.state", {
            "batch_id": batch_id, "count": count, "first_id": first, "last_id": first + count - 1,
            "state": lc.PENDING, "owner": spec.owner, "name": spec.name,
            "seq": core.next_event_seq()})
    core.needs_schedule = True
    return first, count, batch_id


def _live(core: "HostCore", group: Group, first: int, batch_id: int | None) -> list[LiveTask]:
    """The group's ``LiveTask``s (sharing ``group.spec``), added to the core."""
    tasks = core.tasks
    spec = group.spec
    if group.commands is None:
        made = [LiveTask(first, spec, lc.PENDING, batch_id=batch_id)]
    else:
        made = [LiveTask(task_id, spec, lc.PENDING, batch_id=batch_id, command=command)
                for task_id, command in enumerate(group.commands, start=first)]
    for task in made:
        tasks[task.id] = task
    return made


def _queue(core: "HostCore", spec: TaskSpec, made: list[LiveTask], announce: bool) -> None:
    """Queue the tasks (or register them with their dependencies, read once for all)."""
    if announce:
        for task in made:
            publish_task(core, task, lc.PENDING, "submitted", None)
    deps = spec.after + spec.after_any
    if deps or len(made) == 1:
        ended = ended_dependencies(core, deps)
        for task in made:
            enqueue(core, task, ended)
        return
    want = _wants(made[0].request())
    submit_one = core.scheduler.submit
    for task in made:
        submit_one(want(task.id))


def _wants(template: Want) -> Callable[[int], Want]:
    """Task id -> the scheduler request of a task shaped like ``template`` (its spec shared)."""
    names = [f.name for f in dataclasses.fields(Want)]
    assert names[0] == "task_id", "the scheduler's Request must start with task_id"
    rest = tuple(getattr(template, name) for name in names[1:])
    return lambda task_id: Want(task_id, *rest)
