"""What a person asks for when submitting a task, validated once at the host's edge.

A ``TaskSpec`` travels client -> host inside ``task.submit`` and host -> runner inside
``task.start``. ``TaskSpec.from_wire`` is the only constructor used on received data and raises
``InvalidArgument``/``BadRequest`` with a message a person can act on.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from zriver.errors import BadRequest, InvalidArgument
from zriver.protocol import arg

NATIVE = "native"
DOCKER = "docker"
AUTO = "auto"
"""On the wire from a client only: the host picks (its ``default_container``, else native)."""
BACKENDS = (NATIVE, DOCKER, AUTO)

_NAME = re.compile(r"^[A-Za-z0-9_.:@+-]{1,64}$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_CORES = 4096


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

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> "TaskSpec":
        if not isinstance(body, dict):
            raise BadRequest("each task must be a map")
        command = arg(body, "command", list)
        if not command or not all(isinstance(part, str) for part in command):
            raise InvalidArgument("command must be a non-empty list of strings")
        spec = cls(
            command=list(command),
            name=arg(body, "name", str, ""),
            cores=arg(body, "cores", int, 1),
            memory=arg(body, "memory", int, None),
            env=dict(arg(body, "env", dict, {})),
            workdir=arg(body, "workdir", str, None),
            target=arg(body, "target", str, None) or None,
            backend=arg(body, "backend", str, NATIVE),
            owner=arg(body, "owner", str, ""),
            container=arg(body, "container", str, None),
            env_version=arg(body, "env_version", str, None),
            mounts=list(arg(body, "mounts", list, [])),
            privileged=arg(body, "privileged", bool, False),
        )
        spec.check()
        return spec

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
        for mount in self.mounts:
            parts = mount.split(":") if isinstance(mount, str) else []
            if not 2 <= len(parts) <= 3 or not all(parts[:2]) or (
                    len(parts) == 3 and parts[2] not in ("ro", "rw")):
                raise InvalidArgument(f"bad mount {mount!r}: use HOST:CONTAINER[:ro]")
        if self.workdir is not None and not self.workdir.startswith("/"):
            raise InvalidArgument(f"workdir must be an absolute path, got {self.workdir!r}")
