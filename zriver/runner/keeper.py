"""The keeper: a small long-lived process per node that owns the native tasks' processes.

The agent (``zriver runner``) talks to the host and may restart at any time: an upgrade, a
crash, SIGTERM. The keeper spawns every native task, is its parent, reaps it and keeps its exit
status until the agent says the host has it, so a restarted agent re-adopts the tasks that
still run and reports the ends that happened while it was away (as ``slurmstepd`` outlives
``slurmd``). The keeper is started by the first agent that finds none, detaches from it
(its own session, reparented to init), and exits once no agent is connected and it owns no
task; the exits nobody collected are then in ``keeper-exits`` in the data dir, which the next
keeper reads at start.

Wire: a ``SOCK_SEQPACKET`` Unix socket in the abstract namespace named after the data dir
(``socket_address``), one msgpack map per packet (``batch {messages}`` when one side has
several in one loop turn), one agent connection at a time (a second is refused: one runner per
data directory), only from the keeper's own uid. Requests:

* ``hello {node, kill_grace, env_base, task_user}`` -> ``hello {tasks, exits, switches,
  signalled}``:
  what runs and what ended unseen; ``env_base`` is the runner's environment, which every
  spawn's ``env`` amends; ``task_user`` is the account of tasks that name none and whose
  owner has none here (``nobody`` until a hello says otherwise); ``switches``: whether this
  keeper runs tasks as other accounts (it runs as root);
* ``spawn {id, attempt, argv, env, workdir, stdout, stderr, cores, memory, fence, user?,
  owner?, behind?}`` -> ``started {id, pid, started}``, or an ``exit`` when it could not
  start. The task runs as ``user`` when given, else as ``owner``'s own account when one
  exists here and is not root, else as ``task_user`` (``zriver.runner.accounts``), with
  ``HOME``, ``USER`` and ``LOGNAME`` set for it unless its ``env`` sets them, in ``workdir``
  or, without one, the account's home directory (``/`` when it has none); an account that
  does not exist fails the start (126). A keeper not running as root runs every task as
  itself. With ``behind``
  (a task this keeper runs or holds staged) it is staged: spawned the moment that one ends,
  in the same turn that reaps it (a chained start costs no round trip to the agent); staged
  starts are dropped when the agent disconnects (the host sends them again or requeues them);
  a ``kill`` of a staged task ends it ``killed`` "before it started", and what waited behind it
  moves up;
* ``signal {id, action, reason, quiet?}``: ``kill`` (SIGTERM + SIGCONT, SIGKILL after the
  grace, even if the agent goes away meanwhile; a staged one is dropped, silently with
  ``quiet``), ``pause``, ``resume`` (-> ``signalled {id, action}`` once the process group
  has the signal; the hello says ``signalled: true`` for keepers that send it);
* ``acked {confirm, forget}``: the host has recorded these tasks running (``confirm``) / has
  these ends (``forget``: the keeper drops them);
* ``lease {provisional_until, fence_at, fence_grace, reason}`` (``time.monotonic`` values, one
  clock for every process of the machine): see below;
* ``kill_all {reason}``: end every task (``zriver runner --kill-tasks``).

Events: ``exit {id, attempt, state, exit_code, detail, at}``.

The lease keeps at most one live run of a task even when the agent is dead. A task started
while the host had not yet recorded it (not ``confirm``-ed) is killed at ``provisional_until``
(the agent's contact with the host ran out: the host requeues such work once that time has
surely passed) and its end says ``pending``: it must run again. Every task started with
``fence`` is ended at ``fence_at`` (self-fencing: past it, the host has given the node's
tasks up and may run their retries elsewhere), and its end says ``lost``, which the host
retries when the task asked for retries. Spawns after ``provisional_until`` are refused.

If the keeper itself dies, its tasks run on without a parent that can read their status: the
agent sees the connection close and kills their process groups (``docs/reliability.md``).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import selectors
import signal
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from zriver import gctune
from zriver.runner import accounts
from zriver.runner.spawn import SpawnError, Spawner

MAX_PACKET = 4 * 1024 * 1024
"""The largest message either side sends (a spawn carries the task's environment)."""
EXITS_FILE = "keeper-exits"
LOCK_FILE = "keeper.lock"
LOG_FILE = "keeper.log"
STARTED_HOLD = 0.002
"""A ``started`` event waits this long for the task's exit, so that a task that ends at once
costs the agent one wake-up, not two. The agent holds a ``running`` update as long, counted
from the same start (``RUNNING_HOLD``), so this hold delays no report."""
START_WAIT = 30.0
"""A keeper no agent connects to within this many seconds exits."""

COMPLETED, FAILED, KILLED, KILLED_OOM, LOST, PENDING = (
    "completed", "failed", "killed", "killed_oom", "lost", "pending")


def socket_address(data_dir: str | Path) -> bytes:
    """The keeper's abstract socket name for ``data_dir`` (no path length limit, no file)."""
    digest = hashlib.sha256(os.path.realpath(str(data_dir)).encode()).hexdigest()[:20]
    return b"\0zriver-keeper-" + digest.encode()


MAX_BATCH = 256
"""At most this many messages ride in one packet."""


def pack(message: dict[str, Any]) -> bytes:
    return msgpack.packb(message)


def pack_batch(messages: list[dict[str, Any]]) -> bytes:
    """One message as itself, several as ``batch {messages}`` (one packet a loop turn)."""
    if len(messages) == 1:
        return pack(messages[0])
    return pack({"op": "batch", "messages": messages})


def unbatch(message: dict[str, Any]) -> list[dict[str, Any]]:
    if message.get("op") == "batch":
        return [m for m in message.get("messages") or [] if isinstance(m, dict)]
    return [message]


class PacketReader:
    """Receives packets into one buffer of ``MAX_PACKET`` bytes, made once. (A
    ``recv(MAX_PACKET)`` maps a fresh 4 MiB object for each packet and then shrinks it: an
    ``mremap`` whose TLB flush interrupts every CPU that runs a thread of the process, ~15 us
    a packet.)"""

    def __init__(self) -> None:
        self._buffer = bytearray(MAX_PACKET)
        self._view = memoryview(self._buffer)

    def receive(self, sock: socket.socket) -> memoryview:
        """The next packet (valid until the next call; empty: the peer has gone). Raises
        what ``recv_into`` raises (``BlockingIOError`` on a non-blocking socket)."""
        return self._view[:sock.recv_into(self._buffer)]


def unpack(data: bytes | memoryview) -> dict[str, Any]:
    message = msgpack.unpackb(data, raw=False, strict_map_key=False)
    if not isinstance(message, dict):
        raise ValueError("a keeper message is a map")
    return message


def home_of(account: accounts.Account | None, env: dict[str, str]) -> str:
    """Where a task that names no working directory starts: its account's home directory,
    as a login or cron would; ``/`` when that does not exist (``nobody``'s
    ``/nonexistent``). Never the keeper's own directory (the runner's data dir or wherever
    it was started). ``env``: the task's, whose ``HOME`` counts when it runs as the keeper."""
    home = account.home if account is not None else env.get("HOME", "")
    return home if home and os.path.isdir(home) else "/"


def signal_name(sig: int) -> str:
    return signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)


