"""Spawning one native task's process group: the keeper's hot path (no asyncio, no I/O but the
spawn itself).

* ``posix_spawn`` with file actions redirecting stdin from ``/dev/null`` and stdout/stderr to
  the task's log files (opened here, owned by the task's account), in a new process group.
  This costs a fraction of ``subprocess`` (see docs/performance.md). A command name is
  looked up on PATH by ``CommandPaths`` (remembered for 2 s) and spawned by its path, so the
  vfork'd child makes one ``execve`` rather than one per PATH entry before the right one.
* Cores: when the calling thread runs on one of the task's cores, it takes the task's mask for
  the duration of the spawn (no migration is needed) and the child inherits it from its first
  instruction. Otherwise the child is pinned the moment ``posix_spawn`` returns (its ``execve``
  has just completed) by ``pin_tree``, which pins it, its threads and anything it already
  started. The calling thread never moves to another core.
* Working directory: checked first (a missing one is its own error, never "command not
  found"), then the process changes into it around the spawn (only the keeper's loop thread
  does anything).
* A task bound to a NUMA zone runs under ``numactl --membind`` when numactl is installed.
* Accounts: a task given an ``Account`` other than the caller's runs as it without a process
  of its own. The calling thread (root) sets its *real* ids to the account's around the spawn
  (``setresgid``, ``setgroups``, ``setresuid`` with the effective and saved ids left at 0) and
  spawns with ``resetids``: the vfork'd child sets its effective ids to those real ones, and
  its ``execve`` then makes real = effective = saved = the account, with no capabilities left.
  The thread takes its real ids and groups back at once (its effective uid stayed 0). It
  changes its own ids only (raw system calls; glibc's wrappers change every thread): while
  its real uid is the account's, ``kill(pid)`` and ``kill(-1)`` from that account, which check
  the main thread, are still refused (the keeper spawns from a second thread). glibc resets
  the ids before the file actions, so the log files are opened (and chowned) here as root and
  only ``dup2``-ed in the child; the working directory is checked with the account's ids
  (``access``, inside the switch: a directory it cannot enter is refused).
"""

from __future__ import annotations

import ctypes
import os
import platform
import shutil
import signal
import stat
import time
from typing import Callable

from zriver.runner.accounts import Account


class SpawnError(Exception):
    """The task could not start; ``exit_code`` follows shell conventions (126, 127)."""

    def __init__(self, detail: str, exit_code: int = 127) -> None:
        super().__init__(detail)
        self.detail, self.exit_code = detail, exit_code


_OUT_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
"""Opened as root: never through a symbolic link someone planted at a log's path."""
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

_ID_CALLS = {"x86_64": (117, 119, 116), "aarch64": (147, 149, 159)}
"""System call numbers of setresuid, setresgid and setgroups (gid_t is 32-bit on both)."""


class ThreadIds:
    """Sets the real uid, gid and groups of the calling thread only (the kernel keeps
    credentials per thread; glibc's ``setresuid`` & co. apply them to every thread). Where
    the system call numbers are not known, glibc's process-wide calls are used."""

    def __init__(self) -> None:
        numbers = _ID_CALLS.get(platform.machine())
        self._ids = self._groups_call = None
        if numbers is not None:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                long = ctypes.c_long
                self._ids = ctypes.CFUNCTYPE(long, long, long, long, long, use_errno=True)(
                    ("syscall", libc))
                self._groups_call = ctypes.CFUNCTYPE(long, long, long, ctypes.POINTER(
                    ctypes.c_uint), use_errno=True)(("syscall", libc))
            except (OSError, AttributeError):
                self._ids = self._groups_call = None
        self._setresuid, self._setresgid, self._setgroups = numbers or (0, 0, 0)
        self._arrays: dict[tuple[int, ...], ctypes.Array] = {}
        self.per_thread = self._ids is not None

    def set_real(self, uid: int, gid: int, groups: tuple[int, ...]) -> None:
        if not self.per_thread:
            os.setresgid(gid, -1, -1)
            os.setgroups(list(groups))
            os.setresuid(uid, -1, -1)
            return
        array = self._arrays.get(groups)
        if array is None:
            if len(self._arrays) > 256:
                self._arrays.clear()
            array = self._arrays[groups] = (ctypes.c_uint * max(1, len(groups)))(*groups)
        _check(self._ids(self._setresgid, gid, -1, -1))
        _check(self._groups_call(self._setgroups, len(groups), array))
        _check(self._ids(self._setresuid, uid, -1, -1))


def _check(result: int) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


class CommandPaths:
    """Command name -> its absolute path on a PATH (the task's own, which is the runner's
    unless the task sets one), remembered for ``ttl`` seconds (like a shell's command hash; a
    program installed meanwhile is seen after that). Names with a slash are not looked up:
    they are paths, relative to the task's directory."""

    def __init__(self, ttl: float = 2.0) -> None:
        self._ttl = ttl
        self._known: dict[tuple[str, str | None], tuple[str, float]] = {}

    def resolve(self, name: str, search: str | None = None) -> str | None:
        """The path of ``name`` on ``search`` (a PATH value; ``None``: this process's)."""
        if "/" in name:
            return None
        now = time.monotonic()
        key = (name, search)
        known = self._known.get(key)
        if known is not None and known[1] > now:
            return known[0]
        path = shutil.which(name, path=search)
        if path is None or not os.path.isabs(path):
            self._known.pop(key, None)
            return None
        self._known[key] = (path, now + self._ttl)
        return path

    def forget(self, name: str, search: str | None = None) -> None:
        self._known.pop((name, search), None)


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


