"""VPS containers on the runner: the Docker backend's part for ``spec.kind == "vps"``.

A VPS is a container people work in for days. Compared with a task container it is

* created detached with restart policy ``unless-stopped``, label ``zriver.kind=vps`` (besides
  the task labels), the same resources and mounts, on the default bridge network, no port
  published; its entrypoint is ``/bin/sh /.zriver/vps-entry`` (the spec's command, if any, as
  arguments);
* prepared before its first start with one ``put_archive`` (files, never a command line):
  the entry script, an ed25519 host key made here (``/etc/ssh/ssh_host_ed25519_key`` and
  ``.pub``: kept in the container's filesystem, so restarts and adoption keep it) and
  ``/root/.ssh/authorized_keys`` (0600, ``/root/.ssh`` 0700) from ``spec.ssh_keys``. The public
  key is also kept in ``<data_dir>/vps/<task>/ssh_host_ed25519_key.pub`` and reported to the
  host (``vps.host_key``) after the start and again after every registration;
* followed until it really ends: a main process that exits while the restart policy brings it
  back is not an end. The end is a kill on request (``docker stop``, then the container is
  removed) or the container removed behind zriver's back. A container stopped outside zriver
  is started again;
* ``restart`` = ``docker restart`` (same container, same disk), then ``vps.restarted``;
* never ended by self-fencing (``survives_fencing``), and left running when the runner stops.

The entry script starts ``sshd -D -e`` when the image has one (making ``/run/sshd``), else
sleeps until ``TERM`` (``zriver connect`` still works through ``docker exec``). The image needs
``/bin/sh``; without it the VPS fails to start with a sentence saying so.

``commit_target`` is the runner's ``commit`` stream target: ``docker commit`` of the VPS
container to a temporary image whose ``docker save`` archive is streamed to the host.
"""

from __future__ import annotations

import asyncio
import io
import secrets
import shutil
import tarfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker.errors
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from zriver import lifecycle as lc
from zriver.runner.backends import Exit
from zriver.runner.backends.dockererrors import short_reason

if TYPE_CHECKING:
    from zriver.runner.backends.docker import DockerBackend, _Task

log = structlog.get_logger("zriver.runner")

VPS = "vps"
ENTRY = "/.zriver/vps-entry"
SHELL = "/bin/sh"
HOST_KEY = "etc/ssh/ssh_host_ed25519_key"
HOST_KEY_FILE = "ssh_host_ed25519_key.pub"
RESTART_POLICY = {"Name": "unless-stopped"}
RETRY_SECONDS = 1.0
DATA_CHUNK = 256 << 10
"""Largest ``pipe.write`` of the commit stream (the streams' DATA limit)."""

ENTRY_SCRIPT = """\
#!/bin/sh
# zriver VPS entry (put here by the runner): sshd in the foreground when the image has one,
# else sleep until TERM. Arguments, if any, are the VPS's command, run after sshd started.
trap 'exit 0' TERM INT
for sshd in /usr/sbin/sshd /usr/bin/sshd /sbin/sshd; do
    if [ -x "$sshd" ]; then
        [ -d /run/sshd ] || mkdir -p /run/sshd
        if [ "$#" -gt 0 ]; then
            "$sshd" -e
            exec "$@"
        fi
        exec "$sshd" -D -e
    fi
done
if [ "$#" -gt 0 ]; then
    exec "$@"
fi
echo "zriver: no sshd in this image: the VPS runs without one (zriver connect works)" >&2
while :; do
    sleep 3600 &
    wait $!
done
"""


class VpsError(Exception):
    """A VPS cannot be prepared; ``args[0]`` is the sentence its task's detail shows."""


# ---- what the container is made of ---------------------------------------------------------
def container_options(spec: Any) -> dict[str, Any]:
    """The ``create_container`` arguments that make a container a VPS (the entry script as
    entrypoint, the spec's command as its arguments)."""
    return {"entrypoint": [SHELL, ENTRY], "command": list(spec.command) or None}


def host_options() -> dict[str, Any]:
    """The ``create_host_config`` arguments of a VPS: restart policy, bridge network."""
    return {"restart_policy": dict(RESTART_POLICY), "network_mode": "bridge"}


