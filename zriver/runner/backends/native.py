"""The native backend: the agent's side of the node's keeper (``zriver.runner.keeper``).

A native task is a process group that the keeper spawns, owns and reaps, so that it outlives
any restart of the agent. This backend connects to the keeper of the runner's data dir (and
starts one when none answers), asks it to spawn and signal, and turns its ``started`` and
``exit`` events into the backend callbacks. ``start`` returns ``None``: the job runs once the
keeper says so (``on_started``), or ends at once with ``failed`` when it could not start.

The keeper picks the Unix account each task runs as (the spec's ``user``, else its owner's
own account there, else ``task_user``) and switches to it without a process of its own:
see ``zriver.runner.accounts`` and ``zriver.runner.spawn``.

The keeper keeps a task's end until ``acked(forget=...)`` says the host has it, and kills a
start the host has not recorded (``acked(confirm=...)``) once the lease given by ``lease``
runs out: see the keeper's docstring. When the keeper dies, the tasks it owned lose the only
process that could read their exit status: this backend kills their process groups and
reports them ``killed``, saying so.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import structlog

from zriver import lifecycle as lc
from zriver.runner import keeper as keeper_protocol
from zriver.runner.backends import Exit, Job, OnExit, OnStarted
from zriver.runner.spawn import membind_prefix

log = structlog.get_logger("zriver.runner")

KEEPER_START_TIMEOUT = 10.0
ACK_DELAY = 0.05
"""Confirmations and forgets reach the keeper at most this late (far below any lease)."""


class KeeperUnavailable(Exception):
    """No keeper could be reached or started for this data dir."""


class KeeperGone(KeeperUnavailable):
    """The keeper closed the connection while we greeted it (it was exiting)."""


class NativeBackend:
    """Runs jobs through the node's keeper; see the module docstring."""

    name = "native"

    def __init__(self, on_started: OnStarted, on_exit: OnExit, data_dir: Path, node: str,
                 kill_grace: float, base_env: dict[str, str],
                 task_user: str = "nobody") -> None:
        self._on_started = on_started
        self._on_exit = on_exit
        self._data_dir = data_dir
        self._node = node
        self._grace = kill_grace
        self._base_env = base_env
        self._task_user = task_user
        self._out: list[dict[str, Any]] = []
        self._confirm: list[int] = []
        self._forget: list[int] = []
        self._ack_timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self._sock: socket.socket | None = None
        self._reader = keeper_protocol.PacketReader()
        self._backlog: collections.deque[bytes] = collections.deque()
        self._pids: dict[int, int] = {}  # task id -> pid, for every task the keeper runs
        self._attempts: dict[int, int] = {}
        self._starting: set[int] = set()
        self._staged: set[int] = set()
        self._paused: set[int] = set()
        self._signalled: dict[int, Callable[[], None]] = {}  # task id -> its pause's/resume's done
        self._confirms_signals = False  # the keeper sends ``signalled`` (older ones do not)
        self._hello: asyncio.Future | None = None
        self.keeper_pid = 0
        self.on_keeper_lost: Callable[[], None] = lambda: None

    # ---- connecting ----------------------------------------------------------------------
    async def adopt(self) -> list[tuple[int, int, str]]:
        """Connect to the keeper (starting one if needed) and take back what it owns:
        ``(task id, attempt, status)`` for running, paused and ended tasks; the ends are then
        reported through ``on_exit`` on the next loop turns. A keeper that goes away during
        the greeting (it was exiting as we came) is replaced by a new one."""
        for attempt in range(3):
            await self._connect()
            self._hello = self._loop.create_future()
            # First in the queue: what was asked while the keeper was away follows it.
            self._out.insert(0, {"op": "hello", "node": self._node, "kill_grace": self._grace,
                                 "env_base": self._base_env, "task_user": self._task_user})
            self._loop.call_soon(self._send_out)
            try:
                reply = await asyncio.wait_for(self._hello, KEEPER_START_TIMEOUT)
                break
            except KeeperGone:
                log.info("keeper.gone_while_greeting", attempt=attempt + 1)
        else:
            raise KeeperUnavailable(f"the task keeper of {self._data_dir} keeps going away")
        self.keeper_pid = int(reply.get("pid") or 0)
        self._confirms_signals = bool(reply.get("signalled"))
        found = []
        for task in reply.get("tasks") or []:
            task_id = int(task["id"])
            self._pids[task_id], self._attempts[task_id] = int(task["pid"]), int(task["attempt"])
            if task.get("paused"):
                self._paused.add(task_id)
            found.append((task_id, self._attempts[task_id],
                          "paused" if task.get("paused") else "running"))
        for end in reply.get("exits") or []:
            found.append((int(end["id"]), int(end.get("attempt") or 1), "exited"))
            self._loop.call_soon(self._ended, end)
        log.info("keeper.connected", pid=self.keeper_pid, running=len(self._pids),
                 ended=len(reply.get("exits") or []))
        return found

    async def _connect(self) -> None:
        address = keeper_protocol.socket_address(self._data_dir)
        started = 0.0
        deadline = time.monotonic() + KEEPER_START_TIMEOUT
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                sock.connect(address)
                break
            except (ConnectionRefusedError, FileNotFoundError):
                sock.close()
            if time.monotonic() - started > 0.5:  # again if one exiting held the lock
                await self._loop.run_in_executor(None, self._start_keeper)
                started = time.monotonic()
            if time.monotonic() > deadline:
                raise KeeperUnavailable(f"no task keeper answers for {self._data_dir} (see "
                                        f"{self._data_dir / keeper_protocol.LOG_FILE})")
            await asyncio.sleep(0.01)
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, keeper_protocol.MAX_PACKET)
        self._sock = sock
        self._loop.add_reader(sock.fileno(), self._on_readable)

    def _start_keeper(self) -> None:
        """Start a keeper for the data dir; it detaches (its first process exits at once)."""
        with open(self._data_dir / keeper_protocol.LOG_FILE, "ab") as out:
            starter = subprocess.Popen(keeper_protocol.command(self._data_dir),
                                       stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                       start_new_session=True, close_fds=True)
        starter.wait(KEEPER_START_TIMEOUT)
        log.info("keeper.started", data_dir=str(self._data_dir))

    # ---- the backend interface -----------------------------------------------------------
    def running(self) -> list[int]:
        return list(self._pids) + list(self._starting)

    def pid_of(self, task_id: int) -> int | None:
        return self._pids.get(task_id)

    def paused(self) -> set[int]:
        return self._paused

    def start(self, job: Job) -> None:
        """Ask the keeper to spawn ``job``; ``on_started`` or ``on_exit`` follows."""
        self._starting.add(job.task_id)
        self._attempts[job.task_id] = job.attempt
        self._send(self._spawn_message(job))
        return None

    @staticmethod
    def _spawn_message(job: Job) -> dict[str, Any]:
        return {"op": "spawn", "id": job.task_id, "attempt": job.attempt,
                "argv": membind_prefix(job.numa) + job.spec.command, "env": job.env,
                "workdir": job.spec.workdir, "stdout": job.stdout, "stderr": job.stderr,
                "cores": list(job.cores), "memory": job.memory, "fence": True,
                "user": job.spec.user, "owner": job.spec.owner,
                "admin": job.spec.admin}

    def stage(self, job: Job, behind: int) -> None:
        """Have the keeper start ``job`` the moment task ``behind`` (which it runs or holds
        staged) ends; ``promote`` it then. ``on_started`` or ``on_exit`` follows."""
        self._staged.add(job.task_id)
        self._attempts[job.task_id] = job.attempt
        self._send(self._spawn_message(job) | {"behind": behind})

    def unstage(self, task_id: int) -> None:
        """Drop a staged job without a word (the host does not place it here)."""
        if task_id in self._staged:
            self._staged.discard(task_id)
            self._send({"op": "signal", "id": task_id, "action": "kill", "quiet": True})

    def promote(self, task_id: int) -> None:
        """The task a staged job waited behind has ended: the keeper is starting it."""
        if task_id in self._staged:
            self._staged.discard(task_id)
            self._starting.add(task_id)

    def holds(self, task_id: int) -> bool:
        """Whether ``task_id`` runs here or waits staged in the keeper."""
        return task_id in self._pids or task_id in self._starting or task_id in self._staged

    def signal(self, task_id: int, action: str, reason: str = "",
               done: Callable[[], None] | None = None) -> None:
        """Send ``action`` to the task's process group through the keeper; ``done()`` runs
        once a pause or resume has reached the group (the keeper's ``signalled``), not before,
        and never for a task that ends first."""
        if not self.holds(task_id):
            return
        if action == "pause":
            self._paused.add(task_id)
        elif action == "resume":
            self._paused.discard(task_id)
        if done is not None and action in ("pause", "resume"):
            if self._confirms_signals:
                self._signalled[task_id] = done
            else:  # a keeper of an older release: it signals in order, but says nothing
                self._loop.call_soon(done)
        self._send({"op": "signal", "id": task_id, "action": action, "reason": reason})

    def acked(self, confirm: list[int], forget: list[int]) -> None:
        """The host has recorded ``confirm`` running and has the ends of ``forget``.

        Confirmations go to the keeper at once: one the keeper has not got when this agent
        dies becomes, at the end of the lease, the revocation of a start the host has
        recorded, and the task would run a second time (seen with a runner SIGKILLed right
        after its tasks were reported running). Ends to forget alone wait up to
        ``ACK_DELAY`` for company (a lost ``forget`` only means a resend)."""
        self._confirm.extend(confirm)
        self._forget.extend(forget)
        if self._out or self._confirm:
            self._pass_acks()
        elif self._ack_timer is None and (self._confirm or self._forget):
            self._ack_timer = self._loop.call_later(ACK_DELAY, self._pass_acks)

    def _pass_acks(self) -> None:
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        if self._confirm or self._forget:
            confirm, forget, self._confirm, self._forget = self._confirm, self._forget, [], []
            self._send({"op": "acked", "confirm": confirm, "forget": forget})

    def lease(self, provisional_until: float, fence_at: float, fence_grace: float,
              reason: str) -> None:
        self._send({"op": "lease", "provisional_until": provisional_until,
                    "fence_at": fence_at, "fence_grace": fence_grace, "reason": reason})

    def kill_all(self, reason: str) -> None:
        self._send({"op": "kill_all", "reason": reason})

    def close(self) -> None:
        """Disconnect (the keeper and its tasks carry on)."""
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        if self._sock is not None:
            try:
                self._loop.remove_reader(self._sock.fileno())
                self._loop.remove_writer(self._sock.fileno())
            except (ValueError, OSError):
                pass
            self._sock.close()
            self._sock = None

    # ---- messages ------------------------------------------------------------------------
    def _send(self, message: dict[str, Any]) -> None:
        """Queue ``message``; the messages of one loop tick leave as one packet."""
        if not self._out:
            self._loop.call_soon(self._send_out)
        self._out.append(message)

    def send_now(self) -> None:
        """Send what this loop turn has queued for the keeper now, not at the turn's end
        (the in-process link's hand-over: a start leaves before the host's other sends)."""
        if self._out:
            self._send_out()

    def _send_out(self) -> None:
        if self._sock is None:
            return  # (re)connecting: ``adopt`` sends them once the keeper is there
        messages, self._out = self._out, []
        for start in range(0, len(messages), keeper_protocol.MAX_BATCH):
            if self._sock is None:
                return  # lost meanwhile: ``_keeper_lost`` accounted for these
            self._send_packet(keeper_protocol.pack_batch(
                messages[start:start + keeper_protocol.MAX_BATCH]))

    def _send_packet(self, data: bytes) -> None:
        if self._backlog:
            self._backlog.append(data)
            return
        try:
            self._sock.send(data)
        except BlockingIOError:
            self._backlog.append(data)
            self._loop.add_writer(self._sock.fileno(), self._flush_backlog)
        except OSError as exc:
            log.error("keeper.send_failed", error=str(exc))
            self._keeper_lost()

    def _flush_backlog(self) -> None:
        while self._backlog and self._sock is not None:
            try:
                self._sock.send(self._backlog[0])
            except BlockingIOError:
                return
            except OSError:
                self._keeper_lost()
                return
            self._backlog.popleft()
        if self._sock is not None:
            self._loop.remove_writer(self._sock.fileno())

    def _on_readable(self) -> None:
        while self._sock is not None:
            try:
                data = self._reader.receive(self._sock)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._keeper_lost()
                return
            for message in keeper_protocol.unbatch(keeper_protocol.unpack(data)):
                self._on_message(message)

    def _on_message(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "started":
            self._started(message)
        elif op == "exit":
            self._ended(message)
        elif op == "signalled":
            done = self._signalled.pop(int(message["id"]), None)
            if done is not None:
                done()
        elif op == "hello" and self._hello is not None and not self._hello.done():
            self._hello.set_result(message)
        elif op == "refused" and self._hello is not None and not self._hello.done():
            self._hello.set_exception(KeeperUnavailable(message.get("msg", "refused")))

    def _started(self, message: dict[str, Any]) -> None:
        task_id = int(message["id"])
        if task_id not in self._starting and task_id not in self._staged:
            return
        self._starting.discard(task_id)
        self._staged.discard(task_id)
        self._pids[task_id] = int(message["pid"])
        self._on_started(task_id, f"pid {message['pid']}", message.get("started"))

    def _ended(self, message: dict[str, Any]) -> None:
        task_id = int(message["id"])
        self._starting.discard(task_id)
        self._staged.discard(task_id)
        self._pids.pop(task_id, None)
        self._paused.discard(task_id)
        self._signalled.pop(task_id, None)
        self._on_exit(task_id, Exit(str(message["state"]), message.get("exit_code"),
                                    str(message.get("detail") or "")))

    def _keeper_lost(self) -> None:
        """The keeper went away: nobody can read its tasks' status any more; end them."""
        if self._sock is None:
            return
        if self._hello is not None and not self._hello.done():  # still greeting: try again
            self.close()
            self._backlog.clear()
            self._hello.set_exception(KeeperGone())
            return
        log.error("keeper.lost", pid=self.keeper_pid, tasks=len(self._pids))
        self.close()
        self._backlog.clear()
        self._out.clear()  # void: its spawns are reported "pending" below, never sent on
        for task_id, pid in list(self._pids.items()):
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self._ended({"id": task_id, "state": lc.KILLED, "exit_code": None,
                         "detail": "killed: the node's task keeper ended unexpectedly"})
        for task_id in list(self._starting) + list(self._staged):
            self._ended({"id": task_id, "state": lc.PENDING, "exit_code": None,
                         "detail": "not started: the node's task keeper ended"})
        self.on_keeper_lost()