class Spawner:
    """Spawns task process groups (see the module docstring); one per keeper."""

    def __init__(self) -> None:
        self._usable = os.sched_getaffinity(0)
        self._paths = CommandPaths()
        self._uid, self._gid = os.getuid(), os.getgid()
        self._groups = tuple(os.getgroups())
        self._ids = ThreadIds()
        self.switches = os.geteuid() == 0
        """Whether tasks can run as other accounts (this process is root)."""

    def spawn(self, argv: list[str], env: dict[str, str], workdir: str | None, stdout: str,
              stderr: str, cores: list[int], account: Account | None = None) -> int:
        """Start ``argv`` as a new process group (as ``account`` when given and this process
        can switch); return its pid or raise ``SpawnError``."""
        if workdir and not os.path.isdir(workdir):
            if os.path.exists(workdir):
                raise SpawnError(f"working directory {workdir} is not a directory", 126)
            raise SpawnError(f"working directory {workdir} does not exist", 126)
        switch = account is not None and self.switches and (
            account.uid != self._uid or account.gid != self._gid)
        chown_to = account if switch else None
        out = _open_log(stdout, chown_to)
        try:
            err = _open_log(stderr, chown_to)
        except SpawnError:
            os.close(out)
            raise
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, out, 1),
            (os.POSIX_SPAWN_DUP2, err, 2),
        ]
        cores = [c for c in cores if c in self._usable]
        if len(cores) == len(self._usable):
            cores = []  # all of them: the keeper's own mask, inherited
        inherit = bool(cores) and _current_cpu() in cores
        cwd = os.getcwd() if workdir else None
        switched = False
        try:
            if workdir:
                os.chdir(workdir)
            if inherit:
                os.sched_setaffinity(0, cores)  # no migration: this thread is on one of them
            if switch:
                switched = True
                self._become(account)
                if workdir and not os.access(workdir, os.X_OK):  # with the account's ids
                    raise SpawnError(f"working directory {workdir} is not accessible to "
                                     f"account {account.name}", 126)
            pid = self._spawn_argv(argv, env, actions, switch)
        except FileNotFoundError:
            raise SpawnError(f"command not found: {argv[0]}", 127) from None
        except PermissionError:
            raise SpawnError(f"permission denied: {argv[0]}"
                             + (f" (as account {account.name})" if switch else ""), 126) from None
        except OSError as exc:
            raise SpawnError(f"cannot start {argv[0]}: {exc.strerror}", 126) from None
        finally:
            if switched:
                self._restore()
            if inherit:
                os.sched_setaffinity(0, self._usable)
            if cwd is not None:
                os.chdir(cwd)
            os.close(out)
            os.close(err)
        if cores and not inherit:
            pin_tree(pid, cores)
        return pid

    def _become(self, account: Account) -> None:
        """Take the account's real ids and groups; the effective and saved ids stay root's."""
        self._ids.set_real(account.uid, account.gid, account.groups)

    def _restore(self) -> None:
        """Take this thread's own real ids and groups back (allowed: its euid is 0). Should
        that ever fail, the process must not go on spawning with the account's ids: it exits
        (its agent then ends the tasks it owned and starts another keeper)."""
        try:
            self._ids.set_real(self._uid, self._gid, self._groups)
        except OSError as exc:
            os.write(2, f"zriver keeper: cannot take its own ids back: {exc}\n".encode())
            os._exit(70)

    def _spawn_argv(self, argv: list[str], env: dict[str, str], actions: list,
                    resetids: bool) -> int:
        """``posix_spawn`` of the command's path on the task's PATH (remembered: one
        ``execve`` in the child instead of one per PATH entry before the right one), looked
        up once more when a remembered path has gone. ``FileNotFoundError`` when none."""
        if "/" in argv[0]:
            return os.posix_spawn(argv[0], argv, env, file_actions=actions, setpgroup=0,
                                  setsigdef=_DEFAULT_SIGNALS, resetids=resetids)
        search = env.get("PATH", os.defpath)
        for _ in range(2):
            path = self._paths.resolve(argv[0], search)
            if path is None:
                break
            try:
                return os.posix_spawn(path, argv, env, file_actions=actions, setpgroup=0,
                                      setsigdef=_DEFAULT_SIGNALS, resetids=resetids)
            except FileNotFoundError:
                self._paths.forget(argv[0], search)
        raise FileNotFoundError(argv[0])


def _open_log(path: str, account: Account | None) -> int:
    """Create (or truncate) a task's log file, owned by ``account`` when given."""
    try:
        fd = os.open(path, _OUT_FLAGS, 0o644)
    except OSError as exc:
        raise SpawnError(f"cannot open the log file {path}: {exc.strerror}", 126) from None
    if account is not None:
        try:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and (st.st_uid, st.st_gid) != (account.uid, account.gid):
                os.fchown(fd, account.uid, account.gid)  # never /dev/null or a pipe's owner
        except PermissionError:  # e.g. a root-squashed network file system: writable anyway
            pass
    return fd
