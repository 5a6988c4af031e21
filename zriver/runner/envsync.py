"""Make this node's Docker hold exactly the env version a task was submitted with.

``EnvSync.ensure(name, version, task_id)`` is called from a worker thread before a container
task starts and returns the local image tag ``<image_prefix>/<name>:<version>``:

1. the tag exists locally: done (remembered, so later tasks skip even that Docker call);
2. else the version's metadata (sha256, size, image id, archive path) is asked of the host
   (``env.version``);
3. the archive is taken from ``<shared_dir>/envs/<archive>`` when this node sees the shared
   directory, else downloaded from the host in 1 MiB chunks (``env.fetch``) into
   ``<data_dir>/envs/<name>/<version>.tar.part``; an interrupted download resumes where the
   part file ends;
4. size and sha256 are checked **before** loading: a corrupt or half-written archive is refused
   with a clear error and never reaches ``docker load`` (a bad download is deleted);
5. ``docker load``, check that the loaded image id is the one committed, tag it, delete the
   downloaded copy, and remove local versions of that env beyond ``env_keep_versions`` that no
   container uses.

Single flight: concurrent ``ensure`` calls for the same version share one sync; later callers
wait for the first one's result. Progress (``downloading 40%``, ``verifying``, ``loading``) is
reported through ``progress(name, version, phase, task_ids, done, total)`` (``done``/``total``:
bytes of the download, ``None`` in other phases; at each phase and at most every
``BYTES_EVERY`` seconds within a download) and in ``syncing()`` (heartbeats).
``ensure(name, version, None)`` syncs for no task (``env sync``).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import docker.errors
import structlog

log = structlog.get_logger("zriver.runner")

CHUNK = 1 << 20
HASH_BLOCK = 4 << 20
FETCH_TRIES = 3
BYTES_EVERY = 0.5
"""Seconds between two reports of a download's bytes."""


class EnvSyncError(Exception):
    """An env version could not be made available here; the message says why."""


@dataclass
class _Sync:
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    tasks: set[int] = field(default_factory=set)
    phase: str = "starting"
    done: int | None = None
    total: int | None = None


