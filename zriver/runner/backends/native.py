"""The native backend: a task is a process group spawned with ``os.posix_spawnp``.

* Spawning: ``posix_spawnp`` with file actions redirecting stdin from ``/dev/null`` and
  stdout/stderr to the task's log files, in a new process group. This costs a fraction of
  ``subprocess``/asyncio subprocesses (see docs/performance.md). A command name is looked up on
  PATH by ``CommandPaths`` (remembered for 2 s) and spawned by its path, so the vfork'd child
  makes one ``execve`` rather than one per PATH entry before the right one.
* Cores: when the loop thread is running on one of the task's cores, it takes the task's mask
  for the duration of the spawn (no migration is needed) and the child inherits it from its
  first instruction. Otherwise the child is pinned the moment ``posix_spawnp`` returns (its
  ``execve`` has just completed) by ``pin_tree``, which pins it, its threads and anything it
  already started. The loop thread never moves to another core: pinning it to a core it is not
  on migrates the event loop on every start, which cost a quarter of the dispatch throughput.
* Working directory: the process changes into ``workdir`` around the spawn (the loop thread
  is the only one that spawns or uses relative paths).
* Memory: ``MemoryLimiter.apply`` right after the spawn (cgroup, or rlimit fallback). A task
  bound to a NUMA zone runs under ``numactl --membind`` when numactl is installed.
* Exit: a pidfd registered with the loop; ``waitpid`` on readiness. No SIGCHLD handler.
* kill: SIGTERM to the group (and SIGCONT, so a paused group can act on it), SIGKILL after the
  grace period. pause/resume: SIGSTOP/SIGCONT to the group.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import shutil
import signal
import time
from dataclasses import dataclass
from typing import Callable

import structlog

from zriver.host import lifecycle as lc
from zriver.runner.backends import Exit, Job, OnExit, StartError
from zriver.runner.cgroups import MemoryLimiter

log = structlog.get_logger("zriver.runner")

_OUT_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
_DEFAULT_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE)  # Python ignores SIGPIPE
_NUMACTL = shutil.which("numactl")


def membind_prefix(zone: int | None) -> list[str]:
    """``numactl --membind=ZONE --`` when the task is bound to a real NUMA zone and numactl
    is installed; otherwise nothing (the task is still pinned to the zone's cores)."""
    if zone is None or _NUMACTL is None or not os.path.isdir(f"/sys/devices/system/node/node{zone}"):
        return []
    return [_NUMACTL, f"--membind={zone}", "--"]


def _load_getcpu() -> Callable[[], int]:
    """``sched_getcpu`` from libc (the CPU the calling thread runs on), or one answering -1."""
    try:
        getcpu = ctypes.CDLL(None).sched_getcpu
        getcpu.restype, getcpu.argtypes = ctypes.c_int, []
        return getcpu
    except (OSError, AttributeError):
        return lambda: -1


_current_cpu = _load_getcpu()


class CommandPaths:
    """Command name -> its absolute path on the runner's PATH, remembered for ``ttl`` seconds
    (like a shell's command hash; a program installed meanwhile is seen after that). Names
    with a slash are not looked up: they are paths, relative to the task's directory."""

    def __init__(self, ttl: float = 2.0) -> None:
        self._ttl = ttl
        self._known: dict[str, tuple[str, float]] = {}

    def resolve(self, name: str) -> str | None:
        if "/" in name:
            return None
        now = time.monotonic()
        known = self._known.get(name)
        if known is not None and known[1] > now:
            return known[0]
        path = shutil.which(name)
        if path is None or not os.path.isabs(path):
            self._known.pop(name, None)
            return None
        self._known[name] = (path, now + self._ttl)
        return path

    def forget(self, name: str) -> None:
        self._known.pop(name, None)


def pin_tree(pid: int, cores: list[int]) -> None:
    """Pin process ``pid``, its threads and all its descendants to ``cores``.

    Each thread is pinned before its children are listed (``/proc/<pid>/task/<tid>/children``):
    a child started after the pin inherits the mask, one started before is in the list. Threads
    or processes that end meanwhile, or that changed user (EPERM), are passed over."""
    todo = [pid]
    while todo:
        process = todo.pop()
        for tid in _threads(process):
            try:
                os.sched_setaffinity(tid, cores)
                todo.extend(int(child) for child in
                            _read_proc(f"/proc/{process}/task/{tid}/children").split())
            except (ProcessLookupError, PermissionError, FileNotFoundError):
                continue


def _threads(pid: int) -> list[int]:
    """Thread ids of ``pid`` (a fresh process has one: its ``stat`` says so, no listing)."""
    try:
        stat = _read_proc(f"/proc/{pid}/stat")
        if stat.rsplit(b")", 1)[1].split()[17] == b"1":  # num_threads, after "(comm)"
            return [pid]
        return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except (OSError, IndexError, ValueError):
        return [pid]


def _read_proc(path: str) -> bytes:
    """A small /proc file in one read (no buffered file object: this runs for every start)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 65536)
    finally:
        os.close(fd)


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
        self._paths = CommandPaths()

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
        cores = [c for c in job.cores if c in self._usable]
        if len(cores) == len(self._usable):
            cores = []  # all of them: the runner's own mask, inherited
        inherit = bool(cores) and _current_cpu() in cores
        cwd = os.getcwd() if job.spec.workdir else None
        try:
            if job.spec.workdir:
                os.chdir(job.spec.workdir)
            if inherit:
                os.sched_setaffinity(0, cores)  # no migration: this thread is on one of them
            argv = membind_prefix(job.numa) + job.spec.command
            pid = self._spawn_argv(argv, job.env, actions)
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
            if inherit:
                os.sched_setaffinity(0, self._usable)
            if cwd is not None:
                os.chdir(cwd)
        if cores and not inherit:
            pin_tree(pid, cores)
        return pid

    def _spawn_argv(self, argv: list[str], env: dict[str, str], actions: list) -> int:
        """``posix_spawn`` of the command's remembered path (one ``execve`` in the child
        instead of one per PATH entry before the right one); ``posix_spawnp`` otherwise, and
        once more when a remembered path has gone."""
        path = self._paths.resolve(argv[0])
        if path is not None:
            try:
                return os.posix_spawn(path, argv, env, file_actions=actions, setpgroup=0,
                                      setsigdef=_DEFAULT_SIGNALS)
            except FileNotFoundError:
                self._paths.forget(argv[0])
        return os.posix_spawnp(argv[0], argv, env, file_actions=actions, setpgroup=0,
                               setsigdef=_DEFAULT_SIGNALS)

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