@dataclass(slots=True)
class Task:
    """One process group the keeper owns."""

    id: int
    attempt: int
    pid: int
    pidfd: int
    started: float
    fence: bool
    confirmed: bool = False
    limited: bool = False
    killing: str | None = None
    """Why it is being ended (its ``exit`` says so), or ``None``."""
    requeue: bool = False
    """Killed as a provisional start: its end is ``pending``."""
    fenced: bool = False
    """Ended by the fence: its end is ``lost`` (the host may retry it; never ``killed``)."""
    kill_at: float | None = None


class Keeper:
    """The keeper's state and loop; ``serve`` returns when it is time to exit."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.spawner = Spawner()
        self.selector = selectors.DefaultSelector()
        self.tasks: dict[int, Task] = {}
        self.staged: dict[int, dict[str, Any]] = {}  # task id -> the spawn waiting behind it
        self.staged_ids: dict[int, int] = {}  # staged task id -> the id it waits behind
        self.exits: dict[int, dict[str, Any]] = self._load_exits()
        self.conn: socket.socket | None = None
        self.reader = PacketReader()
        self.out: list[dict[str, Any]] = []
        self.held: dict[int, tuple[float, dict[str, Any]]] = {}  # task id -> (due, started)
        self.env_base: dict[str, str] = {}
        self.accounts = accounts.Accounts()
        self.task_user = "nobody"
        self.node = ""
        self.grace = 10.0
        self.limiter = None
        self.provisional_until: float | None = None
        self.fence_at: float | None = None
        self.fence_reason = ""
        self.fence_grace = 0.0
        self.served = False
        self.born = time.monotonic()
        self.stopping = False
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(socket_address(data_dir))
        self.listener.listen(8)
        self.selector.register(self.listener, selectors.EVENT_READ, self._accept)

    # ---- the loop ----------------------------------------------------------------------
    def serve(self) -> None:
        """Run until no agent is connected and no task is left, once an agent came (or
        ``START_WAIT`` passed without one)."""
        while self.conn is not None or self.tasks or self._waiting_for_first():
            timeout = self._next_deadline()
            for key, _ in self.selector.select(timeout):
                key.data(key.fileobj)
            now = time.monotonic()
            self._enforce(now)
            self._release_started(now)
            self._send_out()
        self.listener.close()  # an agent coming now finds no keeper and starts one
        self._save_exits()

    def _waiting_for_first(self) -> bool:
        return not self.served and not self.stopping and (
            time.monotonic() < self.born + START_WAIT)

    def stop_on_signal(self, wakeup: socket.socket) -> None:
        """SIGTERM to the keeper itself: end every task (with the grace), then exit."""
        wakeup.recv(64)
        self.stopping = True
        _log("SIGTERM: ending every task")
        for task in list(self.tasks.values()):
            self._kill(task, "killed: the node's task keeper was stopped (SIGTERM)")

    def _next_deadline(self) -> float | None:
        """Seconds until the next kill, lease or fence action (``None``: nothing due)."""
        due = [t.kill_at for t in self.tasks.values() if t.kill_at is not None]
        if self.held:
            due.append(next(iter(self.held.values()))[0])
        if self._waiting_for_first():
            due.append(self.born + START_WAIT)
        if self.provisional_until is not None and any(not t.confirmed and t.killing is None
                                                      for t in self.tasks.values()):
            due.append(self.provisional_until)
        if self.fence_at is not None and any(t.fence and t.killing is None
                                             for t in self.tasks.values()):
            due.append(self.fence_at)
        return max(0.0, min(due) - time.monotonic()) if due else None

    def _release_started(self, now: float) -> None:
        """Send the ``started`` events whose hold is over (oldest first)."""
        while self.held:
            task_id, (due, message) = next(iter(self.held.items()))
            if due > now:
                return
            del self.held[task_id]
            self._send(message)

    def _enforce(self, now: float) -> None:
        for task in list(self.tasks.values()):
            if task.kill_at is not None and now >= task.kill_at:
                task.kill_at = None
                _killpg(task.pid, signal.SIGKILL)
            elif task.killing is not None:
                continue
            elif (not task.confirmed and self.provisional_until is not None
                  and now >= self.provisional_until):
                task.requeue = True
                self._kill(task, "started while the host was out of reach, and ended when "
                                 "the runner's lease ran out; it will run again", grace=0.0)
            elif task.fence and self.fence_at is not None and now >= self.fence_at:
                task.fenced = True
                self._kill(task, self.fence_reason or "self-fenced", grace=self.fence_grace)

    # ---- the agent's connection ----------------------------------------------------------
    def _accept(self, listener: socket.socket) -> None:
        conn, _ = listener.accept()
        uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                  struct.calcsize("3i")))[1]
        if uid != os.getuid():
            conn.close()
            return
        if self.conn is not None:
            try:
                conn.send(pack({"op": "refused", "msg": "another runner is connected to this "
                                                        "data directory's keeper"}))
            finally:
                conn.close()
            return
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, MAX_PACKET)
        self.conn = conn
        self.served = True
        self.selector.register(conn, selectors.EVENT_READ, self._receive)

    def _receive(self, conn: socket.socket) -> None:
        try:
            data = self.reader.receive(conn)
        except OSError:
            data = b""
        if not data:
            self._disconnect()
            return
        try:
            messages = unbatch(unpack(data))
        except Exception as exc:
            _log(f"bad packet from the agent: {exc!r}")
            return
        for message in messages:
            try:
                handler = getattr(self, "_op_" + str(message.get("op")), None)
                if handler is not None:
                    handler(message)
            except Exception as exc:  # never let one bad message end the tasks' owner
                _log(f"bad message from the agent: {exc!r}")

    def _disconnect(self) -> None:
        if self.conn is not None:
            self.selector.unregister(self.conn)
            self.conn.close()
            self.conn = None
        self.out = []
        self.held.clear()
        self.staged.clear()  # the host sends them again, or requeues them
        self.staged_ids.clear()
        self._save_exits()

    def _send(self, message: dict[str, Any]) -> None:
        """Queue ``message`` for the agent; sent at the end of the loop turn."""
        if self.conn is not None:
            self.out.append(message)

    def _send_out(self) -> None:
        messages, self.out = self.out, []
        for start in range(0, len(messages), MAX_BATCH):
            if self.conn is None:
                return
            try:
                self.conn.send(pack_batch(messages[start:start + MAX_BATCH]))
            except OSError:
                self._disconnect()

    # ---- requests ----------------------------------------------------------------------
    def _op_hello(self, message: dict[str, Any]) -> None:
        self.node = str(message.get("node") or "")
        self.grace = float(message.get("kill_grace") or self.grace)
        self.env_base = dict(message.get("env_base") or {})
        self.task_user = str(message.get("task_user") or self.task_user)
        if self.limiter is None and self.node:
            from zriver.runner.cgroups import MemoryLimiter

            self.limiter = MemoryLimiter(self.node)
            self.limiter.probe()
        self._send({"op": "hello", "pid": os.getpid(), "switches": self.spawner.switches,
                    "signalled": True,
                    "tasks": [{"id": t.id, "attempt": t.attempt, "pid": t.pid,
                               "started": t.started, "confirmed": t.confirmed,
                               "paused": _stopped(t.pid)} for t in self.tasks.values()],
                    "exits": list(self.exits.values())})

    def _op_spawn(self, message: dict[str, Any]) -> None:
        task_id, attempt = int(message["id"]), int(message.get("attempt") or 1)
        if task_id in self.tasks or task_id in self.staged_ids:
            return  # a resent spawn of what already runs or waits
        behind = message.get("behind")
        if behind is not None and (behind in self.tasks or behind in self.staged_ids):
            self.staged[behind] = message
            self.staged_ids[task_id] = behind
            return
        self._spawn(task_id, attempt, message)

    def _spawn(self, task_id: int, attempt: int, message: dict[str, Any]) -> None:
        if self.provisional_until is not None and time.monotonic() >= self.provisional_until:
            self._report(task_id, attempt, PENDING, None,
                         "not started: the runner's contact with the host had run out")
            return
        try:
            account = self._account(message)
            env = {**self.env_base, **account.environment(), **message["env"]} if (
                account is not None) else {**self.env_base, **message["env"]}
            pid = self.spawner.spawn(list(message["argv"]), env,
                                     message.get("workdir") or home_of(account, env),
                                     message["stdout"],
                                     message["stderr"], list(message.get("cores") or []),
                                     account)
        except SpawnError as exc:
            self._report(task_id, attempt, FAILED, exc.exit_code, exc.detail)
            return
        memory = int(message.get("memory") or 0)
        if memory and self.limiter is not None:
            try:
                self.limiter.apply(task_id, pid, memory)
            except OSError as exc:
                _killpg(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                self._report(task_id, attempt, FAILED, 126,
                             f"could not apply the memory limit: {exc}")
                return
        pidfd = os.pidfd_open(pid)
        task = Task(task_id, attempt, pid, pidfd, time.time(), bool(message.get("fence", True)),
                    limited=bool(memory and self.limiter is not None))
        self.tasks[task_id] = task
        self.selector.register(pidfd, selectors.EVENT_READ, lambda _fd, t=task: self._reap(t))
        self.held[task_id] = (time.monotonic() + STARTED_HOLD,
                              {"op": "started", "id": task_id, "pid": pid,
                               "started": task.started})

    def _account(self, message: dict[str, Any]) -> accounts.Account | None:
        """The account a spawn runs as (``None``: as this keeper, which is not root)."""
        if not self.spawner.switches:
            return None
        name, why = accounts.choose(message.get("user") or None, str(message.get("owner") or ""),
                                    self.task_user, self.accounts.get,
                                    bool(message.get("admin")))
        account = self.accounts.get(name)
        if account is None:
            asked = {accounts.USER: "asked for with --user",
                     accounts.TASK_USER: "the runner's task_user setting"}.get(why, why)
            where = f" node {self.node}" if self.node else " this node"
            raise SpawnError(f"no account {name!r} on{where} ({asked}); not started", 126)
        return account

    def _op_signal(self, message: dict[str, Any]) -> None:
        task_id = int(message["id"])
        if task_id in self.staged_ids and message.get("action") == "kill":
            self._unstage(task_id, quiet=bool(message.get("quiet")))
            return
        task = self.tasks.get(task_id)
        if task is None:
            return
        action = message.get("action")
        if action == "kill":
            self._kill(task, str(message.get("reason") or "killed on request"))
        elif action in ("pause", "resume"):
            _killpg(task.pid, signal.SIGSTOP if action == "pause" else signal.SIGCONT)
            self._send({"op": "signalled", "id": task_id, "action": action})

    def _op_acked(self, message: dict[str, Any]) -> None:
        for task_id in message.get("confirm") or []:
            task = self.tasks.get(task_id)
            if task is not None:
                task.confirmed = True
        forget = [tid for tid in message.get("forget") or [] if tid in self.exits]
        for task_id in forget:
            del self.exits[task_id]
        if forget and not self.exits:
            self._save_exits()

    def _op_lease(self, message: dict[str, Any]) -> None:
        self.provisional_until = float(message["provisional_until"])
        self.fence_at = float(message["fence_at"])
        self.fence_grace = float(message.get("fence_grace", self.grace))
        self.fence_reason = str(message.get("reason") or "")

    def _op_kill_all(self, message: dict[str, Any]) -> None:
        reason = str(message.get("reason") or "killed by its runner")
        self.staged.clear()
        self.staged_ids.clear()
        for task in list(self.tasks.values()):
            self._kill(task, reason)

    def _unstage(self, task_id: int, quiet: bool = False) -> None:
        """A staged task is killed before it started (reported unless ``quiet``); the one
        behind it moves up."""
        front = self.staged_ids.pop(task_id)
        message = self.staged.pop(front)
        follower = self.staged.pop(task_id, None)
        if follower is not None:
            self.staged[front] = follower
            self.staged_ids[int(follower["id"])] = front
        if not quiet:
            self._report(task_id, int(message.get("attempt") or 1), KILLED, None,
                         "killed before it started")

    def _start_next(self, front: int) -> None:
        """``front`` ended: spawn what was staged behind it (refused past the lease, and
        then the next in line is refused the same way)."""
        message = self.staged.pop(front, None)
        if message is not None:
            task_id = int(message["id"])
            del self.staged_ids[task_id]
            self._spawn(task_id, int(message.get("attempt") or 1), message)

    # ---- task ends -----------------------------------------------------------------------
    def _kill(self, task: Task, reason: str, grace: float | None = None) -> None:
        """SIGTERM (+ SIGCONT: a paused group can act on it), SIGKILL after the grace."""
        if task.killing is None:
            task.killing = reason
        grace = self.grace if grace is None else grace
        if grace <= 0:
            _killpg(task.pid, signal.SIGKILL)
            _killpg(task.pid, signal.SIGCONT)
            return
        _killpg(task.pid, signal.SIGTERM)
        _killpg(task.pid, signal.SIGCONT)
        if task.kill_at is None:
            task.kill_at = time.monotonic() + grace

    def _reap(self, task: Task) -> None:
        try:
            pid, status = os.waitpid(task.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = task.pid, 0
        if pid == 0:
            return  # woken early; a stopped (paused) child is not an exit
        self.selector.unregister(task.pidfd)
        os.close(task.pidfd)
        del self.tasks[task.id]
        if task.killing is not None:  # make sure no straggler of the group survives
            _killpg(task.pid, signal.SIGKILL)
        state, code, detail = self._outcome(task, status)
        if task.limited:
            self.limiter.remove(task.id)
        self._report(task.id, task.attempt, state, code, detail)

    def _outcome(self, task: Task, status: int) -> tuple[str, int | None, str]:
        if task.requeue:
            return PENDING, None, task.killing or ""
        if task.fenced:
            return LOST, None, task.killing or "self-fenced"
        if os.WIFEXITED(status):
            code = os.WEXITSTATUS(status)
            if task.killing is not None:
                return KILLED, code, task.killing
            return (COMPLETED, 0, "") if code == 0 else (FAILED, code, f"exit code {code}")
        sig = os.WTERMSIG(status)
        if task.limited and self.limiter.oom_killed(task.id):
            return KILLED_OOM, 128 + sig, "killed by the OOM killer (memory limit)"
        if task.killing is not None:
            return KILLED, 128 + sig, f"{task.killing} ({signal_name(sig)})"
        return FAILED, 128 + sig, f"killed by signal {signal_name(sig)}"

    def _report(self, task_id: int, attempt: int, state: str, code: int | None,
                detail: str) -> None:
        """Keep the end until the agent says the host has it; send it now if one listens.
        Then start what was staged behind it."""
        end = {"op": "exit", "id": task_id, "attempt": attempt, "state": state,
               "exit_code": code, "detail": detail, "at": time.time()}
        self.exits[task_id] = end
        held = self.held.pop(task_id, None)
        if self.conn is None:
            self._save_exits()
        else:
            if held is not None:  # it ended within the hold: its start rides along
                self._send(held[1])
            self._send(end)
        self._start_next(task_id)

    # ---- the exits file ------------------------------------------------------------------
    def _load_exits(self) -> dict[int, dict[str, Any]]:
        try:
            ends = msgpack.unpackb((self.data_dir / EXITS_FILE).read_bytes(), raw=False)
        except (OSError, ValueError, msgpack.UnpackException):
            return {}
        return {int(end["id"]): end for end in ends if isinstance(end, dict) and "id" in end}

    def _save_exits(self) -> None:
        """Write the uncollected ends (atomically), or remove the file when there are none."""
        path = self.data_dir / EXITS_FILE
        try:
            if not self.exits:
                path.unlink(missing_ok=True)
                return
            tmp = path.with_name(EXITS_FILE + ".tmp")
            tmp.write_bytes(msgpack.packb(list(self.exits.values())))
            tmp.replace(path)
        except OSError as exc:
            _log(f"cannot write {path}: {exc}")


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _stopped(pid: int) -> bool:
    """Whether ``pid`` is stopped (a paused task)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] == b"T"
    except (OSError, IndexError):
        return False


