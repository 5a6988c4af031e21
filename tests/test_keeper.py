"""The task keeper as a real process, driven over its socket as an agent would; and the lease.

The keeper (``zriver.runner.keeper``) owns native tasks so that they outlive the agent: these
tests start one, spawn through it, disconnect and reconnect, and check that ends are kept with
their real exit status, that the lease kills unconfirmed starts and fences the rest, that a
second agent is refused, and that it exits by itself once it has nothing left to keep.
"""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from procs import pid_alive, wait_until

from zriver.runner import keeper
from zriver.runner.lease import Lease


class Agent:
    """A blocking stand-in for the runner's side of the keeper socket."""

    def __init__(self, data_dir: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.connect(keeper.socket_address(data_dir))
        self.sock.settimeout(10)
        self.inbox: list[dict] = []

    def send(self, **message) -> None:
        self.sock.send(keeper.pack(message))

    def next(self, op: str) -> dict:
        """The next message with ``op`` (others are kept for later calls)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for index, message in enumerate(self.inbox):
                if message.get("op") == op:
                    return self.inbox.pop(index)
            self.inbox.extend(keeper.unbatch(keeper.unpack(self.sock.recv(1 << 22))))
        raise AssertionError(f"no {op!r} from the keeper; got {self.inbox}")

    def hello(self) -> dict:
        self.send(op="hello", node="t", kill_grace=0.5, env_base={"PATH": os.environ["PATH"]})
        return self.next("hello")

    def spawn(self, task_id: int, script: str, tmp: Path) -> int:
        self.send(op="spawn", id=task_id, attempt=1, argv=["sh", "-c", script], env={},
                  workdir=str(tmp), stdout=str(tmp / f"{task_id}.out"),
                  stderr=str(tmp / f"{task_id}.err"), cores=[], memory=0, fence=True,
                  user="root")  # root: the scripts use the test's root-only tmp dir
        return self.next("started")["pid"]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def data_dir(tmp_path: Path):
    """A data dir with a keeper serving it; the keeper and its tasks end afterwards."""
    path = tmp_path / "node"
    path.mkdir()
    subprocess.run(keeper.command(path), check=True, timeout=10)  # returns once detached
    yield path
    for proc in psutil.process_iter(["cmdline"]):
        if "zriver.runner.keeper" in (proc.info["cmdline"] or []) and \
                (proc.info["cmdline"] or [""])[-1] == str(path):
            for child in proc.children():
                os.killpg(child.pid, signal.SIGKILL)
            proc.kill()


def connect(data_dir: Path) -> Agent:
    return wait_until(lambda: _try_connect(data_dir), 10, "the keeper to listen")


def _try_connect(data_dir: Path) -> Agent | None:
    try:
        return Agent(data_dir)
    except (ConnectionRefusedError, FileNotFoundError):
        return None


def keeper_alive(data_dir: Path) -> bool:
    return any("zriver.runner.keeper" in (p.info["cmdline"] or []) and
               (p.info["cmdline"] or [""])[-1] == str(data_dir)
               for p in psutil.process_iter(["cmdline", "status"])
               if p.info["status"] != psutil.STATUS_ZOMBIE)


def test_ends_seen_while_no_agent_is_connected_are_kept_with_their_exit_status(
        data_dir: Path, tmp_path: Path) -> None:
    agent = connect(data_dir)
    assert agent.hello()["tasks"] == []
    gate = tmp_path / "gate"
    pid = agent.spawn(1, f"while [ ! -e {gate} ]; do sleep 0.02; done; exit 7", tmp_path)
    agent.close()  # the agent goes (a crash, an upgrade): the task runs on
    assert pid_alive(pid)
    gate.touch()
    wait_until(lambda: not pid_alive(pid), 10, "the task to end")
    # No agent and nothing running: the keeper writes the uncollected end down and exits;
    # the next agent starts a keeper, which reads it back.
    wait_until(lambda: not keeper_alive(data_dir), 10, "the keeper to exit")
    assert (data_dir / keeper.EXITS_FILE).exists()
    subprocess.run(keeper.command(data_dir), check=True, timeout=10)
    agent = connect(data_dir)
    hello = agent.hello()
    assert [(e["id"], e["state"], e["exit_code"]) for e in hello["exits"]] == [(1, "failed", 7)]
    agent.send(op="acked", confirm=[], forget=[1])
    agent.close()  # nothing left to keep, no agent: the keeper exits by itself
    wait_until(lambda: not keeper_alive(data_dir), 10, "the keeper to exit")
    assert not (data_dir / keeper.EXITS_FILE).exists()


def test_a_restarted_agent_finds_what_still_runs(data_dir: Path, tmp_path: Path) -> None:
    agent = connect(data_dir)
    agent.hello()
    pid = agent.spawn(5, "sleep 30", tmp_path)
    agent.close()
    agent = connect(data_dir)
    [task] = agent.hello()["tasks"]
    assert (task["id"], task["pid"], task["attempt"], task["paused"]) == (5, pid, 1, False)
    agent.send(op="signal", id=5, action="kill", reason="killed on request")
    end = agent.next("exit")
    assert (end["id"], end["state"], end["detail"]) == (5, "killed",
                                                       "killed on request (SIGTERM)")


def test_a_second_agent_is_refused(data_dir: Path) -> None:
    first = connect(data_dir)
    first.hello()
    second = Agent(data_dir)
    assert second.next("refused")["msg"].startswith("another runner")
    first.hello()  # the first one is served as before


def test_the_lease_kills_unconfirmed_starts_then_fences_the_rest(data_dir: Path,
                                                                 tmp_path: Path) -> None:
    agent = connect(data_dir)
    agent.hello()
    confirmed = agent.spawn(1, "sleep 30", tmp_path)
    provisional = agent.spawn(2, "sleep 30", tmp_path)
    agent.send(op="acked", confirm=[1], forget=[])
    now = time.monotonic()
    agent.send(op="lease", provisional_until=now + 0.3, fence_at=now + 1.0, fence_grace=0.2,
               reason="ended by node t itself (self-fencing)")
    agent.spawn(3, "sleep 30", tmp_path)  # the agent may be gone: the keeper acts alone
    wait_until(lambda: not pid_alive(provisional), 5, "the unconfirmed start to be killed")
    assert pid_alive(confirmed), "a confirmed task was killed with the provisional one"
    wait_until(lambda: not pid_alive(confirmed), 5, "the fence to end the confirmed task")
    fenced_after = time.monotonic() - now
    assert fenced_after >= 1.0
    ends = {}
    while len(ends) < 3:
        end = agent.next("exit")
        ends[end["id"]] = end
    assert ends[2]["state"] == "pending" and "lease" in ends[2]["detail"]
    assert ends[3]["state"] == "pending"
    assert ends[1]["state"] == "lost" and "self-fencing" in ends[1]["detail"]
    # Past the lease, a spawn is refused: it goes back to the queue, it never runs.
    agent.send(op="spawn", id=4, attempt=1, argv=["true"], env={}, workdir=str(tmp_path),
               stdout=os.devnull, stderr=os.devnull, cores=[], memory=0, fence=True)
    end = agent.next("exit")
    assert (end["id"], end["state"]) == (4, "pending")


def test_sigterm_to_the_keeper_ends_its_tasks_then_the_keeper(data_dir: Path,
                                                              tmp_path: Path) -> None:
    agent = connect(data_dir)
    agent.hello()
    pid = agent.spawn(1, "sleep 30", tmp_path)
    keeper_pid = agent.hello()["pid"]
    os.kill(keeper_pid, signal.SIGTERM)
    end = agent.next("exit")
    assert end["state"] == "killed" and "keeper was stopped" in end["detail"]
    assert not pid_alive(pid)
    agent.close()
    wait_until(lambda: not pid_alive(keeper_pid), 10, "the keeper to exit")


def test_a_missing_workdir_and_a_missing_command_are_told_apart(data_dir: Path,
                                                               tmp_path: Path) -> None:
    agent = connect(data_dir)
    agent.hello()
    for task_id, workdir, argv, expected in (
            (1, tmp_path / "nowhere", ["true"], (126, "working directory")),
            (2, tmp_path, ["zriver-no-such-command"], (127, "command not found"))):
        agent.send(op="spawn", id=task_id, attempt=1, argv=argv, env={}, workdir=str(workdir),
                   stdout=os.devnull, stderr=os.devnull, cores=[], memory=0, fence=True,
                   user="root")
        end = agent.next("exit")
        assert (end["exit_code"], end["detail"].split(" ")[0]) == (
            expected[0], expected[1].split(" ")[0]), end


def test_a_task_naming_no_workdir_starts_in_its_accounts_home(data_dir: Path,
                                                               tmp_path: Path) -> None:
    """Not in the keeper's own directory: the account's home, or ``/`` for an account whose
    home does not exist (``nobody``: ``/nonexistent``)."""
    agent = connect(data_dir)
    agent.hello()
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)
    for task_id, user, expected in ((1, "root", pwd.getpwnam("root").pw_dir), (2, "nobody", "/")):
        if user == "nobody" and os.path.isdir(pwd.getpwnam("nobody").pw_dir):
            expected = pwd.getpwnam("nobody").pw_dir
        agent.send(op="spawn", id=task_id, attempt=1, argv=["pwd"], env={},
                   stdout=str(out / f"{task_id}.out"), stderr=os.devnull, cores=[], memory=0,
                   fence=True, user=user)
        end = agent.next("exit")
        assert end["state"] == "completed", end
        assert (out / f"{task_id}.out").read_text().strip() == expected


# ---- the lease (pure) ----------------------------------------------------------------------
@pytest.mark.parametrize("grace, kill_grace, fence_at, fence_grace", [
    (600.0, 10.0, 100.0 + 600 - 6 - 10, 10.0),  # the defaults: a full kill grace
    (12.0, 10.0, 100.0 + 12 - 6 - 0, 0.0),      # grace of two leases: SIGKILL at once
    (20.0, 10.0, 100.0 + 20 - 6 - 8, 8.0),      # the kill grace shortened to fit
])
def test_the_fence_is_over_a_lease_before_the_host_gives_up(grace, kill_grace, fence_at,
                                                            fence_grace) -> None:
    lease = Lease(kill_grace)
    lease.configure(6.0, grace)
    lease.renew(100.0)
    assert (lease.fence_at, lease.fence_grace) == (fence_at, fence_grace)
    assert lease.fence_at + lease.fence_grace <= 100.0 + grace - 6.0
    assert lease.provisional_until == 106.0


def test_the_lease_is_renewed_by_the_newest_request_only() -> None:
    lease = Lease(10.0)
    assert not lease.fresh(0.0)  # unknown until the host said how long
    lease.configure(6.0, 600.0)
    lease.renew(10.0)
    lease.renew(5.0)  # a late reply to an older request proves nothing newer
    assert lease.start == 10.0
    assert lease.fresh(15.9) and not lease.fresh(16.0)
    assert lease.worth_telling()
    lease.told = 10.0
    lease.renew(11.0)
    assert not lease.worth_telling()  # a quarter lease behind at most
    lease.renew(11.5)
    assert lease.worth_telling()


def test_a_dead_keeper_takes_no_task_with_it_unseen(cluster) -> None:
    """SIGKILL to the keeper: nobody can read its tasks' status any more, so the runner ends
    their groups and says so; the next task gets a new keeper."""
    from procs import keepers_of

    task_id = cluster.submit(["sleep", "30"])
    task = cluster.wait_state(task_id, {"running"})
    pid = int(task["detail"].split()[1])
    [old] = keepers_of([cluster.root / "n1"])
    old.kill()
    ended = cluster.wait_state(task_id, {"killed", "failed", "lost", "completed"})
    assert ended["state"] == "killed" and "keeper ended unexpectedly" in ended["detail"]
    wait_until(lambda: not pid_alive(pid), 5, "the orphaned task to be ended")
    fresh = cluster.submit(["true"])
    assert cluster.wait(fresh)[0]["state"] == "completed"
    assert [k.pid for k in keepers_of([cluster.root / "n1"])] != [old.pid]


def test_a_mistyped_command_is_not_found_even_in_the_runners_own_directory(cluster) -> None:
    """The README's quick start submits from the directory the runner was started in."""
    task_id = cluster.submit(["zriver-no-such-command"], workdir=os.getcwd())
    [summary] = cluster.wait(task_id)
    assert (summary["state"], summary["exit_code"]) == ("failed", 127)
    assert cluster.task(task_id)["detail"] == "command not found: zriver-no-such-command"
