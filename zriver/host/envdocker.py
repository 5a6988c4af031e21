"""The host's Docker work for environments: blocking calls, run in a worker thread only.

``EnvDocker`` creates an env's persistent container (from an image, a root filesystem tarball
or a Dockerfile build), commits it into an immutable version archive, keeps the container
running for ``env shell`` and removes what an ``env rm`` drops. Nothing here touches the host's
database or event loop: ``zriver.host.envs`` calls these methods through an executor and records
the results.

The env container runs a shell loop that only sleeps (entrypoint replaced), so it stays up while
people ``docker exec`` into it. A commit writes the *original* image's ``Entrypoint``/``Cmd``
back into the new image (``conf`` of the commit), so task containers behave as the base image
did. The container carries no labels: Docker copies a container's labels into the images
committed from it.

Archive = ``docker save`` of the committed image by id (no tag inside), streamed to a temporary
name in the env's store folder while hashing, fsynced, then renamed to
``<store>/<env>/<version>.tar`` with ``version`` = the first 12 hex digits of its sha256.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import docker
import docker.errors
import requests.exceptions

from zriver.durable import sync_dir
from zriver.errors import InvalidArgument, NotFound, Unavailable

Report = Callable[..., None]
"""``report(phase, done=None, total=None)``: where slow work stands (bytes when known)."""


def _quiet(phase: str, done: int | None = None, total: int | None = None) -> None:
    """The report of work nobody watches."""


KEEP_ALIVE = ["/bin/sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done"]
SAVE_CHUNK = 4 << 20
BUILD_LOG_TAIL = 20


@dataclass(slots=True)
class Created:
    """An env container made from some base: its id, the base image and its run config."""

    container: str
    image: str
    config: dict[str, Any]


@dataclass(slots=True)
class Archive:
    """One committed version written to the store."""

    version: str
    sha256: str
    size: int
    image_id: str
    archive: str
    """Path of the archive relative to the store folder (``<env>/<version>.tar``)."""


def connect(docker_host: str, timeout: float = 120) -> docker.DockerClient:
    """A Docker client for ``docker_host`` (empty: the environment's default); ``Unavailable``
    naming the reason when the daemon does not answer."""
    try:
        if docker_host:
            return docker.DockerClient(base_url=docker_host, timeout=timeout)
        return docker.from_env(timeout=timeout)
    except docker.errors.DockerException as exc:
        raise Unavailable(f"Docker is not available on the host ({socket.gethostname()}): "
                          f"{exc}") from None


def is_unreachable(exc: BaseException) -> bool:
    """True when ``exc`` means the daemon cannot be talked to at all (down, restarting)."""
    return isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                            ConnectionError, FileNotFoundError))


class EnvDocker:
    """Blocking env operations on one Docker daemon. Thread-safe enough for a few workers."""

    def __init__(self, docker_host: str, prefix: str, store: Path, shared_data: Path | None):
        self.docker_host = docker_host
        self.prefix = prefix
        self.store = store
        self.shared_data = shared_data
        self._client: docker.DockerClient | None = None

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            self._client = connect(self.docker_host)
        return self._client

    def call(self, fn, *args, **kwargs):
        """Run one Docker operation, turning "daemon unreachable" into ``Unavailable``."""
        try:
            return fn(*args, **kwargs)
        except docker.errors.DockerException as exc:
            if is_unreachable(exc) or is_unreachable(exc.__context__ or exc):
                self._client = None
                raise Unavailable(f"Docker on the host does not answer: {exc}") from None
            raise
        except (requests.exceptions.RequestException, ConnectionError) as exc:
            self._client = None
            raise Unavailable(f"Docker on the host does not answer: {exc}") from None

    def repository(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    def version_tag(self, name: str, version: str) -> str:
        return f"{self.repository(name)}:{version}"

    # ---- creating ----------------------------------------------------------------------
    def from_image(self, name: str, image: str, report: Report = _quiet) -> Created:
        return self.call(self._from_image, name, image, report)

    def _from_image(self, name: str, image: str, report: Report) -> Created:
        try:
            found = self.client.images.get(image)
        except docker.errors.ImageNotFound:
            report("pulling")
            try:
                found = self.client.images.pull(image)
            except docker.errors.DockerException as exc:
                raise NotFound(f"image {image!r} is not in the host's Docker and could not be "
                               f"pulled: {_explain(exc)}") from None
        report("starting")
        return self._container(name, found.id, image, found.attrs.get("Config") or {})

    def from_tar(self, name: str, path: Path, report: Report = _quiet) -> Created:
        return self.call(self._from_tar, name, path, report)

    def _from_tar(self, name: str, path: Path, report: Report) -> Created:
        tag = f"{self.repository(name)}:base"
        try:
            with open(path, "rb") as handle:
                self.client.api.import_image(_Counting(handle, "importing", report),
                                             repository=self.repository(name), tag="base")
            image = self.client.images.get(tag)
        except docker.errors.DockerException as exc:
            raise InvalidArgument(f"Docker could not import the tarball as a root filesystem: "
                                  f"{_explain(exc)}") from None
        report("starting")
        return self._container(name, image.id, tag, image.attrs.get("Config") or {})

    def from_build(self, name: str, context: Path, dockerfile: str,
                   report: Report = _quiet) -> Created:
        return self.call(self._from_build, name, context, dockerfile, report)

    def _from_build(self, name: str, context: Path, dockerfile: str, report: Report) -> Created:
        tag = f"{self.repository(name)}:base"
        report("building")
        try:
            with open(context, "rb") as handle:
                image, _ = self.client.images.build(fileobj=handle, custom_context=True,
                                                    dockerfile=dockerfile, tag=tag, rm=True,
                                                    forcerm=True, pull=False)
        except docker.errors.BuildError as exc:
            lines = [str(item.get("stream") or item.get("error") or "").rstrip()
                     for item in exc.build_log if isinstance(item, dict)]
            tail = "\n".join(line for line in lines if line)[-2000:]
            raise InvalidArgument(f"the Dockerfile did not build: {exc.msg}\n{tail}") from None
        except docker.errors.APIError as exc:
            raise InvalidArgument(f"the Dockerfile did not build: {_explain(exc)}") from None
        report("starting")
        return self._container(name, image.id, tag, image.attrs.get("Config") or {})

    def _container(self, name: str, image_id: str, image: str, config: dict) -> Created:
        """Create and start the env's persistent container from ``image_id``."""
        run_config = {"Entrypoint": config.get("Entrypoint") or [],
                      "Cmd": config.get("Cmd") or ["/bin/sh"]}
        container = self.start_container(name, image_id)
        return Created(container, image, run_config)

    def start_container(self, name: str, image: str) -> str:
        api = self.client.api
        binds = [f"{self.shared_data}:/shared"] if self.shared_data else []
        if self.shared_data:
            self.shared_data.mkdir(parents=True, exist_ok=True)
        container_name = f"{self.prefix.replace('/', '-')}-{name}-{secrets.token_hex(3)}"
        created = api.create_container(
            image, entrypoint=KEEP_ALIVE, name=container_name, hostname=f"env-{name}",
            host_config=api.create_host_config(binds=binds, init=False), detach=True)
        try:
            api.start(created["Id"])
        except docker.errors.APIError as exc:
            api.remove_container(created["Id"], force=True)
            raise InvalidArgument(f"the env container of {name} cannot start (an env needs "
                                  f"/bin/sh in its image): {_explain(exc)}") from None
        return created["Id"]

    # ---- running container -------------------------------------------------------------
    def state(self, container: str | None) -> str:
        """``running``, ``exited``, ... or ``missing``."""
        if not container:
            return "missing"
        try:
            return self.call(self.client.api.inspect_container, container)["State"]["Status"]
        except docker.errors.NotFound:
            return "missing"

    def ensure_running(self, name: str, container: str | None, image: str) -> str:
        """The env container's id, started (or made again from ``image``) when needed."""
        status = self.state(container)
        if status == "missing":
            return self.call(self.start_container, name, image)
        if status == "paused":
            self.call(self.client.api.unpause, container)
        elif status != "running":
            self.call(self.client.api.start, container)
        return container

    def load(self, path: Path) -> str:
        """``docker load`` of the ``docker save`` archive at ``path``; the loaded image's id."""
        return self.call(self._load, path)

    def _load(self, path: Path) -> str:
        try:
            with open(path, "rb") as handle:
                lines = list(self.client.api.load_image(handle))
        except docker.errors.APIError as exc:
            raise InvalidArgument(f"Docker could not load the image archive: "
                                  f"{_explain(exc)}") from None
        for line in lines:
            text = str(line.get("stream", "")) if isinstance(line, dict) else ""
            if "Loaded image ID:" in text:
                return text.split("Loaded image ID:", 1)[1].strip()
            if "Loaded image:" in text:
                return self.client.images.get(text.split("Loaded image:", 1)[1].strip()).id
        raise InvalidArgument(f"Docker loaded the image archive but named no image: {lines!r}")

    def replace_container(self, name: str, old: str | None, image: str) -> str:
        """A new env container from ``image`` in place of ``old`` (removed): its id."""
        container = self.call(self.start_container, name, image)
        if old:
            try:
                self.call(self.client.api.remove_container, old, force=True)
            except docker.errors.NotFound:
                pass
        return container

    # ---- committing --------------------------------------------------------------------
    def commit(self, name: str, container: str, config: dict, message: str,
               report: Report = _quiet) -> Archive:
        """Commit ``container`` and save the image into the store; ``report`` hears
        ``committing`` (no bytes: Docker tells none), then ``saving`` with the archive's
        bytes against the image's size (the archive ends a little past it)."""
        return self.call(self._commit, name, container, config, message, report)

    def _commit(self, name: str, container: str, config: dict, message: str,
                report: Report) -> Archive:
        api = self.client.api
        report("committing")
        try:
            result = api.commit(container, message=message or None, conf=dict(config))
        except docker.errors.NotFound:
            raise NotFound(f"the container of env {name} is gone; `zriver env shell {name}` "
                           f"makes it again from its newest version") from None
        image_id = result["Id"]
        archive = self._save(name, image_id, report)
        api.tag(image_id, self.repository(name), archive.version)
        return archive

    def _save(self, name: str, image_id: str, report: Report) -> Archive:
        folder = self.store / name
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".incoming-{secrets.token_hex(6)}.tar"
        digest, size = hashlib.sha256(), 0
        expected = self.client.api.inspect_image(image_id).get("Size") or None
        report("saving", 0, expected)
        try:
            with open(tmp, "wb") as handle:
                for chunk in self.client.api.get_image(image_id, chunk_size=SAVE_CHUNK):
                    digest.update(chunk)
                    handle.write(chunk)
                    size += len(chunk)
                    report("saving", size, expected)
                report("writing to disk", size, size)
                handle.flush()
                os.fsync(handle.fileno())
            sha = digest.hexdigest()
            final = folder / f"{sha[:12]}.tar"
            if final.exists() and final.stat().st_size == size:
                tmp.unlink()  # the very same content was committed before
            else:
                tmp.replace(final)
                sync_dir(folder)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return Archive(sha[:12], sha, size, image_id, f"{name}/{final.name}")

    # ---- removing ----------------------------------------------------------------------
    def remove_version(self, name: str, version: str, archive: str) -> None:
        (self.store / archive).unlink(missing_ok=True)
        try:
            self.call(self.client.api.remove_image, self.version_tag(name, version))
        except docker.errors.DockerException:
            pass  # not there, or still used by a container: the tag may stay

    def remove_env(self, name: str, container: str | None, base_image: str) -> None:
        if container:
            try:
                self.call(self.client.api.remove_container, container, force=True)
            except docker.errors.NotFound:
                pass
        if base_image == f"{self.repository(name)}:base":
            try:
                self.call(self.client.api.remove_image, base_image)
            except docker.errors.DockerException:
                pass
        try:
            (self.store / name).rmdir()
        except OSError:
            pass

    def ping(self) -> dict[str, Any]:
        try:
            version = self.call(self.client.version)
            return {"available": True, "version": version.get("Version", "")}
        except Unavailable as exc:
            return {"available": False, "error": str(exc)}


class _Counting:
    """A file read by Docker's import, telling ``report`` how much was read of it."""

    def __init__(self, handle: Any, phase: str, report: Report) -> None:
        self.handle, self.phase, self.report = handle, phase, report
        self.total = os.fstat(handle.fileno()).st_size
        self.done = 0

    def __len__(self) -> int:
        return self.total

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.done += len(data)
        self.report(self.phase, self.done, self.total)
        return data

    def __iter__(self) -> Iterator[bytes]:
        while data := self.read(SAVE_CHUNK):
            yield data


def _explain(exc: BaseException) -> str:
    text = getattr(exc, "explanation", None) or str(exc)
    return str(text).strip()