def new_host_key() -> tuple[bytes, str]:
    """A fresh ed25519 host key: (OpenSSH private key file, ``ssh-ed25519 AAAA...`` line)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return private, public


def prepare_archive(private_key: bytes, public_key: str, ssh_keys: list[str]) -> bytes:
    """The tar ``put_archive`` writes at ``/`` before the first start: the entry script (0755),
    the host key pair (0600 / 0644) and ``/root/.ssh/authorized_keys`` (0600 in a 0700
    directory), all owned by root."""
    buffer = io.BytesIO()
    now = time.time()
    authorized = "".join(f"{line.strip()}\n" for line in ssh_keys if line.strip())
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, ".zriver", None, 0o755, now)
        _add(tar, ENTRY.lstrip("/"), ENTRY_SCRIPT.encode(), 0o755, now)
        _add(tar, HOST_KEY, private_key, 0o600, now)
        _add(tar, f"{HOST_KEY}.pub", f"{public_key}\n".encode(), 0o644, now)
        _add(tar, "root/.ssh", None, 0o700, now)
        _add(tar, "root/.ssh/authorized_keys", authorized.encode(), 0o600, now)
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes | None, mode: int, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.mode, info.mtime, info.uid, info.gid = mode, mtime, 0, 0
    if data is None:
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


# ---- the backend's VPS part ------------------------------------------------------------------
class VpsSupport:
    """The VPS half of one ``DockerBackend`` (blocking methods run in its worker threads)."""

    def __init__(self, backend: "DockerBackend") -> None:
        self.backend = backend
        self.host_keys: dict[int, str] = {}
        """VPS task id -> its public host key line (reported after every registration)."""

    # ---- host keys -----------------------------------------------------------------------
    def key_dir(self, task_id: int) -> Path:
        return self.backend.link.data_dir / "vps" / str(task_id)

    def prepare(self, container: str, task_id: int, ssh_keys: list[str]) -> str:
        """Before the first start: check ``/bin/sh``, write the files, keep the public key.
        Returns the public host key line; raises ``VpsError``."""
        api = self.backend.client().api
        try:
            stream, _ = api.get_archive(container, SHELL)
            for _chunk in stream:
                pass
        except docker.errors.NotFound:
            raise VpsError(f"a VPS needs {SHELL} in its image to run its entry script; this "
                           f"env has none") from None
        private, public = new_host_key()
        api.put_archive(container, "/", prepare_archive(private, public, ssh_keys))
        folder = self.key_dir(task_id)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / HOST_KEY_FILE).write_text(f"{public}\n")
        return public

    def adopted(self, task: "_Task") -> None:
        """A VPS found again after a runner restart: its host key from ``key_dir`` (read from
        the container, in the follow thread, when that copy is gone)."""
        try:
            self.host_keys[task.task_id] = (self.key_dir(task.task_id) / HOST_KEY_FILE) \
                .read_text().strip()
        except OSError:
            pass

    def _key_from_container(self, task: "_Task") -> None:
        """Worker thread: the public host key from the container's filesystem (kept again)."""
        try:
            stream, _ = self.backend.client().api.get_archive(task.container, f"/{HOST_KEY}.pub")
            with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
                member = tar.next()
                handle = tar.extractfile(member) if member is not None else None
                public = handle.read().decode().strip() if handle is not None else ""
        except Exception as exc:
            log.warning("vps.host_key_unknown", task=task.task_id, error=short_reason(exc))
            return
        if public:
            folder = self.key_dir(task.task_id)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / HOST_KEY_FILE).write_text(f"{public}\n")
            self.backend._post(self.started, task.task_id, public)

    def started(self, task_id: int, public: str) -> None:
        """Loop thread: remember the host key and report it."""
        self.host_keys[task_id] = public
        self._report(task_id, public)

    def report_all(self) -> None:
        """Loop thread, after each registration: report every VPS's host key again."""
        for task_id, public in list(self.host_keys.items()):
            if task_id in self.backend._tasks:
                self._report(task_id, public)

    def _report(self, task_id: int, public: str) -> None:
        async def send() -> None:
            try:
                await self.backend.link.request("vps.host_key", {"id": task_id,
                                                                 "host_key": public})
            except Exception as exc:  # retried after the next registration
                log.warning("vps.host_key_not_reported", task=task_id,
                            error=str(exc) or type(exc).__name__)

        asyncio.ensure_future(send())

    def forget(self, task_id: int) -> None:
        """The VPS ended: drop its kept key."""
        self.host_keys.pop(task_id, None)
        shutil.rmtree(self.key_dir(task_id), ignore_errors=True)

    # ---- following -----------------------------------------------------------------------
    def follow(self, task: "_Task") -> None:
        """Worker thread: copy output while the container lives; report its end only when it
        was killed on request (then removed) or removed outside zriver. Restarts by the
        policy, by ``restart`` or by a Docker daemon restart are followed through."""
        b = self.backend
        if task.adopted and task.task_id not in self.host_keys:
            self._key_from_container(task)
        truncate = not task.adopted
        while not b._closed.is_set():
            try:
                api = b.client().api
                state = api.inspect_container(task.container)["State"]
                if state.get("Running"):
                    b._copy_logs(api, task, truncate)
                    truncate = False
                    b._closed.wait(0.05)  # the state may lag the end of the log stream
                    continue
                if task.killing and not task.restarting:
                    break
                if state.get("Restarting") or task.restarting:
                    b._closed.wait(RETRY_SECONDS)
                    continue
                self._start_again(api, task)
            except docker.errors.NotFound:
                self.forget(task.task_id)
                b._finish(task, Exit(lc.FAILED, None, "the VPS container was removed outside "
                                                      "zriver"))
                return
            except Exception as exc:  # the daemon is away or restarting: follow it again
                if b._closed.is_set():
                    return
                if _is_unreachable(exc):
                    b._unreachable(exc)
                else:
                    log.warning("vps.follow_retry", task=task.task_id, error=short_reason(exc))
                b._closed.wait(RETRY_SECONDS)
        else:
            return
        self.forget(task.task_id)
        b._finish(task, b._outcome(task, state), remove=True)

    def _start_again(self, api, task: "_Task") -> None:
        """Stopped, not restarting, not on request: give Docker a moment (a daemon shutting
        down, a policy restart about to begin), then start it again."""
        self.backend._closed.wait(RETRY_SECONDS)
        state = api.inspect_container(task.container)["State"]
        if state.get("Running") or state.get("Restarting") or task.killing or task.restarting \
                or self.backend._closed.is_set():
            return
        log.warning("vps.started_again", task=task.task_id, container=task.container[:12],
                    exit_code=state.get("ExitCode"))
        api.start(task.container)

    # ---- signals -------------------------------------------------------------------------
    def restart(self, task: "_Task") -> None:
        """Worker thread: ``docker restart`` (same container and disk), then tell the host."""
        b = self.backend
        task.restarting = True
        try:
            b.client().api.restart(task.container, timeout=max(1, int(b.settings.kill_grace)))
        except Exception as exc:
            log.warning("vps.restart_failed", task=task.task_id, error=short_reason(exc))
            return
        finally:
            task.restarting = False
        log.info("vps.restarted", task=task.task_id, container=task.container[:12])

        async def tell() -> None:
            try:
                await b.link.request("vps.restarted", {"id": task.task_id})
            except Exception as exc:
                log.warning("vps.restart_not_recorded", task=task.task_id,
                            error=str(exc) or type(exc).__name__)

        b._post(lambda: asyncio.ensure_future(tell()))


