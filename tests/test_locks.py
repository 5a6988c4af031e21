"""One host per data directory, one runner per data directory (``zriver/dirlock.py``).

Unit tests of the lock module use a real child process as the holder. The role tests start
real ``zriver up`` / ``zriver host`` / ``zriver runner`` processes with their own
``ZRIVER_HOME`` under ``tmp_path``, start a second one on the same directory and check that it
is refused (exit 1, the holder's pid named) having touched nothing: the first keeps answering,
its endpoints.json is intact, its running task keeps running and completes. A holder killed
with -9 leaves a stale lock file that does not block the next start.

Every wait polls real state with a deadline (``procs.wait_until``); nothing sleeps to
synchronise. Every process a test starts is ended when it finishes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from procs import (READY_TIMEOUT, STOP_TIMEOUT, Cluster, pid_alive, role_environment,
                   wait_until)
from zriver import dirlock
from zriver.client.api import Client
from zriver.config import HostSettings
from zriver.host.service import Host
from zriver.eventloop import run

pytestmark = [pytest.mark.timeout(90)]

CLI_TIMEOUT = 30

# A lock holder: takes the lock, optionally spawns a long-lived grandchild the way the native
# backend spawns tasks (posix_spawn, own process group) and prints its pid, prints "held",
# then waits until its stdin closes.
HOLDER = """
import os, sys
from zriver import dirlock
lock = dirlock.acquire(sys.argv[1], "host", "test holder")
if sys.argv[2:] == ["spawn"]:
    print(os.posix_spawn("/bin/sleep", ["sleep", "60"], dict(os.environ), setpgroup=0),
          flush=True)
