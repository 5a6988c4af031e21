"""What a person asks for when submitting a task, validated once at the host's edge.

A ``TaskSpec`` travels client -> host inside ``task.submit`` and host -> runner inside
``task.start``. ``TaskSpec.from_wire`` is the only constructor used on received data and raises
``InvalidArgument``/``BadRequest`` with a message a person can act on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any

from zriver.errors import BadRequest, InvalidArgument
from zriver.protocol import INT64, arg

_TARGET = re.compile(r"^([A-Za-z0-9_.@+-]{1,64})(?::(\d+)?(?::(\d+(?:,\d+)*))?)?$")


def parse_target(text: str) -> tuple[str, int | None, tuple[int, ...]]:
    """``node`` | ``node:ZONE`` | ``node::GPU[,GPU...]`` | ``node:ZONE:GPU[,...]`` ->
    (node, zone or None, GPU ids). ``InvalidArgument`` for anything else."""
    match = _TARGET.match(text or "")
    if not match or (text.count(":") == 1 and match.group(2) is None):
        raise InvalidArgument(
            f"bad target {text!r}: use NODE, NODE:NUMA_ZONE or NODE::GPU[,GPU...]")
    node, zone, gpus = match.groups()
    gpu_ids = tuple(int(g) for g in gpus.split(",")) if gpus else ()
    if len(set(gpu_ids)) != len(gpu_ids):
        raise InvalidArgument(f"bad target {text!r}: a GPU is named twice")
    return node, int(zone) if zone is not None else None, gpu_ids


def _number(value):
    return None if value is None else float(value)

NATIVE = "native"
DOCKER = "docker"
AUTO = "auto"
"""On the wire from a client only: the host picks (its ``default_container``, else native)."""
BACKENDS = (NATIVE, DOCKER, AUTO)
TASK = "task"
VPS = "vps"
KINDS = (TASK, VPS)
MAX_SSH_KEYS = 16

_NAME = re.compile(r"^[A-Za-z0-9_.:@+-]{1,64}$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ACCOUNT = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}\$?$")
MAX_CORES = 4096
MAX_TIME_LIMIT = 100 * 365 * 86400.0
"""Time limits must be finite: a NaN or infinite one would break the host's timers."""


