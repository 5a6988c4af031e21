"""Behaviour of a real in-process cluster: submit, run, logs, exit codes, signals, queueing."""

from __future__ import annotations

import os
import time

import pytest

from zriver.errors import Conflict, Impossible, InvalidArgument, NotFound


def test_task_runs_and_its_output_is_kept(cluster):
    task_id = cluster.submit(["sh", "-c", "echo out; echo err >&2"])
    [summary] = cluster.wait(task_id)
    assert summary == {"id": task_id, "state": "completed", "exit_code": 0}
    assert cluster.log(task_id) == b"out\n"
    assert cluster.log(task_id, "stderr") == b"err\n"
    task = cluster.task(task_id)
    assert task["node"] == "n1" and task["started_at"] <= task["finished_at"]


def test_state_history_is_recorded_in_order(cluster):
    task_id = cluster.submit(["true"])
    cluster.wait(task_id)
    events = cluster.client().call("task.get", {"id": task_id})["events"]
    assert [e["state"] for e in events] == ["pending", "assigned", "running", "completed"]
    assert [e["at"] for e in events] == sorted(e["at"] for e in events)


@pytest.mark.parametrize("command, state, code", [
    (["sh", "-c", "exit 3"], "failed", 3),
    (["sh", "-c", "kill -SEGV $$"], "failed", 128 + 11),
    (["no-such-command-zriver"], "failed", 127),
])
def test_exit_status_becomes_the_task_state(cluster, command, state, code):
    task_id = cluster.submit(command)
    [summary] = cluster.wait(task_id)
    assert (summary["state"], summary["exit_code"]) == (state, code)
    if code == 127:
        assert "command not found" in cluster.task(task_id)["detail"]


def test_env_workdir_and_pinned_cores(cluster, tmp_path):
    """The task runs in its workdir with its variables, pinned to its cores. (The mask is
    read after the task was reported running: a keeper that is not on one of the task's
    cores pins the new process right after the spawn, see docs/architecture.md.)"""
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    task_id = cluster.submit(
        ["sh", "-c", "echo $SEED $ZRIVER_TASK_ID; pwd; read go < gate; "
                     "grep Cpus_allowed_list /proc/self/status"],
        env={"SEED": "3"}, workdir=str(tmp_path), cores=1)
    cluster.wait_state(task_id, {"running"})
    with open(gate, "w") as opened:  # (blocks until the task opens it to read)
        opened.write("go\n")
    cluster.wait(task_id)
    seed, cwd, cpus = cluster.log(task_id).decode().splitlines()
    assert seed == f"3 {task_id}"
    assert cwd == str(tmp_path)
    allocated = cluster.task(task_id)["allocated_cores"]
    assert cpus.split()[-1] == ",".join(map(str, allocated))


def test_missing_workdir_fails_with_a_reason(cluster, tmp_path):
    task_id = cluster.submit(["true"], workdir=str(tmp_path / "nope"))
    [summary] = cluster.wait(task_id)
    assert summary["state"] == "failed"
    assert "does not exist" in cluster.task(task_id)["detail"]


def test_kill_ends_the_whole_process_group(cluster, tmp_path):
    pidfile = tmp_path / "child.pid"
    task_id = cluster.submit(["sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"])
    cluster.wait_state(task_id, {"running"})
    cluster.client().call("task.kill", {"id": task_id})
    [summary] = cluster.wait(task_id)
    assert summary["state"] == "killed"
    child = int(pidfile.read_text())
    assert not _alive(child)


def test_pause_and_resume(cluster, tmp_path):
    go = tmp_path / "go"
    task_id = cluster.submit(["sh", "-c", f"while [ ! -e {go} ]; do sleep 0.05; done; echo done"])
    cluster.wait_state(task_id, {"running"})
    client = cluster.client()
    client.call("task.pause", {"id": task_id})
    cluster.wait_state(task_id, {"paused"})
    pid = int(_running_pid(client, task_id))
    assert _stops(pid)
    with pytest.raises(Conflict):
        client.call("task.pause", {"id": task_id})
    client.call("task.resume", {"id": task_id})
    cluster.wait_state(task_id, {"running"})
    go.touch()
    assert cluster.wait(task_id)[0]["state"] == "completed"
    assert cluster.log(task_id) == b"done\n"


def test_kill_a_paused_task(cluster):
    task_id = cluster.submit(["sleep", "60"])
    cluster.wait_state(task_id, {"running"})
    client = cluster.client()
    client.call("task.pause", {"id": task_id})
    cluster.wait_state(task_id, {"paused"})
    client.call("task.kill", {"id": task_id})
    assert cluster.wait(task_id)[0]["state"] == "killed"


def test_tasks_that_do_not_fit_queue_fifo_until_capacity_frees(cluster, tmp_path):
    gate = tmp_path / "gate"
    wait_gate = ["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done"]
    first = cluster.submit(wait_gate, cores=2)
    cluster.wait_state(first, {"running"})
    queued = cluster.submit_many([{"command": ["true"], "cores": 1} for _ in range(3)])
    rows = {t["id"]: t for t in cluster.client().call("task.list", {})["tasks"]}
    for task_id in queued:
        assert rows[task_id]["state"] == "pending"
        assert "waiting" in rows[task_id]["detail"]
    gate.touch()
    summaries = cluster.wait(first, *queued)
    assert {s["state"] for s in summaries} == {"completed"}
    starts = [cluster.task(i)["started_at"] for i in queued]
    assert starts == sorted(starts)