print("held", flush=True)
sys.stdin.read()
"""


# ---- helpers ---------------------------------------------------------------------------------
class Holder:
    """A child process holding ``directory``'s host lock (and maybe a spawned grandchild)."""

    def __init__(self, directory: Path, env: dict[str, str], spawn: bool = False) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(directory)] + (["spawn"] if spawn else []),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.grandchild = int(self.proc.stdout.readline()) if spawn else None
        line = self.proc.stdout.readline()  # blocks until the child holds the lock (or dies)
        assert line == "held\n", f"the holder did not take the lock (said {line!r})"

    def close(self) -> None:
        """End the holder (and its grandchild) whatever state they are in."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=STOP_TIMEOUT)
        if self.grandchild is not None:
            try:
                os.killpg(self.grandchild, signal.SIGKILL)
            except ProcessLookupError:
                pass


class UpProcess:
    """``python -m zriver up --port 0 --cores 2`` with its own ``ZRIVER_HOME``."""

    def __init__(self, home: Path, log: Path) -> None:
        self.home = home
        self.log = log
        home.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "zriver", "up", "--port", "0", "--cores", "2"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=role_environment(home), cwd=home.parent)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self) -> str:
        return f"--- zriver up (pid {self.pid}) log ---\n{self.log.read_text(errors='replace')}"

    def endpoints(self) -> dict | None:
        """endpoints.json when it names this process (not a previous life's file)."""
        assert self.proc.poll() is None, f"zriver up exited {self.proc.returncode}\n{self.tail()}"
        try:
            data = json.loads((self.home / "endpoints.json").read_text())
        except (OSError, ValueError):
            return None
        return data if data.get("pid") == self.pid else None

    def wait_ready(self) -> dict:
        """Wait until its endpoints.json is written and its runner is online; return it."""
        endpoints = wait_until(self.endpoints, READY_TIMEOUT, "zriver up to write endpoints.json",
                               self.tail)
        with Client(endpoints["router"], timeout=2, key=str(self.home / "keys" / "client.key_secret"),
                    host_key=endpoints["host_key"]) as client:
            wait_until(lambda: any(n["state"] == "online"
                                   for n in client.call("node.list", timeout=1)["nodes"]),
                       READY_TIMEOUT, "zriver up's runner to be online", self.tail)
        return endpoints

    def close(self) -> int:
        """SIGTERM, a bounded wait, then SIGKILL; the exit status."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                return self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(timeout=STOP_TIMEOUT)


@pytest.fixture
def started() -> Iterator[list]:
    """Holders and ``zriver up`` processes a test starts (anything with ``close``); all are
    ended afterwards."""
    owned: list = []
    yield owned
    for thing in reversed(owned):
        thing.close()


def zriver(home: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m zriver ARGS`` with ``ZRIVER_HOME=home``, as a user would run it."""
    return subprocess.run([sys.executable, "-m", "zriver", *args], capture_output=True,
                          text=True, env=role_environment(home), cwd=home.parent,
                          timeout=CLI_TIMEOUT)


def refused_by(result: subprocess.CompletedProcess, directory: Path, role: str,
               pid: int) -> None:
    """Assert ``result`` is a refusal naming ``directory`` and its holder ``role (pid N)``."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert f"zriver: {directory} is in use by {role} (pid {pid})" in result.stderr, \
        result.stderr


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, (result.args, result.returncode, result.stdout,
                                    result.stderr)
    return result.stdout


# ---- the lock module -------------------------------------------------------------------------
def test_a_lock_held_by_a_live_child_is_refused_and_freed_when_it_exits(
        tmp_path: Path, started: list) -> None:
    holder = Holder(tmp_path / "data", role_environment(tmp_path))
    started.append(holder)
    assert dirlock.holder(tmp_path / "data", "host") == {"pid": holder.proc.pid,
                                                         "role": "test holder"}
    with pytest.raises(dirlock.DirectoryInUse) as refused:
        dirlock.acquire(tmp_path / "data", "host", "test")
    assert f"in use by test holder (pid {holder.proc.pid})" in str(refused.value)
    # Another kind of lock in the same directory is independent (a host and a runner may
    # share a directory).
    with dirlock.acquire(tmp_path / "data", "runner", "test"):
        pass

    holder.proc.stdin.close()  # the holder exits normally
    assert holder.proc.wait(timeout=STOP_TIMEOUT) == 0
    with dirlock.acquire(tmp_path / "data", "host", "test") as lock:
        assert dirlock.holder(tmp_path / "data", "host") == {"pid": os.getpid(),
                                                             "role": "test"}
        with pytest.raises(dirlock.DirectoryInUse):  # a second open in this process, too
            dirlock.acquire(tmp_path / "data", "host", "again")
    assert lock.fd == -1 and dirlock.holder(tmp_path / "data", "host") is None
    lock.release()  # idempotent


def test_a_sigkilled_holder_leaves_a_stale_file_that_does_not_block(tmp_path: Path,
                                                                     started: list) -> None:
    holder = Holder(tmp_path / "data", role_environment(tmp_path), spawn=True)
    started.append(holder)
    holder.proc.kill()
    holder.proc.wait(timeout=STOP_TIMEOUT)
    # What it spawned (like a runner's task) lives on and did not inherit the lock.
    assert pid_alive(holder.grandchild)
    assert dirlock.holder(tmp_path / "data", "host")["pid"] == holder.proc.pid  # stale
    with dirlock.acquire(tmp_path / "data", "host", "test"):
        assert dirlock.holder(tmp_path / "data", "host")["pid"] == os.getpid()


def test_host_stop_removes_endpoints_json_only_when_it_is_its_own(tmp_path: Path) -> None:
    settings = HostSettings(data_dir=str(tmp_path), router_port=0, xsub_port=0, xpub_port=0,
                            stream_port=0, relay_port=0, web_port=0)
    path = tmp_path / "endpoints.json"

    async def start_stop(replace_with: dict | None) -> None:
        host = Host(settings)
        await host.start()
        written = json.loads(path.read_text())
        assert written == {**host.endpoints, "pid": os.getpid(), "security": "curve",
                           "host_key": host.server_keys.public,
                           "relay_host_key": host.relay.host_key}
        if replace_with is not None:
            path.write_text(json.dumps({**host.endpoints, **replace_with}))
        await host.stop()

    run(start_stop(None))  # on the loop the roles run (uvloop)
    assert not path.exists()
    foreign = {"pid": os.getpid() + 100000, "router": "tcp://127.0.0.1:1"}
    run(start_stop(foreign))
    assert json.loads(path.read_text())["pid"] == foreign["pid"]


# ---- the roles -------------------------------------------------------------------------------
@pytest.mark.slow
def test_second_up_on_the_same_home_is_refused_and_the_first_keeps_working(
        tmp_path: Path, started: list) -> None:
    home = tmp_path / "home"
    first = UpProcess(home, tmp_path / "up1.log")
    started.append(first)
    first.wait_ready()
    endpoints_before = (home / "endpoints.json").read_bytes()

    refused_by(zriver(home, "up", "--port", "0", "--cores", "2"), home, "zriver up", first.pid)

    assert (home / "endpoints.json").read_bytes() == endpoints_before
    out = ok(zriver(home, "submit", "--wait", "--user", "root", "--", "sh", "-c",
                    "echo still here"))
    assert ok(zriver(home, "logs", out.split()[0])) == "still here\n"
    nodes = json.loads(ok(zriver(home, "nodes", "--json")))
    assert [(n["state"], n["cores"]) for n in nodes] == [("online", 2)], nodes
    assert first.close() == 0
    assert not (home / "endpoints.json").exists()  # its own file, removed on stop


@pytest.mark.slow
def test_second_host_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    with Cluster(tmp_path) as cluster:
        host = cluster.start_host()
        endpoints_before = (cluster.home / "endpoints.json").read_bytes()

        refused_by(zriver(cluster.home, "host", "--config", str(host.config)), cluster.home,
                   "zriver host", host.pid)

        assert (cluster.home / "endpoints.json").read_bytes() == endpoints_before
        assert cluster.call("cluster.hello")
        host.check_alive()


@pytest.mark.slow
def test_second_runner_on_the_same_data_dir_is_refused_and_the_task_runs_on(
        tmp_path: Path) -> None:
    with Cluster(tmp_path) as cluster:
        cluster.start_host(heartbeat_interval=0.2, heartbeat_misses=3)
        runner = cluster.start_runner("n1", cores=2)
        marker, go = tmp_path / "marker", tmp_path / "go"
        script = (f"echo start >> '{marker}'; while [ ! -e '{go}' ]; do sleep 0.05; done; "
                  f"echo done >> '{marker}'")
        task_id = cluster.submit(["sh", "-c", script])
        running = cluster.wait_task_state(task_id, "running", timeout=10)
        pid = int([e["detail"] for e in running["events"]
                   if e["state"] == "running"][0].split()[1])
        cluster.adopt_group(pid)

        # Another node name, the same data dir: the directory alone decides.
        refused_by(zriver(cluster.home, "runner", "--config", str(runner.config),
                          "--name", "n1-twin"),
                   runner.data_dir, "zriver runner", runner.pid)

        assert pid_alive(pid), "the refused runner touched the first one's task"
        assert set(cluster.nodes()) == {"n1"} and cluster.nodes()["n1"]["state"] == "online"
        go.touch()
        task = cluster.wait_final([task_id], timeout=10)[task_id]
        assert (task["state"], task["exit_code"]) == ("completed", 0), task
        assert marker.read_text().split() == ["start", "done"]


@pytest.mark.slow
def test_after_a_sigkill_of_the_holder_a_new_up_on_the_same_home_starts(
        tmp_path: Path, started: list) -> None:
    home = tmp_path / "home"
    first = UpProcess(home, tmp_path / "up1.log")
    started.append(first)
    first.wait_ready()
    first.proc.kill()
    first.proc.wait(timeout=STOP_TIMEOUT)
    assert dirlock.holder(home, "host")["pid"] == first.pid  # stale files stay behind
    assert dirlock.holder(home / "runner", "runner")["pid"] == first.pid

    second = UpProcess(home, tmp_path / "up2.log")
    started.append(second)
    second.wait_ready()
    assert dirlock.holder(home, "host") == {"pid": second.pid, "role": "zriver up"}
    out = ok(zriver(home, "submit", "--wait", "--user", "root", "--", "sh", "-c", "echo again"))
    assert ok(zriver(home, "logs", out.split()[0])) == "again\n"
    assert second.close() == 0
