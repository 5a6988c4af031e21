"""The native backend: a task is a process group spawned with ``os.posix_spawnp``.

* Spawning: ``posix_spawnp`` with file actions redirecting stdin from ``/dev/null`` and
  stdout/stderr to the task's log files, in a new process group. This costs a fraction of
  ``subprocess``/asyncio subprocesses (see docs/performance.md).
* Cores: the child is pinned to its allocated cores (``sched_setaffinity`` on its pid) the
  moment ``posix_spawnp`` returns, i.e. as its ``execve`` completes and long before a
  dynamically linked program reaches ``main`` (only threads or children it made before that
  would keep the runner's mask). Pinning the runner's own thread around the spawn instead,
  so that the child inherits the mask, costs a migration of the runner's event loop to the
  task's core on every start: a quarter of the dispatch throughput (docs/performance.md).
* Working directory: likewise, the process changes into ``workdir`` around the spawn (the loop
  thread is the only one that spawns or uses relative paths).
* Memory: ``MemoryLimiter.apply`` right after the spawn (cgroup, or rlimit fallback). A task
  bound to a NUMA zone runs under ``numactl --membind`` when numactl is installed.
* Exit: a pidfd registered with the loop; ``waitpid`` on readiness. No SIGCHLD handler.
* kill: SIGTERM to the group (and SIGCONT, so a paused group can act on it), SIGKILL after the
  grace period. pause/resume: SIGSTOP/SIGCONT to the group.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from dataclasses import dataclass

import structlog

from zriver.host import lifecycle as lc
from zriver.runner.backends import Exit, Job, OnExit, StartError
from zriver.runner.cgroups import MemoryLimiter

log = structlog.get_logger("zriver.runner")

_OUT_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
_NUMACTL = shutil.which("numactl")


def membind_prefix(zone: int | None) -> list[str]:
    """``numactl --membind=ZONE --`` when the task is bound to a real NUMA zone and numactl
    is installed; otherwise nothing (the task is still pinned to the zone's cores)."""
    if zone is None or _NUMACTL is None or not os.path.isdir(f"/sys/devices/system/node/node{zone}"):
        return []
    return [_NUMACTL, f"--membind={zone}", "--"]


@dataclass(slots=True)
class _Proc:
    task_id: int
    pid: int
    pidfd: int
    killing: bool = False
    limited: bool = False
    kill_timer: asyncio.TimerHandle | None = None


class NativeBackend:
    """Runs jobs as local process groups; see the module docstring."""

    name = "native"

    def __init__(self, on_exit: OnExit, limiter: MemoryLimiter, kill_grace: float) -> None:
        self._on_exit = on_exit
        self._limiter = limiter
        self._grace = kill_grace
        self._procs: dict[int, _Proc] = {}
        self._loop = asyncio.get_running_loop()
        self._usable = os.sched_getaffinity(0)

    def running(self) -> list[int]:
        return list(self._procs)

    def pid_of(self, task_id: int) -> int | None:
        proc = self._procs.get(task_id)
        return None if proc is None else proc.pid

    def start(self, job: Job) -> str:
        """Spawn now; return ``"pid N"`` (the job is running on return)."""
        pid = self._spawn(job)
        if job.memory:
            try:
                self._limiter.apply(job.task_id, pid, job.memory)
            except OSError as exc:
                os.killpg(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise StartError(f"could not apply the memory limit: {exc}", 126) from None
        pidfd = os.pidfd_open(pid)
        self._procs[job.task_id] = _Proc(job.task_id, pid, pidfd, limited=bool(job.memory))
        self._loop.add_reader(pidfd, self._reap, job.task_id)
        return f"pid {pid}"

    def _spawn(self, job: Job) -> int:
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, job.stdout, _OUT_FLAGS, 0o644),
            (os.POSIX_SPAWN_OPEN, 2, job.stderr, _OUT_FLAGS, 0o644),
        ]
        cwd = os.getcwd() if job.spec.workdir else None
        try:
            if job.spec.workdir:
                os.chdir(job.spec.workdir)
            argv = membind_prefix(job.numa) + job.spec.command
            pid = os.posix_spawnp(argv[0], argv, job.env,
                                  file_actions=actions, setpgroup=0,
                                  setsigdef=(signal.SIGINT, signal.SIGTERM, signal.SIGPIPE))
        except FileNotFoundError as exc:
            if job.spec.workdir and cwd is not None and os.getcwd() == cwd:
                raise StartError(f"working directory {job.spec.workdir} does not exist", 126)
            raise StartError(f"command not found: {job.spec.command[0]}", 127) from exc
        except PermissionError:
            raise StartError(f"permission denied: {job.spec.command[0]}", 126) from None
        except NotADirectoryError:
            raise StartError(f"working directory {job.spec.workdir} is not a directory", 126)
        except OSError as exc:
            raise StartError(f"cannot start {job.spec.command[0]}: {exc.strerror}", 126) from None
        finally:
            if cwd is not None:
                os.chdir(cwd)
        self._pin(pid, job.cores)
        return pid

    def _pin(self, pid: int, cores: tuple[int, ...]) -> None:
        """Pin the fresh child to ``cores`` (those this runner may use; all of them: no-op)."""
        usable = [c for c in cores if c in self._usable]
        if not usable or len(usable) == len(self._usable):
            return
        try:
            os.sched_setaffinity(pid, usable)
        except ProcessLookupError:
            pass  # it already ended (and was not reaped yet: its pid is still ours)

    def signal(self, task_id: int, action: str) -> None:
        proc = self._procs.get(task_id)
        if proc is None:
            return
        if action == "kill":
            proc.killing = True
            self._killpg(proc, signal.SIGTERM)
            self._killpg(proc, signal.SIGCONT)
            proc.kill_timer = self._loop.call_later(self._grace, self._killpg, proc, signal.SIGKILL)
        elif action == "pause":
            self._killpg(proc, signal.SIGSTOP)
        elif action == "resume":
            self._killpg(proc, signal.SIGCONT)

    @staticmethod
    def _killpg(proc: _Proc, sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass

    def _reap(self, task_id: int) -> None:
        proc = self._procs.get(task_id)
        if proc is None:
            return
        try:
            pid, status = os.waitpid(proc.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = proc.pid, 0
        if pid == 0:
            return  # woken early; a stopped (paused) child is not an exit
        self._loop.remove_reader(proc.pidfd)
        os.close(proc.pidfd)
        if proc.kill_timer is not None:
            proc.kill_timer.cancel()
        del self._procs[task_id]
        if proc.killing:  # make sure no straggler of the group survives
            self._killpg(proc, signal.SIGKILL)
        outcome = self._outcome(proc, status)
        if proc.limited:
            self._limiter.remove(task_id)
        self._on_exit(task_id, outcome)

    def _outcome(self, proc: _Proc, status: int) -> Exit:
        if os.WIFEXITED(status):
            code = os.WEXITSTATUS(status)
            if proc.killing:
                return Exit(lc.KILLED, code, "killed on request")
            if code == 0:
                return Exit(lc.COMPLETED, 0, "")
            return Exit(lc.FAILED, code, f"exit code {code}")
        sig = os.WTERMSIG(status)
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        if proc.limited and self._limiter.oom_killed(proc.task_id):
            return Exit(lc.KILLED_OOM, 128 + sig, "killed by the OOM killer (memory limit)")
        if proc.killing:
            return Exit(lc.KILLED, 128 + sig, f"killed on request ({name})")
        return Exit(lc.FAILED, 128 + sig, f"killed by signal {name}")

    def kill_all(self) -> None:
        """SIGKILL every group (runner shutdown)."""
        for proc in list(self._procs.values()):
            self._killpg(proc, signal.SIGKILL)

    def close(self) -> None:
        for proc in list(self._procs.values()):
            try:
                self._loop.remove_reader(proc.pidfd)
                os.close(proc.pidfd)
            except (OSError, ValueError):
                pass
            if proc.kill_timer is not None:
                proc.kill_timer.cancel()
        self._procs.clear()