def test_memory_limit_kills_with_killed_oom(cluster):
    task_id = cluster.submit(
        ["python3", "-c", "x = bytearray(300 * 1024 * 1024); print(len(x))"],
        memory=64 * 1024 * 1024)
    [summary] = cluster.wait(task_id)
    method = cluster.runners["n1"].memory_limit_method
    if method == "cgroup":
        assert summary["state"] == "killed_oom"
    else:  # rlimit: the allocation fails inside the task
        assert summary["state"] == "failed"


def test_kill_pending_task(cluster, tmp_path):
    gate = tmp_path / "gate"
    blocker = cluster.submit(["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done"], cores=2)
    cluster.wait_state(blocker, {"running"})
    pending = cluster.submit(["true"])
    cluster.client().call("task.kill", {"id": pending})
    assert cluster.wait(pending)[0]["state"] == "killed"
    gate.touch()
    cluster.wait(blocker)
    with pytest.raises(Conflict):
        cluster.client().call("task.kill", {"id": pending})


@pytest.mark.parametrize("spec, error", [
    ({"command": ["true"], "cores": 64}, Impossible),
    ({"command": ["true"], "memory": 1 << 50}, Impossible),
    ({"command": ["true"], "target": "nowhere"}, NotFound),
    ({"command": ["true"], "cores": 0}, InvalidArgument),
    ({"command": ["true"], "memory": -5}, InvalidArgument),
    ({"command": []}, InvalidArgument),
    ({"command": ["true"], "env": {"1BAD": "x"}}, InvalidArgument),
])
def test_impossible_or_invalid_requests_are_refused_and_change_nothing(cluster, spec, error):
    client = cluster.client()
    before = client.call("task.list", {})["tasks"]
    with pytest.raises(error):
        client.call("task.submit", {"tasks": [{"workdir": "/", **spec}]})
    assert client.call("task.list", {})["tasks"] == before


def test_a_batch_with_one_bad_task_is_refused_whole(cluster):
    client = cluster.client()
    with pytest.raises(Impossible):
        client.call("task.submit", {"tasks": [{"command": ["true"]},
                                              {"command": ["true"], "cores": 99}]})
    assert client.call("task.list", {})["tasks"] == []


@pytest.mark.parametrize("op", ["task.get", "task.kill", "task.pause", "task.resume",
                                "task.logs"])
def test_unknown_task_ids(cluster, op):
    with pytest.raises(NotFound):
        cluster.client().call(op, {"id": 999})


def test_unknown_node_health(cluster):
    with pytest.raises(NotFound):
        cluster.client().call("node.health", {"name": "ghost"})


def test_nodes_report_capacity_and_use(cluster, tmp_path):
    gate = tmp_path / "gate"
    task_id = cluster.submit(["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done"],
                             memory=1 << 30)
    cluster.wait_state(task_id, {"running"})
    [node] = cluster.client().call("node.list")["nodes"]
    assert (node["name"], node["state"], node["cores"], node["cores_used"]) == ("n1", "online", 2, 1)
    assert (node["memory"], node["memory_used"]) == (4 << 30, 1 << 30)
    gate.touch()
    cluster.wait(task_id)


def test_health_comes_from_heartbeats(cluster):
    client = cluster.client()
    sub = client.subscribe(["hb.n1"])
    try:
        assert sub.poll(5000), "no heartbeat published"
    finally:
        sub.close(linger=0)
    [node] = client.call("node.health", {"name": "n1"})["nodes"]
    assert node["memory_total"] > 0 and "cpu_percent" in node
    assert node["memory_limit"] in ("cgroup", "rlimit")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def _proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().split(") ")[1][0]


def _stops(pid: int, within: float = 5.0) -> bool:
    """Whether ``pid`` is in state T (stopped) within ``within`` s: ``paused`` is reported once
    the keeper has sent SIGSTOP, and the kernel stops a runnable process when it next runs."""
    deadline = time.monotonic() + within
    while _proc_state(pid) != "T":
        if time.monotonic() > deadline:
            return False
        os.sched_yield()
    return True


def _running_pid(client, task_id: int) -> str:
    events = client.call("task.get", {"id": task_id})["events"]
    return next(e["detail"].split()[1] for e in events if e["detail"].startswith("pid "))



def test_staged_tasks_start_behind_running_ones_and_can_be_killed(cluster, tmp_path):
    gate = tmp_path / "gate"
    hold = ["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done; echo $ZRIVER_CORES"]
    first = [cluster.submit(hold) for _ in range(2)]
    for task_id in first:
        cluster.wait_state(task_id, {"running"})
    staged = [cluster.submit(["sh", "-c", "echo $ZRIVER_CORES"]) for _ in range(2)]
    queued = cluster.submit(["true"])
    for task_id in staged:
        task = cluster.task(task_id)
        assert task["state"] == "assigned" and "starts when task" in task["detail"]
    assert "starts when task" in cluster.task(queued)["detail"]  # chains are 3 deep
    cluster.client().call("task.kill", {"id": staged[1]})
    assert cluster.wait(staged[1])[0]["state"] == "killed"
    gate.touch()
    summaries = cluster.wait(*first, staged[0], queued)
    assert {s["state"] for s in summaries} == {"completed"}
    cores_of = {i: cluster.log(i).decode().strip() for i in first + [staged[0]]}
    assert cores_of[staged[0]] in (cores_of[first[0]], cores_of[first[1]])


def test_stopping_a_runner_never_starts_its_staged_tasks(make_cluster, tmp_path):
    cluster = make_cluster({"n1": {"cores": 1}})
    running = cluster.submit(["sleep", "60"])
    cluster.wait_state(running, {"running"})
    marker = tmp_path / "started"
    staged = cluster.submit(["touch", str(marker)])
    assert "starts when task" in cluster.task(staged)["detail"]
    cluster.stop_runner("n1")
    assert not marker.exists()
