"""``zriver up -d`` and ``zriver down``: the one-machine cluster as a background process.

``start`` runs ``zriver up`` (the same arguments, less ``-d``) as a detached process: its own
session (no terminal: a closed shell or Ctrl-C never reaches it), stdin from /dev/null, its
output appended to ``<data dir>/up.log``. It returns once that process answers through the
normal client (its endpoints file carries its pid, or from the single binary the pid of the
bootloader's child that runs Python, ``cluster.hello`` answers and its node is online), within ``START_TIMEOUT``; a process that exits first, or does not answer in time,
raises ``StartFailed`` with the log's last lines (a process still starting is stopped).

``stop`` sends SIGTERM to the process holding the data dir's host lock (``zriver.dirlock``:
``zriver up`` or ``zriver host``) and waits, at most ``STOP_TIMEOUT``, until the lock is free
and that process has exited.
A stop never ends running native tasks unless that ``up`` was started with ``--kill-tasks``:
they run on under the node's keeper, as on Ctrl-C, and the next ``up`` takes them back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from zriver import dirlock
from zriver.bundle import child_environment, is_frozen
from zriver.client.probe import process_alive
from zriver.errors import Unavailable, ZriverError

START_TIMEOUT = 60.0
"""Seconds ``start`` waits for the cluster to answer (the runner registers within 30)."""
STOP_TIMEOUT = 60.0
"""Seconds ``stop`` waits for the process to let go of its data dir."""
POLL = 0.05
LOG_NAME = "up.log"
TAIL_LINES = 20


class StartFailed(Unavailable):
    """The background ``zriver up`` exited, or did not answer in time (the log tail says why)."""


@dataclass(frozen=True)
class Started:
    """A background cluster that answers."""

    pid: int
    router: str
    node: str
    log: Path


def self_command() -> list[str]:
    """How to run this zriver again: the binary itself, or this interpreter with ``-m``."""
    if is_frozen():
        return [sys.executable]
    return [sys.executable, "-m", "zriver"]


def start(data_dir: Path, argv: list[str], key: str | None = None,
          host_key: str | None = None) -> Started:
    """Start ``zriver ARGV`` (an ``up`` command line) in the background on ``data_dir``;
    return once it answers.
    ``DirectoryInUse`` when something already holds the data dir (nothing started)."""
    holder = dirlock.held(data_dir, "host")
    if holder is not None:
        raise dirlock.DirectoryInUse(data_dir, holder)
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / LOG_NAME
    with open(log, "ab") as out:
        offset = out.tell()
        out.write(f"---- {time.strftime('%Y-%m-%dT%H:%M:%S')} zriver up -d\n".encode())
        env = child_environment()
        if is_frozen():
            env["PYINSTALLER_RESET_ENVIRONMENT"] = "1"  # unpack afresh: ours goes with us
        proc = subprocess.Popen([*self_command(), *argv], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, close_fds=True)
    try:
        return _wait_answering(proc, data_dir, log, offset, key, host_key)
    except BaseException:
        if proc.poll() is None:  # not answering in time (or Ctrl-C): do not leave it behind
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
        raise


def _wait_answering(proc: subprocess.Popen, data_dir: Path, log: Path, offset: int,
                    key: str | None, host_key: str | None) -> Started:
    from zriver.client.api import Client

    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StartFailed(f"zriver up exited with status {proc.returncode} before it "
                              f"answered; the end of {log}:\n{tail(log, offset)}")
        router, pid = _router_of(data_dir, proc.pid)
        if router:
            try:
                with Client(router, 2.0, key=key, host_key=host_key) as client:
                    client.call("cluster.hello")
                    online = [n["name"] for n in client.call("node.list")["nodes"]
                              if n["state"] == "online"]
                if online:
                    return Started(pid, router, online[0], log)
            except Unavailable:
                pass
        time.sleep(POLL)
    raise StartFailed(f"zriver up (pid {proc.pid}) did not answer within "
                      f"{START_TIMEOUT:g} s; stopped it. The end of {log}:\n{tail(log, offset)}")


def _router_of(data_dir: Path, pid: int) -> tuple[str, int]:
    """The router address in ``data_dir``'s endpoints file and the pid that wrote it, once
    process ``pid`` or a child of it wrote it (``("", 0)`` before). A child: the single
    binary's bootloader runs Python in a child process, which is the one that writes it."""
    try:
        data = json.loads((data_dir / "endpoints.json").read_text())
    except (OSError, ValueError):
        return "", 0
    if not (isinstance(data, dict) and isinstance(data.get("router"), str)):
        return "", 0
    writer = data.get("pid")
    if isinstance(writer, int) and (writer == pid or _parent_of(writer) == pid):
        return data["router"], writer
    return "", 0


def _parent_of(pid: int) -> int:
    """Process ``pid``'s parent pid (0 when it cannot be read)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return int(stat.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def tail(path: Path, offset: int = 0, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of ``path`` written after ``offset``."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError as exc:
        return f"(cannot read it: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(empty)"


@dataclass(frozen=True)
class Stopped:
    """What ``stop`` found: ``pid`` 0 when nothing ran; ``stale`` when it removed the
    endpoints file of a host that had died without removing it."""

    pid: int = 0
    role: str = ""
    stale: bool = False


def stop(data_dir: Path) -> Stopped:
    """SIGTERM the live holder of ``data_dir``'s host lock and wait until it is gone."""
    holder = dirlock.held(data_dir, "host")
    if holder is None:
        return Stopped(stale=_remove_stale_endpoints(data_dir))
    pid = holder.get("pid")
    if not isinstance(pid, int):
        raise ZriverError(f"{data_dir} is held by a zriver process that has not written its "
                          f"pid yet (starting?); try again in a moment")
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass  # it ended meanwhile
    except PermissionError:
        raise ZriverError(f"{dirlock.describe(holder)} holds {data_dir} but runs as another "
                          f"account: stop it as that account") from None
    deadline = time.monotonic() + STOP_TIMEOUT
    while dirlock.held(data_dir, "host") is not None or not _gone(pid):
        if time.monotonic() >= deadline:
            raise ZriverError(f"{dirlock.describe(holder)} is still stopping after "
                              f"{STOP_TIMEOUT:g} s (see {data_dir / LOG_NAME}); `kill -9 {pid}` "
                              f"ends it at once (its tasks run on under the node's keeper)")
        time.sleep(POLL)
    return Stopped(pid, str(holder.get("role") or "zriver"))


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (a zombie nobody reaped yet counts as exited)."""
    if not process_alive(pid):
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


def _remove_stale_endpoints(data_dir: Path) -> bool:
    """Remove ``data_dir``'s endpoints file when the process it names is dead."""
    path = data_dir / "endpoints.json"
    try:
        pid = json.loads(path.read_text()).get("pid")
    except (OSError, ValueError, AttributeError):
        return False
    if isinstance(pid, int) and pid > 0 and not process_alive(pid):
        path.unlink(missing_ok=True)
        return True
    return False
