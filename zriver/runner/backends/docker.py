"""The Docker backend: a task runs in a fresh container made from its env version's image.

Contract (see ``zriver.runner.backends``): ``start`` checks what it can at once (Docker
available, privileged allowed, mounts sane) and raises ``StartError`` otherwise; the rest runs in
one thread per task, never on the loop:

1. ``EnvSync.ensure`` makes the task's pinned env version exist locally (one load per version,
   however many tasks wait for it);
2. create the container: ``--cores`` become the allocated cpuset plus a CPU quota of that many
   CPUs, ``--memory`` the memory limit (swap included, so there is no swap), ``--env``,
   ``--workdir``, bind mounts (``/shared`` = ``<shared_dir>/shared_data``, ``/local_temp`` =
   the runner's local temp dir, config ``additional_mounts``, the task's ``--mount``), GPUs as a
   device request, a NUMA zone as ``cpuset_mems``; labels ``zriver.task``, ``zriver.attempt``,
   ``zriver.node``, ``zriver.runner`` (this runner's id), ``zriver.env``, ``zriver.env_version``;
3. start it, report ``on_started``, then copy its output into the task's log files as it comes
   (``/containers/<id>/logs?follow=1``, demultiplexed: the same files as native tasks, so
   ``zriver logs`` and ``-f`` work unchanged);
4. when the stream ends: ``wait``, ``inspect`` and report the ``Exit`` (``killed_oom`` from
   Docker's ``State.OOMKilled``), then remove the container once the runner has recorded the
   result (the removal is queued behind the runner's outbox flush).

kill = ``docker stop`` with the runner's ``kill_grace`` (a paused container is unpaused first so
it can act on SIGTERM); pause/resume = ``docker pause``/``unpause``.

Containers outlive their runner: ``close`` (runner stop) leaves them running. ``adopt``, called
before the runner registers, finds this runner's containers by the ``zriver.runner`` label,
follows the running ones again (their results still arrive; their log files are rewritten from
Docker's copy) and reports the ones that ended meanwhile; the host's ``stop`` list at
registration then kills those it no longer knows. Containers merely *created* are removed.

A VPS (``spec.kind == "vps"``) is a container of the same make with a restart policy, an entry
script, runner-made SSH host keys, ``restart``, and an end only on request; it is never fenced.
Its part lives in ``zriver.runner.backends.vps``.

Docker availability is probed every ``docker_probe_interval`` seconds in a worker thread; the
result is in ``status()`` (heartbeats, ``zriver nodes``), and a change re-registers the runner
so the host's view of its backends follows.

The log copy reads Docker's multiplexed stream with a few private helpers of the ``docker``
SDK (``_get``, ``_url``, ``_get_raw_response_socket``, ``_disable_socket_timeout``), the same
ones its own ``logs(stream=True)`` uses, because the public call drops the stream kind.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import os
import socket
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

import docker
import docker.errors
import docker.types
import requests.exceptions
import structlog

from zriver.config import RunnerSettings
from zriver.errors import ZriverError
from zriver import lifecycle as lc
from zriver.runner.backends import Exit, Job, OnExit, OnStarted, StartError
from zriver.runner.backends.dockererrors import short_reason, start_failure
from zriver.runner.envsync import EnvSync, EnvSyncError
from zriver.runner.backends import vps
from zriver.runner.backends.vps import VPS, VpsError, VpsSupport

log = structlog.get_logger("zriver.runner")

API_TIMEOUT = 120
WAIT_TIMEOUT = 30
RETRY_SECONDS = 1.0
PROBE_TIMEOUT = 10
_HEADER = struct.Struct(">BxxxL")


@dataclass(slots=True)
class RunnerLink:
    """What the Docker backend uses of its runner (callbacks run on the loop thread)."""

    node: str
    runner_id: str
    data_dir: Path
    shared_dir: Callable[[], str]
    log_paths: Callable[[int], tuple[str, str]]
    attempt_of: Callable[[int], int]
    on_started: OnStarted
    on_exit: OnExit
    request: Callable[..., Awaitable[dict]]
    request_timeout: float
    on_availability: Callable[[bool], None]


@dataclass(slots=True)
class _Task:
    task_id: int
    attempt: int
    stdout: str
    stderr: str
    env: str
    version: str
    container: str | None = None
    started: bool = False
    killing: bool = False
    paused: bool = False
    done: bool = False
    adopted: bool = False
    kind: str = "task"
    restarting: bool = False
    stream: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class DockerBackend:
    """Runs jobs as containers; see the module docstring."""

    name = "docker"

    def __init__(self, settings: RunnerSettings, link: RunnerLink) -> None:
        self.settings = settings
        self.link = link
        self._loop = asyncio.get_running_loop()
        self._pool = concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="zriver-docker")
        self._tasks: dict[int, _Task] = {}
        self._client: docker.DockerClient | None = None
        self._client_lock = threading.Lock()
        self._closed = threading.Event()
        self._probe_loop: asyncio.Task | None = None
        self._usable = os.sched_getaffinity(0)
        self._dirs: set[Path] = set()
        self._adopted = False
        self.available = False
        self.error = "not checked yet"
        self.version = ""
        self.envsync = EnvSync(self.client, settings.image_prefix, link.data_dir,
                               link.shared_dir, self._call_host, self._progress,
                               settings.env_keep_versions)
        self.vps = VpsSupport(self)

    # ---- the Docker client and its availability -----------------------------------------
    def client(self) -> docker.DockerClient:
        """The connected client (made on first use; raises when the daemon does not answer)."""
        with self._client_lock:
            if self._client is None:
                if self._closed.is_set():
                    raise docker.errors.DockerException("the runner is stopping")
                pool = max(32, 4 * len(self._usable))
                if self.settings.docker_host:
                    self._client = docker.DockerClient(base_url=self.settings.docker_host,
                                                       timeout=API_TIMEOUT, max_pool_size=pool)
                else:
                    self._client = docker.from_env(timeout=API_TIMEOUT, max_pool_size=pool)
            return self._client

    def _probe(self) -> bool:
        """Check that the daemon answers (blocking); True when availability changed."""
        try:
            client = self.client()
            version = client.api.version().get("Version", "")
            self.envsync.refresh(client)
            if self._adopted:  # not before adopt: its leftovers' results must arrive first
                self._sweep(client)
            available, error = True, ""
        except Exception as exc:  # any failure to talk to Docker means "unavailable"
            where = (self.settings.docker_host or os.environ.get("DOCKER_HOST")
                     or "unix:///var/run/docker.sock")
            version, available, error = "", False, f"no answer from {where}: {short_reason(exc)}"
            with self._client_lock:
                self._client = None
        changed = available != self.available
        self.available, self.error, self.version = available, error, version
        if changed:
            log.info("docker.availability", node=self.link.node, available=available,
                     error=error or None, version=version or None)
        return changed

    def _sweep(self, client) -> None:
        """Remove ended containers of this runner whose result was already reported (their
        removal failed, e.g. while the daemon was away)."""
        followed = {str(task_id) for task_id in list(self._tasks)}
        for item in client.api.containers(all=True, filters={
                "label": f"zriver.runner={self.link.runner_id}", "status": ["exited", "dead"]}):
            if (item.get("Labels") or {}).get("zriver.task") not in followed:
                self._remove(item["Id"])

    async def _probe_every(self) -> None:
        while not self._closed.is_set():
            await asyncio.sleep(self.settings.docker_probe_interval)
            if await self._loop.run_in_executor(self._pool, self._probe):
                self.link.on_availability(self.available)

    async def recheck(self) -> bool:
        """Probe now (not at the next interval); return whether Docker answers."""
        if await self._loop.run_in_executor(self._pool, self._probe):
            self.link.on_availability(self.available)
        return self.available

    def status(self) -> dict[str, Any]:
        """For heartbeats: availability, the env versions present, syncs in progress."""
        return {"available": self.available, "error": self.error, "version": self.version,
                "images": {k: list(v) for k, v in self.envsync.images.items()},
                "syncing": self.envsync.syncing()}

    def _unreachable(self, exc: BaseException) -> None:
        """A call failed because the daemon is gone: say so now, not at the next probe."""
        if self.available:
            self.available, self.error = False, short_reason(exc)
            with self._client_lock:
                self._client = None
            self._post(self.link.on_availability, False)

    # ---- the backend interface ---------------------------------------------------------
    def running(self) -> list[int]:
        return list(self._tasks)

    def container_of(self, task_id: int) -> str | None:
        """The id of ``task_id``'s started container; ``None`` when this backend has no such
        task, or its container is not started yet or has ended (byte streams use it)."""
        task = self._tasks.get(task_id)
        if task is None or not task.started or task.done:
            return None
        return task.container

    def containers(self) -> dict[int, str]:
        """Task id -> container id, for the tasks whose container has started."""
        return {tid: t.container for tid, t in list(self._tasks.items())
                if t.container and t.started}

    def start(self, job: Job) -> None:
        spec = job.spec
        if not self.available:
            raise StartError(f"Docker is not available on {self.link.node}: {self.error}", 126)
        if not spec.container or not spec.env_version:
            raise StartError("a container task needs an env and a version pinned by the host", 126)
        if spec.privileged and not self.settings.allow_privileged:
            raise StartError(f"privileged containers are not allowed on {self.link.node} "
                             f"(its runner config has allow_privileged = false)", 126)
        binds = self._binds(spec.mounts)
        task = _Task(job.task_id, self.link.attempt_of(job.task_id), job.stdout, job.stderr,
                     spec.container, spec.env_version, kind=spec.kind)
        self._tasks[job.task_id] = task
        threading.Thread(target=self._run, args=(task, job, binds), daemon=True,
                         name=f"zriver-task-{job.task_id}").start()
        return None

    def signal(self, task_id: int, action: str, done: Callable[[], None] | None = None) -> None:
        """Kill, pause, resume or (a VPS) restart the task's container; ``done()`` runs on
        the loop once a pause or resume has taken effect (not when Docker refused it)."""
        task = self._tasks.get(task_id)
        if task is None:
            return
        if action == "kill":
            with task.lock:
                task.killing = True
                before_container, started = task.container is None, task.started
            if before_container:
                self._finish(task, Exit(lc.KILLED, None, "killed before its container started"))
            elif started:
                self._pool.submit(self._kill, task)
        elif action in ("pause", "resume") and task.started:
            task.paused = action == "pause"
            self._pool.submit(self._pause, task, action == "pause", done)
        elif action == "restart" and task.started and task.kind == VPS:
            self._pool.submit(self.vps.restart, task)

    def survives_fencing(self, task_id: int) -> bool:
        """A VPS is never ended by the runner's self-fencing (its restart policy and the
        host keep it; see ``zriver.runner.backends.vps``)."""
        task = self._tasks.get(task_id)
        return task is not None and task.kind == VPS

    def registered(self) -> None:
        """The runner (re-)registered: report the VPS host keys again."""
        self.vps.report_all()

    def close(self) -> None:
        """Stop watching; the containers keep running (``adopt`` finds them again)."""
        self._closed.set()
        if self._probe_loop is not None:
            self._probe_loop.cancel()
        for task in list(self._tasks.values()):
            if task.stream is not None:
                try:  # wakes the thread blocked reading it (closing the response would wait)
                    task.stream.shutdown(socket.SHUT_RDWR)
                except Exception:
                    pass
        self._tasks.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    # ---- starting ----------------------------------------------------------------------
    def _binds(self, mounts: list[str]) -> list[str]:
        shared = self.link.shared_dir()
        temp = Path(self.settings.local_temp_dir or self.link.data_dir / "local_temp")
        binds = [f"{self._dir(temp)}:/local_temp"]
        if shared:
            binds.append(f"{self._dir(Path(shared) / 'shared_data')}:/shared")
        for mount in [*self.settings.additional_mounts, *mounts]:
            parts = mount.split(":")
            source, target = parts[0], parts[1] if len(parts) > 1 else ""
            mode = parts[2] if len(parts) > 2 else "rw"
            if len(parts) > 3 or not source.startswith("/") or not target.startswith("/") \
                    or mode not in ("ro", "rw"):
                raise StartError(f"bad mount {mount!r}: use /HOST/PATH:/CONTAINER/PATH[:ro]", 126)
            if not os.path.exists(source):
                raise StartError(f"mount source {source} does not exist on {self.link.node}", 126)
            binds.append(f"{source}:{target}:{mode}")
        return binds

    def _dir(self, path: Path) -> Path:
        if path not in self._dirs:
            path.mkdir(parents=True, exist_ok=True)
            self._dirs.add(path)
        return path

    def _run(self, task: _Task, job: Job, binds: list[str]) -> None:
        """The whole life of one task's container (worker thread)."""
        spec = job.spec
        try:
            image = self.envsync.ensure(spec.container, spec.env_version, task.task_id)
            if task.done:
                return
            container = self._create(task, job, image, binds)
            with task.lock:
                abandoned = task.done
                task.container = container
            if abandoned:
                self._remove(container)
                return
            try:
                host_key = (self.vps.prepare(container, task.task_id, spec.ssh_keys)
                            if task.kind == VPS else None)
                self.client().api.start(container)
            except docker.errors.APIError as exc:
                self._remove(container)
                self._finish(task, start_failure(exc, job))
                return
            except VpsError as exc:
                self._remove(container)
                self._finish(task, Exit(lc.FAILED, 126, str(exc)))
                return
            with task.lock:
                task.started = True
                kill_now = task.killing
            self._post(self.link.on_started, task.task_id,
                       f"container {container[:12]}, env {task.env} {task.version}")
            if host_key is not None:
                self._post(self.vps.started, task.task_id, host_key)
            if kill_now:
                self._pool.submit(self._kill, task)
            self._follow(task)
        except EnvSyncError as exc:
            self._finish(task, Exit(lc.FAILED, 126, str(exc)))
        except ZriverError as exc:
            self._finish(task, Exit(lc.FAILED, 126, f"cannot sync env {task.env} "
                                                    f"{task.version}: {exc}"))
        except TimeoutError:
            self._finish(task, Exit(lc.FAILED, 126, f"cannot sync env {task.env} "
                                                    f"{task.version}: the host did not answer"))
        except docker.errors.APIError as exc:
            self._finish(task, Exit(lc.FAILED, 126,
                                    f"Docker could not create the container: {short_reason(exc)}"))
        except (docker.errors.DockerException, requests.exceptions.RequestException,
                ConnectionError) as exc:
            self._unreachable(exc)
            self._finish(task, Exit(lc.FAILED, 126, f"Docker is not available on "
                                                    f"{self.link.node}: {short_reason(exc)}"))
        except Exception as exc:
            log.exception("docker.task_crashed", task=task.task_id)
            self._finish(task, Exit(lc.FAILED, 126, f"internal error running the container: "
                                                    f"{exc!r}"))

    def _create(self, task: _Task, job: Job, image: str, binds: list[str]) -> str:
        api = self.client().api
        spec = job.spec
        cores = [c for c in job.cores if c in self._usable]
        cpus = min(len(job.cores), len(self._usable)) if job.cores else 0
        gpus = [docker.types.DeviceRequest(device_ids=[str(g) for g in job.gpus],
                                           capabilities=[["gpu"]])] if job.gpus else None
        host_config = api.create_host_config(
            binds=binds, cpuset_cpus=",".join(map(str, cores)) or None,
            nano_cpus=cpus * 10**9 or None, mem_limit=job.memory or None,
            memswap_limit=job.memory or None, device_requests=gpus,
            cpuset_mems=str(job.numa) if _real_zone(job.numa) else None,
            privileged=spec.privileged, log_config=docker.types.LogConfig(type="json-file"),
            **(vps.host_options() if spec.kind == VPS else {}))
        labels = {"zriver.task": str(task.task_id), "zriver.attempt": str(task.attempt),
                  "zriver.node": self.link.node, "zriver.runner": self.link.runner_id,
                  "zriver.env": task.env, "zriver.env_version": task.version}
        name = f"zriver-{self.link.runner_id[:12]}-{task.task_id}-{task.attempt}"
        kwargs = dict(command=spec.command, environment=container_environment(job),
                      labels=labels, name=name,
                      working_dir=spec.workdir or None, host_config=host_config, detach=True)
        if spec.kind == VPS:
            labels["zriver.kind"] = VPS
            kwargs.update(vps.container_options(spec))
        for attempt in range(2):
            try:
                return api.create_container(image, **kwargs)["Id"]
            except docker.errors.ImageNotFound:
                if attempt:
                    raise
                self.envsync.forget(image)  # removed behind our back: load it again
                image = self.envsync.ensure(task.env, task.version, task.task_id)
            except docker.errors.APIError as exc:
                if exc.status_code != 409 or attempt:
                    raise
                api.remove_container(name, force=True)  # left by a crash before it started
        raise AssertionError("unreachable")

    # ---- following ---------------------------------------------------------------------
    def _follow(self, task: _Task) -> None:
        """Copy output until the container ends, then report its outcome (worker thread)."""
        if task.kind == VPS:
            return self.vps.follow(task)
        truncate = not task.adopted
        while not self._closed.is_set():
            try:
                api = self.client().api
                self._copy_logs(api, task, truncate)
                truncate = False
                if self._closed.is_set():
                    return
                api.wait(task.container, timeout=WAIT_TIMEOUT)
                state = api.inspect_container(task.container)["State"]
                break
            except docker.errors.NotFound:
                self._finish(task, Exit(lc.FAILED, None, "the container was removed outside "
                                                         "zriver while it ran"))
                return
            except (docker.errors.DockerException, requests.exceptions.RequestException,
                    ConnectionError, OSError) as exc:
                if self._closed.is_set():
                    return
                if not isinstance(exc, requests.exceptions.ReadTimeout):
                    self._unreachable(exc)
                self._closed.wait(RETRY_SECONDS)  # the daemon restarts: follow it again
        else:
            return
        self._finish(task, self._outcome(task, state), remove=True)

    def _copy_logs(self, api, task: _Task, truncate: bool) -> None:
        """Docker's copy of the output, from the start, into the log files (same offsets)."""
        response = api._get(api._url("/containers/{0}/logs", task.container),
                            params={"stdout": 1, "stderr": 1, "follow": 1}, stream=True)
        api._raise_for_status(response)
        raw_socket = api._get_raw_response_socket(response)
        api._disable_socket_timeout(raw_socket)
        task.stream = raw_socket
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if truncate else 0)
        fds = {1: os.open(task.stdout, flags, 0o644), 2: os.open(task.stderr, flags, 0o644)}
        offsets = {1: 0, 2: 0}
        try:
            while True:
                header = response.raw.read(_HEADER.size)
                if len(header) < _HEADER.size:
                    break
                kind, length = _HEADER.unpack(header)
                data = response.raw.read(length) if length else b""
                if kind in fds and data:
                    os.pwrite(fds[kind], data, offsets[kind])
                    offsets[kind] += len(data)
        finally:
            for fd in fds.values():
                os.close(fd)
            task.stream = None
            response.close()

    def _outcome(self, task: _Task, state: dict[str, Any]) -> Exit:
        code = state.get("ExitCode")
        if state.get("OOMKilled") and code != 0:
            return Exit(lc.KILLED_OOM, code, "killed by the OOM killer (container memory limit)")
        if task.killing:
            return Exit(lc.KILLED, code, "killed on request")
        if code == 0:
            return Exit(lc.COMPLETED, 0, "")
        error = state.get("Error") or ""
        return Exit(lc.FAILED, code, f"exit code {code}" + (f": {error}" if error else ""))

    # ---- ending ------------------------------------------------------------------------
    def _finish(self, task: _Task, outcome: Exit, remove: bool = False) -> None:
        """Report ``outcome`` exactly once (any thread)."""
        with task.lock:
            if task.done:
                return
            task.done = True
        self._post(self._exited, task, outcome, remove)

    def _exited(self, task: _Task, outcome: Exit, remove: bool) -> None:
        if self._tasks.get(task.task_id) is task:
            del self._tasks[task.task_id]
        self.link.on_exit(task.task_id, outcome)
        if remove and task.container:
            # after the runner's flush (queued by on_exit): removed once the result is recorded
            self._loop.call_soon(self._submit, self._remove, task.container)

    def _submit(self, fn, *args) -> None:
        if not self._closed.is_set():
            self._pool.submit(fn, *args)

    def _remove(self, container: str) -> None:
        try:
            self.client().api.remove_container(container, force=True)
        except docker.errors.NotFound:
            pass
        except Exception as exc:
            log.warning("docker.remove_failed", container=container[:12], error=short_reason(exc))

    def _kill(self, task: _Task) -> None:
        api = self.client().api
        try:
            if task.paused:
                api.unpause(task.container)
            api.stop(task.container, timeout=max(1, math.ceil(self.settings.kill_grace)))
        except docker.errors.NotFound:
            pass
        except Exception as exc:
            log.warning("docker.kill_failed", task=task.task_id, error=short_reason(exc))

    def _pause(self, task: _Task, pause: bool, done: Callable[[], None] | None) -> None:
        try:
            api = self.client().api
            (api.pause if pause else api.unpause)(task.container)
        except Exception as exc:
            log.warning("docker.pause_failed", task=task.task_id, pause=pause, error=short_reason(exc))
            return
        if done is not None:
            self._post(done)

    def _post(self, fn, *args) -> None:
        """Run ``fn(*args)`` on the loop thread (dropped once the backend is closed)."""
        if self._closed.is_set():
            return

        def guarded() -> None:
            if not self._closed.is_set():
                fn(*args)

        try:
            self._loop.call_soon_threadsafe(guarded)
        except RuntimeError:
            pass  # the loop is closed: the runner is gone

    # ---- talking to the host from a worker thread -----------------------------------------
    def _call_host(self, op: str, body: dict) -> dict:
        future = asyncio.run_coroutine_threadsafe(self.link.request(op, body), self._loop)
        try:
            return future.result(self.link.request_timeout + 5)
        except (asyncio.TimeoutError, concurrent.futures.TimeoutError):
            future.cancel()
            raise TimeoutError(f"no answer from the host to {op}") from None

    def _progress(self, name: str, version: str, phase: str, tasks: list[int],
                  done: int | None = None, total: int | None = None) -> None:
        body = {"name": name, "version": version, "phase": phase, "tasks": tasks}
        if total is not None:  # bytes of a download (extra fields: older hosts ignore them)
            body |= {"done": done, "total": total}
        else:
            log.info("env.sync", env=name, version=version, phase=phase, tasks=tasks)

        def send() -> None:
            future = asyncio.ensure_future(self.link.request("env.syncing", body))
            future.add_done_callback(lambda f: f.cancelled() or f.exception())

        self._post(send)

    # ---- restart reconciliation --------------------------------------------------------
    async def adopt(self) -> list[tuple[int, int, str]]:
        """Probe Docker; take back this runner's containers: ``(task id, attempt, status)``.

        Called once, before the runner registers (so they count as its tasks)."""
        try:
            await asyncio.wait_for(self._loop.run_in_executor(self._pool, self._probe),
                                   PROBE_TIMEOUT)
        except asyncio.TimeoutError:
            self.available, self.error = False, f"no answer within {PROBE_TIMEOUT}s"
        self._probe_loop = asyncio.ensure_future(self._probe_every())
        if not self.available:
            return []
        try:
            found = await self._loop.run_in_executor(self._pool, self._discover)
        except Exception as exc:
            log.warning("docker.adopt_failed", error=short_reason(exc))
            return []
        adopted = []
        self._adopted = True
        for container, labels, status in found:
            task_id, attempt = int(labels["zriver.task"]), int(labels.get("zriver.attempt", 1))
            stdout, stderr = self.link.log_paths(task_id)
            task = _Task(task_id, attempt, stdout, stderr, labels.get("zriver.env", ""),
                         labels.get("zriver.env_version", ""), container, started=True,
                         paused=status == "paused", adopted=True,
                         kind=VPS if labels.get("zriver.kind") == VPS else "task")
            self._tasks[task_id] = task
            if task.kind == VPS:
                self.vps.adopted(task)
            adopted.append((task_id, attempt, status))
            threading.Thread(target=self._follow, args=(task,), daemon=True,
                             name=f"zriver-task-{task_id}").start()
            log.info("docker.adopted", task=task_id, container=container[:12], status=status)
        return adopted

    def _discover(self) -> list[tuple[str, dict, str]]:
        api = self.client().api
        found = []
        for item in api.containers(all=True, filters={"label": f"zriver.runner="
                                                                f"{self.link.runner_id}"}):
            labels = item.get("Labels") or {}
            if item.get("State") == "created" or not labels.get("zriver.task", "").isdigit():
                api.remove_container(item["Id"], force=True)
                continue
            found.append((item["Id"], labels, item.get("State", "")))
        return found

    def sync_env(self, body: dict) -> None:
        """Host command ``env.sync``: load an env version now, for no task; the end is
        reported as phase ``done`` or ``failed: <reason>`` (``env.syncing``)."""
        name, version = body.get("name"), body.get("version")
        if not isinstance(name, str) or not isinstance(version, str):
            return
        if not self.available:
            self._progress(name, version, f"failed: Docker is not available on this node "
                                          f"({self.error or 'no answer'})", [])
            return

        def load() -> None:
            try:
                self.envsync.ensure(name, version, None)
            except Exception as exc:
                self._progress(name, version, f"failed: {short_reason(exc)}", [])
            else:
                self._progress(name, version, "done", [])

        self._submit(load)

    def forget_env(self, body: dict) -> None:
        """Host command ``env.forget``: drop local copies of an env (or one version)."""
        name, version = body.get("name"), body.get("version")
        if not isinstance(name, str) or not self.available:
            return
        in_use = {self.envsync.tag(t.env, t.version) for t in self._tasks.values()}

        def remove() -> None:
            try:
                self.envsync.remove(self.client(), name, version, in_use)
            except Exception as exc:
                log.warning("env.forget_failed", env=name, error=short_reason(exc))

        self._submit(remove)


def container_environment(job: Job) -> dict[str, str]:
    """The task's variables inside its container. Docker passes the allocated GPUs in
    numbered from 0, so ``CUDA_VISIBLE_DEVICES`` counts them from 0 there (the node's
    indices, which it holds for a native task, would name no device: ``node::2,3`` saw
    ``2,3`` and CUDA found nothing); the node's indices stay in ``ZRIVER_GPUS``."""
    env = dict(job.env)
    if job.gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(len(job.gpus)))
        env["ZRIVER_GPUS"] = ",".join(map(str, job.gpus))
    return env


def _real_zone(zone: int | None) -> bool:
    """A NUMA zone the kernel knows (declared zones of a test node may not exist)."""
    return zone is not None and os.path.isdir(f"/sys/devices/system/node/node{zone}")
