"""A runner killed (-9), stopped (SIGTERM) and restarted while native tasks run: never lose work.

Real processes: a ``zriver host`` and one ``zriver runner`` (2 cores; heartbeats every 0.25 s,
so its lease is 0.75 s). Two tasks run, each gated on a file the test creates, and four more
are staged behind them on the runner (chained starts). Each task appends its id to a marks
file when it starts, so "ran exactly once" is read from that file. The running ones exit with
codes of their own (0 and 7): a re-adopted task must report its real exit status.

Cases: killed with -9 and restarted at once (within 2 s), and after the host has seen the node
unreachable and requeued the staged work (the issue's "within 2 minutes": any time past the
lease and within the grace); stopped with SIGTERM and restarted (nothing killed); and stopped
with ``--kill-tasks`` (the tasks end ``killed``, saying who killed them).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

import marks
from marks import gated, marks_of
from procs import Cluster, keepers_of, pid_alive

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

HOST = {"heartbeat_interval": 0.25, "heartbeat_misses": 3}
RUNNER = {"cores": 2, "request_timeout": 1.0, "kill_grace": 1.0}
CODES = (0, 7)


@pytest.fixture
def cluster(tmp_path: Path):
    with Cluster(tmp_path) as cluster:
        cluster.start_host(**HOST)
        cluster.start_runner("n1", **RUNNER)
        yield cluster
        print(cluster.diagnostics())


def running_and_staged(cluster: Cluster, tmp_path: Path) -> tuple[list[int], list[int], Path]:
    """Two gated tasks running (confirmed by the host) and four staged behind them."""
    gate = tmp_path / "gate"
    running, staged = marks.running_and_staged(cluster, tmp_path / "marks", gate, CODES, 4)
    return running, staged, gate


def task_pids(cluster: Cluster, task_ids: list[int]) -> list[int]:
    return [int(cluster.task(t)["events"][2]["detail"].split()[1]) for t in task_ids]


def check_all_ran_once(cluster: Cluster, running: list[int], staged: list[int],
                       marks_file: Path) -> dict:
    tasks = cluster.wait_final(running + staged, timeout=20)
    for task_id, code in zip(running, CODES):
        task = tasks[task_id]
        assert task["exit_code"] == code, task
        assert task["state"] == ("completed" if code == 0 else "failed"), task
    for task_id in staged:
        assert (tasks[task_id]["state"], tasks[task_id]["exit_code"]) == ("completed", 0)
    ran = marks_of(marks_file)
    assert sorted(ran) == sorted(running + staged), f"each task once, got {ran}"
    return tasks


def test_runner_kill9_restarted_at_once_readopts_running_tasks_and_runs_staged_once(
        cluster: Cluster, tmp_path: Path) -> None:
    running, staged, gate = running_and_staged(cluster, tmp_path)
    pids = task_pids(cluster, running)
    cluster.runners["n1"].kill9()
    assert all(pid_alive(pid) for pid in pids), "the tasks died with their runner"
    gate.touch()  # they end while no agent is there: their keeper keeps the status
    cluster.wait_for(lambda: not any(pid_alive(pid) for pid in pids), 10, "the tasks to end")
    started = time.monotonic()
    cluster.restart_runner("n1")
    tasks = check_all_ran_once(cluster, running, staged, tmp_path / "marks")
    print(f"kill -9, restart at once: all 6 final {time.monotonic() - started:.2f} s after "
          f"the restart began")
    assert all(e["state"] != "lost" for t in tasks.values() for e in t["events"])


def test_runner_kill9_restarted_after_the_lease_gets_its_tasks_back(
        cluster: Cluster, tmp_path: Path) -> None:
    running, staged, gate = running_and_staged(cluster, tmp_path)
    cluster.runners["n1"].kill9()
    cluster.wait_node_state("n1", "unreachable", timeout=10)
    for task_id in running:
        task = cluster.wait_task_state(task_id, "unreachable", timeout=5)
        assert "unreachable" in task["detail"]
    for task_id in staged:  # never started: back to the queue once the lease is surely over
        cluster.wait_task_state(task_id, "pending", timeout=10)
    gate.touch()
    cluster.restart_runner("n1")
    tasks = check_all_ran_once(cluster, running, staged, tmp_path / "marks")
    for task_id in running:
        states = [e["state"] for e in tasks[task_id]["events"]]
        assert states[-3:-1] == ["unreachable", "running"], states


def test_runner_sigterm_leaves_tasks_running_and_a_restart_takes_them_back(
        cluster: Cluster, tmp_path: Path) -> None:
    running, staged, gate = running_and_staged(cluster, tmp_path)
    pids = task_pids(cluster, running)
    assert cluster.runners["n1"].terminate() == 0
    assert all(pid_alive(pid) for pid in pids), "SIGTERM to the runner ended its tasks"
    assert keepers_of([cluster.runners["n1"].data_dir]), "no keeper holds the tasks"
    cluster.restart_runner("n1")
    assert all(pid_alive(pid) for pid in pids)
    gate.touch()
    tasks = check_all_ran_once(cluster, running, staged, tmp_path / "marks")
    assert not any(t["state"] == "killed" for t in tasks.values())


def test_runner_kill_tasks_ends_them_and_says_who(cluster: Cluster, tmp_path: Path) -> None:
    config = cluster.runners["n1"].config
    cluster.runners["n1"].terminate()
    proc = subprocess.Popen([sys.executable, "-m", "zriver", "runner", "--config", str(config),
                             "--kill-tasks"], env=cluster.env, cwd=cluster.base,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        cluster.wait_for(lambda: cluster.nodes()["n1"]["state"] == "online", 20,
                         "the --kill-tasks runner to register")
        task_id = gated(cluster, tmp_path / "marks", tmp_path / "gate", 0)
        cluster.wait_task_state(task_id, "running", timeout=10)
        proc.terminate()
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    task = cluster.wait_task_state(task_id, {"killed", "failed", "completed"}, timeout=10)
    assert task["state"] == "killed", task
    assert "killed by runner n1 on shutdown (--kill-tasks)" in task["detail"], task


def test_a_second_runner_with_a_connected_nodes_name_is_refused_and_changes_nothing(
        cluster: Cluster, tmp_path: Path) -> None:
    marks_file, gate = tmp_path / "marks", tmp_path / "gate"
    task_id = gated(cluster, marks_file, gate, 0)
    cluster.wait_task_state(task_id, "running", timeout=10)
    config = tmp_path / "config" / "impostor.toml"
    first = cluster.runners["n1"].config.read_text()
    config.write_text(first.replace(str(cluster.runners["n1"].data_dir),
                                    str(tmp_path / "impostor")))
    second = subprocess.run([sys.executable, "-m", "zriver", "runner", "--config", str(config)],
                            env=cluster.env, cwd=cluster.base, capture_output=True, text=True,
                            timeout=30)
    assert second.returncode != 0
    assert "node 'n1' is already connected from another runner" in second.stderr
    assert "stop that one first" in second.stderr
    task = cluster.task(task_id)
    assert task["state"] == "running" and [e["state"] for e in task["events"]] == [
        "pending", "assigned", "running"], task["events"]
    assert cluster.nodes()["n1"]["state"] == "online"
    gate.touch()
    assert cluster.wait_final([task_id], timeout=10)[task_id]["state"] == "completed"
    assert marks_of(marks_file) == [task_id]