def _log(line: str) -> None:
    sys.stderr.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} zriver keeper[{os.getpid()}]: "
                     f"{line}\n")
    sys.stderr.flush()


def command(data_dir: str | Path) -> list[str]:
    """How to start a keeper for ``data_dir``: the binary's hidden verb, or this module."""
    if getattr(sys, "frozen", False):
        return [sys.executable, "_keeper", str(data_dir)]
    return [sys.executable, "-m", "zriver.runner.keeper", str(data_dir)]


def main(argv: list[str]) -> int:
    """``zriver _keeper DATA_DIR``: detach, take the data dir's keeper lock, serve."""
    data_dir = Path(argv[0])
    if os.fork():  # the starting agent waits for this parent only: the keeper is init's child
        os._exit(0)
    lock = open(data_dir / LOCK_FILE, "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0  # another keeper serves this data dir
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is for the agent
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        keeper = Keeper(data_dir)
    except OSError as exc:  # the name is taken: a keeper of this dir is still winding down
        _log(f"cannot listen: {exc}")
        return 1
    wake_read, wake_write = socket.socketpair()
    wake_write.setblocking(False)
    signal.set_wakeup_fd(wake_write.fileno(), warn_on_full_buffer=False)
    signal.signal(signal.SIGTERM, lambda *_: None)
    keeper.selector.register(wake_read, selectors.EVENT_READ, keeper.stop_on_signal)
    _log(f"serving {data_dir}")
    gctune.settle()
    # The loop runs in a second thread, which alone changes its real ids around a spawn as
    # another account: kill() and kill(-1) by that account check this (main) thread's ids.
    failed: list[BaseException] = []
    loop = threading.Thread(target=_serve, args=(keeper, failed), name="keeper")
    loop.start()
    loop.join()
    if failed:
        raise failed[0]
    _log("no agent and no task left: exiting")
    return 0


def _serve(keeper: Keeper, failed: list[BaseException]) -> None:
    try:
        keeper.serve()
    except BaseException as exc:  # re-raised by the main thread: the keeper exits with it
        failed.append(exc)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