@dataclass(slots=True)
class TaskSpec:
    """One task's request. ``memory`` is bytes or ``None`` (no limit, nothing accounted)."""

    command: list[str]
    name: str = ""
    cores: int = 1
    memory: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None
    target: str | None = None
    backend: str = NATIVE
    owner: str = ""
    container: str | None = None
    """Docker backend: the environment's name (``None``: the runner's default)."""
    env_version: str | None = None
    """Docker backend: the environment version, fixed by the host at submit."""
    mounts: list[str] = field(default_factory=list)
    privileged: bool = False
    gpus: int = 0
    """How many GPUs, anywhere (``--gpus``); explicit ids come in ``target`` (``node::0,1``)."""
    priority: int = 0
    after: list[int] = field(default_factory=list)
    """Run only after all of these completed successfully."""
    after_any: list[int] = field(default_factory=list)
    """Run only after all of these ended, however."""
    time_limit: float | None = None
    retries: int = 0
    max_parallel: int = 0
    """Of the task's batch, at most this many hold resources at once (0: no limit)."""
    user: str | None = None
    """The Unix account a native task runs as on its node (``--user``, admins only; ``root``
    allowed). ``None``: the owner's own account there, else the node's ``task_user``."""
    admin: bool = False
    """Set by the host, never by a client: the owner submitted with an admin key (an admin's
    own account is used even when it is root)."""
    kind: str = TASK
    """``task`` (runs its command to the end) or ``vps`` (a persistent container people work
    in: ``zriver vps create``; its command may be empty; Docker backend only)."""
    ssh_keys: list[str] = field(default_factory=list)
    """VPS only: OpenSSH public key lines written to the container's ``authorized_keys``."""
    idle_stop: float | None = None
    """VPS only: seconds with no SSH session, no stream and under 5% CPU before it stops."""

    def to_wire(self) -> dict[str, Any]:
        """A plain dict of every field (shares the lists: pack it, don't mutate it)."""
        return {name: getattr(self, name) for name in _FIELDS}

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> "TaskSpec":
        """Validate a received spec: field types by the ``_WIRE`` table, then ``check``."""
        if not isinstance(body, dict):
            raise BadRequest("each task must be a map")
        values: dict[str, Any] = {}
        for name, kinds, default in _WIRE:
            value = body.get(name)
            if value is None:
                if default is _REQUIRED:
                    raise BadRequest(f"missing field '{name}'")
                value = default() if callable(default) else default
            elif type(value) not in kinds:  # exact types: a bool is not an int here
                arg(body, name, tuple(kinds))  # raises with the precise message
            values[name] = value
        command = values["command"]
        if not all(isinstance(part, str) for part in command) or (
                not command and values["kind"] != VPS):
            raise InvalidArgument("command must be a non-empty list of strings")
        spec = cls(**values)
        spec.target = spec.target or None
        spec.time_limit = _number(spec.time_limit)
        spec.idle_stop = _number(spec.idle_stop)
        spec.check()
        return spec

    @classmethod
    def trusted(cls, body: dict[str, Any]) -> "TaskSpec":
        """Rebuild a spec the host already validated (runner side: no second validation)."""
        return cls(**{name: body[name] for name in _FIELDS if name in body})

    def check(self) -> None:
        """Raise ``InvalidArgument`` for values no cluster could accept."""
        if self.name and not _NAME.match(self.name):
            raise InvalidArgument(
                f"bad task name {self.name!r}: 1-64 letters, digits or _ . : @ + -"
            )
        if not 1 <= self.cores <= MAX_CORES:
            raise InvalidArgument(f"cores must be between 1 and {MAX_CORES}, got {self.cores}")
        if self.memory is not None and self.memory <= 0:
            raise InvalidArgument(f"memory must be positive, got {self.memory}")
        for key, value in self.env.items():
            if not isinstance(key, str) or not _ENV_KEY.match(key):
                raise InvalidArgument(f"bad environment variable name {key!r}")
            if not isinstance(value, str):
                raise InvalidArgument(f"environment variable {key} must be a string")
        if self.backend not in BACKENDS:
            raise InvalidArgument(
                f"unknown backend {self.backend!r}: this release supports {', '.join(BACKENDS)}"
            )
        if self.target is not None:
            parse_target(self.target)
        if not 0 <= self.gpus <= 64:
            raise InvalidArgument(f"gpus must be between 0 and 64, got {self.gpus}")
        if self.gpus and self.target and "::" in self.target:
            raise InvalidArgument("give either --gpus N or GPU ids in the target, not both")
        if not -1000 <= self.priority <= 1000:
            raise InvalidArgument(f"priority must be between -1000 and 1000, got {self.priority}")
        for dep in (*self.after, *self.after_any):
            if not isinstance(dep, int) or isinstance(dep, bool) or not 0 < dep < INT64:
                raise InvalidArgument(f"dependencies are task ids, got {dep!r}")
        if self.time_limit is not None and not 0 < self.time_limit < MAX_TIME_LIMIT:
            raise InvalidArgument(f"time limit must be positive and under 100 years, got "
                                  f"{self.time_limit}")
        for value, what in ((self.memory, "memory"), (self.max_parallel, "max_parallel")):
            if value is not None and value >= INT64:
                raise InvalidArgument(f"{what} is out of range (64-bit integers only)")
        if not 0 <= self.retries <= 100:
            raise InvalidArgument(f"retries must be between 0 and 100, got {self.retries}")
        if self.max_parallel < 0:
            raise InvalidArgument(f"max_parallel must not be negative, got {self.max_parallel}")
        for mount in self.mounts:
            parts = mount.split(":") if isinstance(mount, str) else []
            if not 2 <= len(parts) <= 3 or not all(parts[:2]) or (
                    len(parts) == 3 and parts[2] not in ("ro", "rw")):
                raise InvalidArgument(f"bad mount {mount!r}: use HOST:CONTAINER[:ro]")
        if self.user is not None and not _ACCOUNT.match(self.user):
            raise InvalidArgument(f"bad account name {self.user!r}")
        if self.workdir is not None and not self.workdir.startswith("/"):
            raise InvalidArgument(f"workdir must be an absolute path, got {self.workdir!r}")
        self._check_vps()

    def _check_vps(self) -> None:
        if self.kind not in KINDS:
            raise InvalidArgument(f"unknown task kind {self.kind!r}: use one of {', '.join(KINDS)}")
        if self.kind != VPS:
            if self.ssh_keys or self.idle_stop is not None:
                raise InvalidArgument("ssh keys and --idle-stop are for VPS tasks only")
            return
        if self.backend == NATIVE:
            raise InvalidArgument("a VPS runs in a container: give --container ENV "
                                  "(or set the host's default_container)")
        if self.time_limit is not None or self.retries:
            raise InvalidArgument("a VPS has no time limit and no retries (use --idle-stop)")
        if len(self.ssh_keys) > MAX_SSH_KEYS or not all(
                isinstance(key, str) and 0 < len(key) <= 16384 and "\n" not in key
                for key in self.ssh_keys):
            raise InvalidArgument(f"ssh_keys: at most {MAX_SSH_KEYS} public key lines")
        if self.idle_stop is not None and not 0 < self.idle_stop < MAX_TIME_LIMIT:
            raise InvalidArgument(f"idle stop must be positive, got {self.idle_stop}")


_FIELDS = tuple(f.name for f in fields(TaskSpec))
_REQUIRED = object()
_WIRE: tuple[tuple[str, frozenset[type], Any], ...] = (
    ("command", frozenset({list}), _REQUIRED), ("name", frozenset({str}), ""),
    ("cores", frozenset({int}), 1), ("memory", frozenset({int}), None),
    ("env", frozenset({dict}), dict), ("workdir", frozenset({str}), None),
    ("target", frozenset({str}), None), ("backend", frozenset({str}), NATIVE),
    ("owner", frozenset({str}), ""), ("container", frozenset({str}), None),
    ("env_version", frozenset({str}), None), ("mounts", frozenset({list}), list),
    ("privileged", frozenset({bool}), False), ("gpus", frozenset({int}), 0),
    ("priority", frozenset({int}), 0), ("after", frozenset({list}), list),
    ("after_any", frozenset({list}), list), ("time_limit", frozenset({int, float}), None),
    ("retries", frozenset({int}), 0), ("max_parallel", frozenset({int}), 0),
    ("user", frozenset({str}), None), ("admin", frozenset({bool}), False),
    ("kind", frozenset({str}), TASK), ("ssh_keys", frozenset({list}), list),
    ("idle_stop", frozenset({int, float}), None),
)
assert tuple(name for name, _, _ in _WIRE) == _FIELDS, "_WIRE must list every field in order"