class EnvSync:
    """Single-flight env loading for one runner. See the module docstring.

    ``client()`` returns a connected Docker client; ``call_host(op, body)`` performs a request
    to the host from a worker thread; ``shared_dir()`` is the runner's current shared dir.
    """

    def __init__(self, client: Callable[[], Any], prefix: str, data_dir: Path,
                 shared_dir: Callable[[], str], call_host: Callable[[str, dict], dict],
                 progress: Callable[[str, str, str, list[int]], None], keep: int = 3) -> None:
        self._client = client
        self.prefix = prefix
        self.data_dir = data_dir
        self._shared_dir = shared_dir
        self._call_host = call_host
        self._progress = progress
        self.keep = max(1, keep)
        self._lock = threading.Lock()
        self._syncs: dict[tuple[str, str], _Sync] = {}
        self._present: set[str] = set()
        self.images: dict[str, list[str]] = {}
        """Env name -> versions present locally (refreshed by ``refresh``)."""
        self.loaded: list[tuple[str, str, str]] = []
        """Every ``docker load`` this runner did: (env, version, ``host`` | ``shared_dir``)."""

    def tag(self, name: str, version: str) -> str:
        return f"{self.prefix}/{name}:{version}"

    # ---- the one entry point -----------------------------------------------------------
    def ensure(self, name: str, version: str, task_id: int | None) -> str:
        """The local tag of ``name`` at ``version``, loading it first if needed (blocking);
        ``task_id`` None: no task waits for it."""
        tag = self.tag(name, version)
        if tag in self._present:
            return tag
        key = (name, version)
        with self._lock:
            sync = self._syncs.get(key)
            owner = sync is None
            if owner:
                sync = self._syncs[key] = _Sync()
            if task_id is not None:
                sync.tasks.add(task_id)
        if not owner:
            if task_id is not None:
                self._progress(name, version, sync.phase, [task_id], sync.done, sync.total)
            return sync.future.result()
        try:
            self._sync(name, version, sync)
            sync.future.set_result(tag)
            return tag
        except BaseException as exc:
            sync.future.set_exception(exc)
            raise
        finally:
            with self._lock:
                del self._syncs[key]

    def forget(self, tag: str) -> None:
        """The image behind ``tag`` vanished (removed by hand): check Docker next time."""
        self._present.discard(tag)

    def syncing(self) -> dict[str, dict[str, Any]]:
        """Env name -> ``{"version", "phase"}`` of the syncs running now, plus ``done`` and
        ``total`` (bytes) while one downloads."""
        with self._lock:
            return {name: {"version": version, "phase": s.phase}
                    | ({"done": s.done, "total": s.total} if s.total is not None else {})
                    for (name, version), s in self._syncs.items()}

    # ---- the work ----------------------------------------------------------------------
    def _phase(self, sync: _Sync, name: str, version: str, phase: str,
               done: int | None = None, total: int | None = None) -> None:
        sync.phase, sync.done, sync.total = phase, done, total
        with self._lock:
            tasks = sorted(sync.tasks)
        self._progress(name, version, phase, tasks, done, total)

    def _sync(self, name: str, version: str, sync: _Sync) -> None:
        client = self._client()
        tag = self.tag(name, version)
        try:
            client.api.inspect_image(tag)
            self._present.add(tag)
            self._note(name, version)
            return
        except docker.errors.ImageNotFound:
            pass
        started = time.monotonic()
        self._phase(sync, name, version, "asking the host")
        meta = self._call_host("env.version", {"name": name, "version": version})
        shared = self._shared_dir()
        source = Path(shared) / "envs" / meta["archive"] if shared else None
        downloaded = source is None or not source.is_file()
        if downloaded:
            source = self._download(name, version, meta, sync)
        else:
            self._phase(sync, name, version, "verifying")
            self._verify(source, meta, name, version)
        try:
            self._phase(sync, name, version, "loading")
            self._load(client, source, meta, name, version)
        finally:
            if downloaded:
                source.unlink(missing_ok=True)
        self.loaded.append((name, version, "host" if downloaded else "shared_dir"))
        self._present.add(tag)
        self._note(name, version)
        log.info("env.loaded", env=name, version=version, size=meta["size"],
                 source="host" if downloaded else "shared_dir",
                 seconds=round(time.monotonic() - started, 3))
        self._prune(client, name, keep_version=version)

    def _verify(self, path: Path, meta: dict, name: str, version: str) -> None:
        size = path.stat().st_size
        digest = _sha256(path) if size == meta["size"] else "-"
        if size != meta["size"] or digest != meta["sha256"]:
            raise EnvSyncError(
                f"the archive of env {name} version {version} at {path} is corrupt or "
                f"incomplete ({size} bytes, sha256 {digest[:16]}; expected {meta['size']} "
                f"bytes, sha256 {meta['sha256'][:16]}): refusing to load it")

    def _download(self, name: str, version: str, meta: dict, sync: _Sync) -> Path:
        folder = self.data_dir / "envs" / name
        folder.mkdir(parents=True, exist_ok=True)
        part = folder / f"{version}.tar.part"
        total = meta["size"]
        offset = part.stat().st_size if part.exists() else 0
        if offset > total:
            part.unlink()
            offset = 0
        if offset:
            log.info("env.download_resumed", env=name, version=version, offset=offset)
        shown, reported = -1, float("-inf")
        try:
            with open(part, "ab") as handle:
                while offset < total:
                    percent = offset * 100 // max(total, 1)
                    now = time.monotonic()
                    if percent // 20 != shown or now - reported >= BYTES_EVERY:
                        shown, reported = percent // 20, now
                        self._phase(sync, name, version, f"downloading {percent}%", offset,
                                    total)
                    reply = self._fetch(name, version, offset)
                    if reply["sha256"] != meta["sha256"]:
                        raise EnvSyncError(f"the host's archive of env {name} version {version} "
                                           f"changed during the download")
                    if not reply["data"]:
                        raise EnvSyncError(
                            f"the host's archive of env {name} version {version} is corrupt or "
                            f"incomplete (it ends at {offset} bytes, not {total}): refusing "
                            f"to load it")
                    handle.write(reply["data"])
                    offset += len(reply["data"])
            self._phase(sync, name, version, "verifying")
            self._verify(part, meta, name, version)
        except EnvSyncError:
            part.unlink(missing_ok=True)  # a bad download is never kept nor loaded
            raise
        return part

    def _fetch(self, name: str, version: str, offset: int) -> dict:
        for attempt in range(FETCH_TRIES):
            try:
                return self._call_host("env.fetch", {"name": name, "version": version,
                                                     "offset": offset, "limit": CHUNK})
            except TimeoutError:
                if attempt == FETCH_TRIES - 1:
                    raise EnvSyncError(f"the host did not answer while downloading env {name} "
                                       f"version {version} (at {offset} bytes)") from None
        raise AssertionError("unreachable")

    def _load(self, client, path: Path, meta: dict, name: str, version: str) -> None:
        try:
            with open(path, "rb") as handle:
                images = client.images.load(handle)
        except docker.errors.APIError as exc:
            raise EnvSyncError(f"docker load of env {name} version {version} failed: "
                               f"{exc.explanation or exc}") from None
        ids = {image.id for image in images}
        if meta["image_id"] not in ids:
            raise EnvSyncError(f"the archive of env {name} version {version} holds images "
                               f"{sorted(ids)}, not the committed {meta['image_id']}")
        client.api.tag(meta["image_id"], f"{self.prefix}/{name}", version)

    # ---- local versions ----------------------------------------------------------------
    def _note(self, name: str, version: str) -> None:
        with self._lock:
            versions = self.images.setdefault(name, [])
            if version not in versions:
                versions.append(version)

    def refresh(self, client) -> None:
        """Re-read which env versions this node's Docker has (blocking; probe thread)."""
        found: dict[str, list[str]] = {}
        for image in client.api.images(filters={"reference": f"{self.prefix}/*"}):
            for ref in image.get("RepoTags") or []:
                repo, _, version = ref.rpartition(":")
                if repo.startswith(self.prefix + "/"):
                    found.setdefault(repo[len(self.prefix) + 1:], []).append(version)
        with self._lock:
            self.images = found
        self._present = {self.tag(n, v) for n, vs in found.items() for v in vs}

    def remove(self, client, name: str, version: str | None, in_use: set[str]) -> list[str]:
        """Remove local versions of ``name`` (all, or ``version``) that no container uses."""
        removed = []
        for image in client.api.images(name=f"{self.prefix}/{name}"):
            for ref in image.get("RepoTags") or []:
                tag_version = ref.rpartition(":")[2]
                if (version is None or tag_version == version) and ref not in in_use:
                    if self._untag(client, ref):
                        removed.append(tag_version)
        with self._lock:
            left = [v for v in self.images.get(name, []) if v not in removed]
            self.images[name] = left
        return removed

    def _untag(self, client, ref: str) -> bool:
        try:
            client.api.remove_image(ref)
        except docker.errors.APIError:
            return False  # in use by a container: stays until the next prune
        self._present.discard(ref)
        return True

    def _prune(self, client, name: str, keep_version: str) -> None:
        """Keep the ``keep`` most recently loaded versions of ``name``."""
        try:
            tagged = []
            for image in client.api.images(name=f"{self.prefix}/{name}"):
                for ref in image.get("RepoTags") or []:
                    info = client.api.inspect_image(ref)
                    when = (info.get("Metadata") or {}).get("LastTagTime") or ""
                    tagged.append((when, ref))
            tagged.sort(reverse=True)
            syncing = {self.tag(n, v) for (n, v) in list(self._syncs)}
            for _, ref in tagged[self.keep:]:
                if ref != self.tag(name, keep_version) and ref not in syncing:
                    used = client.api.containers(all=True, filters={"ancestor": ref})
                    if not used:
                        self._untag(client, ref)
                        with self._lock:
                            versions = self.images.get(name, [])
                            if ref.rpartition(":")[2] in versions:
                                versions.remove(ref.rpartition(":")[2])
        except docker.errors.DockerException as exc:
            log.warning("env.prune_failed", env=name, error=str(exc))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()