def _is_unreachable(exc: BaseException) -> bool:
    import requests.exceptions

    return isinstance(exc, (docker.errors.DockerException, requests.exceptions.RequestException,
                            ConnectionError, OSError)) and not isinstance(exc,
                                                                          docker.errors.APIError)


# ---- the commit stream target ----------------------------------------------------------------
async def commit_target(target: dict, pipe: Any, backend: "DockerBackend") -> dict:
    """Stream target ``{"kind": "commit", "task": ID}`` (register it bound to the Docker
    backend: ``functools.partial(commit_target, backend=docker)``): ``docker commit`` of the
    VPS container (paused while it is copied) to a temporary image whose original command,
    entrypoint and environment come from the VPS's env version, and with the ``zriver.*``
    labels blanked; its ``docker save`` archive goes to the host as DATA; the temporary image
    is removed. Returns ``{"exit": 0}``; refuses (``StreamRefused``) a task that is not a VPS
    running here."""
    from zriver.runner.streams import StreamRefused

    task_id = target.get("task")
    task = backend._tasks.get(task_id) if isinstance(task_id, int) else None
    container = backend.container_of(task_id) if task is not None else None
    if task is None or task.kind != VPS or container is None:
        raise StreamRefused(f"no running VPS {task_id} on node {backend.link.node}")
    loop = asyncio.get_running_loop()
    image, image_id = await loop.run_in_executor(backend._pool, _commit, backend, container,
                                                 task_id)
    try:  # saved by id: the archive names no repository, so loading it tags nothing
        chunks = await loop.run_in_executor(backend._pool, _saved, backend, image_id)
        while True:
            chunk = await loop.run_in_executor(backend._pool, next, chunks, b"")
            if not chunk:
                break
            for start in range(0, len(chunk), DATA_CHUNK):
                await pipe.write(chunk[start:start + DATA_CHUNK])
        pipe.write_eof()
    finally:
        await loop.run_in_executor(backend._pool, _remove_image, backend, image)
    log.info("vps.committed", task=task_id, image=image)
    return {"exit": 0}


def _commit(backend: "DockerBackend", container: str, task_id: int) -> tuple[str, str]:
    """Worker thread: commit ``container``; the temporary image's ``repo:tag`` and id."""
    api = backend.client().api
    inspected = api.inspect_container(container)
    base = (api.inspect_image(inspected["Image"]).get("Config") or {})
    labels = {key: "" for key in (inspected["Config"].get("Labels") or {})
              if key.startswith("zriver.")}
    conf = {"Cmd": base.get("Cmd") or ([] if base.get("Entrypoint") else [SHELL]),
            "Entrypoint": base.get("Entrypoint") or [], "Env": base.get("Env") or [],
            "Labels": labels}
    repository = f"{backend.settings.image_prefix}-vps-commit"
    tag = f"{task_id}-{secrets.token_hex(4)}"
    made = api.commit(container, repository=repository, tag=tag, conf=conf,
                      message=f"committed from VPS {task_id}")
    return f"{repository}:{tag}", made["Id"]


def _saved(backend: "DockerBackend", image: str):
    return iter(backend.client().api.get_image(image, chunk_size=4 << 20))


def _remove_image(backend: "DockerBackend", image: str) -> None:
    try:
        backend.client().api.remove_image(image, force=True)
    except Exception as exc:
        log.warning("vps.commit_image_left", image=image, error=short_reason(exc))
