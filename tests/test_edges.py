"""Edges of the core: undeliverable commands, the rlimit fallback, JSON logs, pinning."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys

from procs import wait_until

from zriver.protocol import decode
from zriver.runner.spawn import CommandPaths, pin_tree
from zriver.runner.cgroups import RLIMIT, MemoryLimiter


def test_a_start_that_cannot_be_delivered_goes_back_to_the_queue(make_cluster):
    cluster = make_cluster({"n1": {}, "n2": {}}, host={"heartbeat_interval": 30.0})
    sub = cluster.client().subscribe(["evt.task."])
    for _ in range(20):  # until the subscription is in place (a CURVE handshake first)
        cluster.wait(cluster.submit(["true"], target="n2"))
        if sub.poll(500):
            break
    else:
        raise AssertionError("the subscription never received an event")
    while sub.poll(200):
        sub.recv_multipart()
    cluster.stop_runner("n1")  # gone, but no heartbeat has been missed yet
    task_id = cluster.submit(["true"], target="n1")
    task = cluster.wait_state(task_id, {"pending"})
    seen = []
    while "pending" not in seen[1:]:
        assert sub.poll(5000), f"events so far: {seen}"
        body = decode(sub.recv_multipart()[1]).body
        if body["id"] == task_id:
            seen.append(body["state"])
    sub.close(linger=0)
    assert seen == ["assigned", "pending"]  # in the order they happened
    nodes = {n["name"]: n["state"] for n in cluster.client().call("node.list")["nodes"]}
    assert nodes["n1"] == "unreachable"  # ROUTER_MANDATORY told the host at once
    events = cluster.client().call("task.get", {"id": task_id})["events"]
    assert [e["state"] for e in events] == ["pending", "assigned", "pending"]
    assert "unreachable" in events[-1]["detail"]
    cluster.start_runner("n1")
    assert cluster.wait(task_id)[0]["state"] == "completed"
    assert task["id"] == task_id


def test_rlimit_fallback_limits_address_space(monkeypatch):
    monkeypatch.setattr("zriver.runner.cgroups._mounts", lambda: [])
    limiter = MemoryLimiter("t")
    assert limiter.probe() == RLIMIT
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        limiter.apply(1, child.pid, 512 << 20)
        assert resource.prlimit(child.pid, resource.RLIMIT_AS) == (512 << 20, 512 << 20)
        assert limiter.oom_killed(1) is False
    finally:
        child.kill()
        child.wait()


def test_log_json_gives_one_object_per_line(tmp_path):
    (tmp_path / "host.toml").write_text("router_port = 0\nxsub_port = 0\nxpub_port = 0\nstream_port = 0\nrelay_port = 0\nweb_port = 0\n"
                                        f"data_dir = \"{tmp_path}\"\n")
    proc = subprocess.Popen([sys.executable, "-m", "zriver", "--log-json", "host", "--config",
                             str(tmp_path / "host.toml")], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "ZRIVER_HOME": str(tmp_path)})
    try:
        events = []
        while not events or events[-1]["event"] != "host.started":  # front ends log first
            events.append(json.loads(proc.stderr.readline()))  # every line one JSON object
            assert len(events) <= 10, events
        assert events[-1]["level"] == "info"
    finally:
        proc.terminate()
        proc.wait(10)


def test_pin_tree_pins_what_a_task_started_before_it_was_pinned(tmp_path):
    """The children a process made before the runner pinned it are pinned with it."""
    ready, inner = tmp_path / "ready", tmp_path / "inner"
    leader = subprocess.Popen(
        ["sh", "-c", f"sleep 30 & sleep 30 & (sleep 30 & touch {inner}; wait) & touch {ready}; wait"],
        start_new_session=True)
    try:
        wait_until(lambda: ready.exists() and inner.exists(), 10, "the task to start its children")
        family = descendants(leader.pid)
        assert len(family) >= 5  # sh, two sleeps, a subshell and its sleep
        target = sorted(os.sched_getaffinity(0))[:1]
        pin_tree(leader.pid, target)
        assert {pid: sorted(os.sched_getaffinity(pid)) for pid in family} == \
            {pid: target for pid in family}
    finally:
        os.killpg(leader.pid, signal.SIGKILL)
        leader.wait()


def descendants(pid: int) -> list[int]:
    result, todo = [], [pid]
    while todo:
        current = todo.pop()
        result.append(current)
        with open(f"/proc/{current}/task/{current}/children") as handle:
            todo.extend(int(child) for child in handle.read().split())
    return result


def test_command_paths_are_looked_up_on_path_and_remembered_for_a_while(tmp_path, monkeypatch):
    program = tmp_path / "zriver-test-tool"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    paths = CommandPaths(ttl=60)
    assert paths.resolve("zriver-test-tool") == str(program)
    assert paths.resolve("./zriver-test-tool") is None  # a path: relative to the task's dir
    program.unlink()
    assert paths.resolve("zriver-test-tool") == str(program)  # remembered
    paths.forget("zriver-test-tool")
    assert paths.resolve("zriver-test-tool") is None
    assert CommandPaths(ttl=0).resolve("sh") == shutil.which("sh")


def test_a_command_gone_since_its_path_was_remembered_is_reported_not_found(cluster, tmp_path,
                                                                            monkeypatch):
    program = tmp_path / "zriver-vanishing"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    # a command is looked up on the task's PATH (the runner's, unless the task sets one)
    path = {"PATH": f"{tmp_path}:{os.environ['PATH']}"}
    first = cluster.submit(["zriver-vanishing"], env=path)
    assert cluster.wait(first)[0]["state"] == "completed"
    program.unlink()
    second = cluster.submit(["zriver-vanishing"], env=path)
    [summary] = cluster.wait(second)
    assert (summary["state"], summary["exit_code"]) == ("failed", 127)
    assert "command not found" in cluster.task(second)["detail"]
