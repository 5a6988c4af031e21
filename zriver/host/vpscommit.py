"""``vps commit``: a VPS's current filesystem becomes a new version of an env.

``commit_vps`` opens a ``commit`` stream to the VPS's runner (``zriver.runner.backends.vps``
commits the container and sends the ``docker save`` archive of the new image), writes the
bytes to a temporary file under the host's data dir while hashing them, ``docker load``s it
into the host's Docker and hands the image to the env extension
(``Environments.commit_image``), which records a version exactly as ``env commit`` does (a
``docker save`` archive named by its sha256, synced to nodes on demand). The temporary file is
always removed. Errors are sentences: the runner's refusal or failure, a transfer cut short,
an archive Docker cannot load.
"""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path
from typing import Any

import structlog

from zriver.errors import Unavailable
from zriver.host.effects import Request
from zriver.host.streamhub import StreamError

log = structlog.get_logger("zriver.host")

OPEN_TIMEOUT = 30.0


def _envs(host: Any) -> Any:
    for extension in host.extensions:
        if getattr(extension, "name", "") == "envs":
            return extension
    raise Unavailable("this host has no Docker environments (no envs extension)")


async def commit_vps(host: Any, principal: Any, task_id: int, env: str) -> dict:
    """Commit running VPS ``task_id`` into env ``env`` (made for ``principal`` when new, else
    theirs to commit into); returns ``{"env": env, "version": "<12 hex digits>"}``. The
    caller (``vps.commit``) has checked that the VPS is running and the principal may act on
    it."""
    envs = _envs(host)
    if envs.records.env(env) is not None:  # refused before anything is transferred
        envs._own_env(Request(principal), env, "commit into")
    task = host.tasks[task_id]
    folder = Path(host.settings.data_dir) / "uploads"
    path = folder / f"vps-{task_id}-{secrets.token_hex(6)}.tar"
    try:
        digest, size = await _receive(host, envs, task.node, task_id, path)
        log.info("vps.commit_received", task=task_id, size=size, sha256=digest[:12])
        image = await envs._blocking(envs.docker().load, path)
    finally:
        path.unlink(missing_ok=True)
    version = await envs.commit_image(principal, env, image, f"committed from VPS {task_id}")
    log.info("vps.committed", task=task_id, env=env, version=version["version"])
    return {"env": env, "version": version["version"]}


async def _receive(host: Any, envs: Any, node: str, task_id: int, path: Path) -> tuple[str, int]:
    """The runner's archive into ``path``: (sha256 hex, size)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    stream = await host.streams.open(node, {"kind": "commit", "task": task_id},
                                     timeout=OPEN_TIMEOUT)
    try:
        with open(path, "wb") as handle:
            while chunk := await stream.read():
                digest.update(chunk)
                size += len(chunk)
                await envs._blocking(handle.write, chunk)
        result = await stream.wait_closed()
    finally:
        stream.close()
    if result.get("error") or result.get("exit") not in (0, None) or size == 0:
        reason = result.get("error") or (f"exit code {result['exit']}" if result.get("exit")
                                         else "no data arrived")
        raise StreamError(f"node {node} could not commit VPS {task_id}: {reason}")
    return digest.hexdigest(), size
