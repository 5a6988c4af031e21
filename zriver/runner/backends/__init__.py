"""Execution backends: one small interface, one implementation per way of running a task.

A backend is told to ``start`` a ``Job`` and to ``signal`` it (``kill``, ``pause``, ``resume``).
``start`` never blocks the loop. It either returns a short detail (``"pid 123"``) when the job
is running on return, or returns ``None`` and later calls ``on_started(task_id, detail)`` once
it runs (a backend that must pull images or create containers in a thread). It reports exactly
one ``Exit`` per job through ``on_exit``, from the event loop thread; a job that could not start
at all is either a synchronous ``StartError`` (then no ``Exit`` follows) or an ``Exit`` with
state ``failed`` and no prior ``on_started``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

from zriver.spec import TaskSpec


@dataclass(slots=True)
class Job:
    """Everything a backend needs to run one task. ``env`` is what the task sets and zriver
    adds (``ZRIVER_*``, ``CUDA_VISIBLE_DEVICES``): a native task gets it on top of the runner's
    own environment, a container on top of its image's (``docker.container_environment``:
    there the GPUs are numbered from 0)."""

    task_id: int
    spec: TaskSpec
    cores: tuple[int, ...]
    memory: int
    stdout: str
    stderr: str
    env: dict[str, str] = field(default_factory=dict)
    gpus: tuple[int, ...] = ()
    numa: int | None = None
    attempt: int = 1


@dataclass(slots=True)
class Exit:
    """How a job ended: a final task state, an exit code and a human detail."""

    state: str
    exit_code: int | None
    detail: str


class StartError(Exception):
    """The job could not start; ``exit_code`` follows shell conventions (126, 127)."""

    def __init__(self, detail: str, exit_code: int = 127) -> None:
        super().__init__(detail)
        self.detail, self.exit_code = detail, exit_code


OnExit = Callable[[int, Exit], None]
OnStarted = Callable[..., None]
"""``on_started(task_id, detail[, at])``: ``at`` is when it started (default: now)."""


class Backend(Protocol):
    name: str

    def start(self, job: Job) -> str | None: ...

    def signal(self, task_id: int, action: str, done: Callable[[], None] | None = None) -> None:
        """``kill``, ``pause`` or ``resume``; ``done()`` runs on the loop once a pause or
        resume has taken effect (what the host is then told)."""

    def running(self) -> list[int]: ...

    def close(self) -> None: ...
