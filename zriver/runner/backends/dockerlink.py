"""How the Docker backend is wired into a runner: its stable id and its callbacks.

``make_backend(runner)`` builds the ``RunnerLink`` of a ``zriver.runner.agent.Runner`` (node name,
runner id, log paths, start/exit callbacks, host requests), registers the backend's
``env.forget`` and ``env.sync`` commands and the ``commit`` stream target of VPS containers
(``zriver.runner.backends.vps.commit_target``); a change of Docker's availability re-registers the runner so that the
host's view of its ``docker`` feature follows.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
from pathlib import Path

import structlog

from zriver.errors import ZriverError
from zriver.runner.backends.docker import DockerBackend, RunnerLink
from zriver.runner.backends.vps import commit_target

log = structlog.get_logger("zriver.runner")


def runner_id(data_dir: Path) -> str:
    """This runner's stable id (kept in its data dir): containers are labelled with it."""
    path = data_dir / "runner-id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        value = secrets.token_hex(8)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(value)
        tmp.replace(path)
        return value


def make_backend(runner) -> DockerBackend:
    """The Docker backend of ``runner`` (a ``zriver.runner.agent.Runner``), wired to it."""

    def availability(available: bool) -> None:
        names = set(runner.info.get("backends", []))
        (names.add if available else names.discard)("docker")
        runner.info["backends"] = sorted(names)
        if runner.registered.is_set():
            runner._spawn(reregister())

    async def reregister() -> None:
        try:
            await runner.register()
        except (asyncio.TimeoutError, ZriverError) as exc:
            log.warning("docker.reregister_failed", error=str(exc) or "timeout")

    link = RunnerLink(
        node=runner.name, runner_id=runner_id(runner.data_dir), data_dir=runner.data_dir,
        shared_dir=lambda: runner.shared_dir, log_paths=runner.log_paths,
        attempt_of=lambda task_id: runner._attempts.get(task_id, 1),
        on_started=runner._on_started, on_exit=runner._on_exit, request=runner.request,
        request_timeout=runner.settings.request_timeout, on_availability=availability)
    backend = DockerBackend(runner.settings, link)
    runner.handlers["env.forget"] = backend.forget_env
    runner.handlers["env.sync"] = backend.sync_env
    streams = getattr(runner, "streams", None)
    if streams is not None:
        streams.targets["commit"] = functools.partial(commit_target, backend=backend)
    return backend
