"""A real cluster in separate processes: ``zriver host`` and two ``zriver runner``s (n1, n2).

What only real processes can show: the CLI against a running host, a host killed with -9 and
restarted on the same data dir and ports while tasks run (results arrive, nothing runs twice).
Runner crashes and restarts are in ``test_runner_restart.py``.

Heartbeats are fast (0.2 s, 3 misses) so that a dead runner is noticed in well under a second.
Every wait polls real state with a deadline (see ``procs.py``); nothing sleeps to synchronise.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from procs import Cluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

NODES = ("n1", "n2")
HOST_SETTINGS = {"heartbeat_interval": 0.2, "heartbeat_misses": 3}
RUNNER_SETTINGS = {"cores": 2, "request_timeout": 1.0, "kill_grace": 1.0}
CLI_TIMEOUT = 30


@pytest.fixture
def cluster(tmp_path: Path):
    """A host and runners n1, n2 (2 cores each), all online; everything ends afterwards."""
    with Cluster(tmp_path) as cluster:
        cluster.start_host(**HOST_SETTINGS)
        for name in NODES:
            cluster.start_runner(name, wait=False, **RUNNER_SETTINGS)
        for name in NODES:
            cluster.wait_node_state(name, "online")
        yield cluster
        print(cluster.diagnostics())  # pytest shows this only for a failed test


def cli(cluster: Cluster, *args: str, host_flag: bool = True) -> subprocess.CompletedProcess:
    """Run ``python -m zriver [--host EP] ARGS`` as a user would."""
    command = [sys.executable, "-m", "zriver"]
    if host_flag:
        command += ["--host", cluster.endpoint]
    return subprocess.run(command + list(args), capture_output=True, text=True, env=cluster.env,
                          cwd=cluster.base, timeout=CLI_TIMEOUT)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, (f"{result.args} exited {result.returncode}\n"
                                    f"stdout: {result.stdout}\nstderr: {result.stderr}")
    return result.stdout


def task_pid(task: dict) -> int:
    """The pid the runner reported in the task's ``running`` event (detail ``pid N``)."""
    details = [e["detail"] for e in task["events"] if e["state"] == "running"]
    assert len(details) == 1 and details[0].startswith("pid "), task["events"]
    return int(details[0].split()[1])


def marker_task(cluster: Cluster, marker: Path, **spec) -> int:
    """A task that appends ``start``, runs 1.5 s, then appends ``done`` to ``marker``."""
    script = f"echo start >> '{marker}'; sleep 1.5; echo done >> '{marker}'"
    return cluster.submit(["sh", "-c", script], **spec)


def marker_lines(marker: Path) -> list[str]:
    try:
        return marker.read_text().split()
    except FileNotFoundError:
        return []


# ---- 1. the CLI against real processes ---------------------------------------------------
def test_cli_submit_logs_nodes_and_target(cluster: Cluster) -> None:
    # --user root: the submit's working directory (the test's) is root's only
    out = ok(cli(cluster, "submit", "--wait", "--user", "root", "--", "sh", "-c", "echo hi"))
    task_id = int(out.split()[0])
    assert ok(cli(cluster, "logs", str(task_id))) == "hi\n"

    nodes = {n["name"]: n for n in json.loads(ok(cli(cluster, "nodes", "--json")))}
    assert set(nodes) == set(NODES)
    for name in NODES:
        assert nodes[name]["state"] == "online"
        assert nodes[name]["cores"] == 2

    out = ok(cli(cluster, "submit", "--target", "n2", "--wait", "--user", "root", "--",
                 "sh", "-c",
                 'echo "on $ZRIVER_NODE"'))
    target_id = int(out.split()[0])
    status = json.loads(ok(cli(cluster, "status", str(target_id), "--json")))
    assert (status["id"], status["state"], status["node"], status["exit_code"]) == \
        (target_id, "completed", "n2", 0)
    assert [e["state"] for e in status["events"]] == ["pending", "assigned", "running",
                                                      "completed"]
    assert ok(cli(cluster, "logs", str(target_id))) == "on n2\n"

    # With ZRIVER_HOME set to the host's data dir, a client finds the host with no flags.
    tasks = json.loads(ok(cli(cluster, "tasks", "--json", host_flag=False)))
    assert {t["id"] for t in tasks} == {task_id, target_id}

    # A failing task's status is passed through by submit --wait.
    failed = cli(cluster, "submit", "--wait", "--user", "root", "--", "sh", "-c", "exit 3")
    assert failed.returncode == 3, failed.stderr


# ---- 2. the host killed with -9 while tasks run ------------------------------------------
def test_host_kill9_and_restart_keeps_results_and_runs_each_task_once(cluster: Cluster,
                                                                      tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    # Both nodes full (2 cores each), and one task waiting for each node.
    running = [marker_task(cluster, marks / f"run-{n}", cores=2, target=n) for n in NODES]
    for task_id in running:
        cluster.wait_task_state(task_id, "running", timeout=10)
    waiting = [marker_task(cluster, marks / f"wait-{n}", cores=2, target=n) for n in NODES]
    for task_id in waiting:  # queued, or staged on the runner behind the running one
        assert cluster.task(task_id)["state"] in ("pending", "assigned")
    cluster.wait_for(lambda: all(marker_lines(marks / f"run-{n}") == ["start"] for n in NODES),
                     5, "the running tasks to write their start markers")

    old_ports = cluster.host.ports()
    cluster.host.kill9()
    assert all(marker_lines(marks / f"run-{n}") == ["start"] for n in NODES), \
        "the tasks ended before the host was killed: the test proves nothing"
    # The tasks finish while there is no host; their results wait in the runners' outboxes.
    cluster.wait_for(lambda: all(marker_lines(marks / f"run-{n}") == ["start", "done"]
                                 for n in NODES), 10, "the tasks to finish without a host")

    host = cluster.restart_host()
    assert host.ports() == old_ports
    for name in NODES:
        cluster.wait_node_state(name, "online", timeout=10)
    tasks = cluster.wait_final(running + waiting, timeout=20)
    for task_id, task in tasks.items():
        assert (task["state"], task["exit_code"]) == ("completed", 0), task
        assert [e["state"] for e in task["events"]].count("running") == 1, task["events"]
    for name in ("run-n1", "run-n2", "wait-n1", "wait-n2"):
        assert marker_lines(marks / name) == ["start", "done"], f"{name} did not run once"
    assert {tasks[i]["node"] for i in running} == set(NODES)
    assert [tasks[i]["node"] for i in waiting] == list(NODES)
