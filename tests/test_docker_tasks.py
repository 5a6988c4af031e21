"""Container tasks on a real Docker engine: output, limits, mounts, OOM, signals, bad input,
runner and host restarts, a daemon that goes away."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from docker_fixtures import *  # noqa: F401,F403  (fixtures)
from docker_fixtures import SocketProxy, eventually, submit_docker, wait_docker_event

from zriver.errors import Impossible, InvalidArgument, NotFound

pytestmark = pytest.mark.docker


def make_env(cluster, name: str = "bb", image: str = "zriver-test-busybox", commit=True) -> str:
    reply = cluster.client(timeout=120).call("env.create", {"name": name, "image": image,
                                                           "commit": commit}, timeout=120)
    return reply["version"]["version"] if commit else ""


def containers_of(client, task_id: int, cluster=None, node: str = "n1") -> list[dict]:
    """The containers of ``task_id``: those of ``cluster``'s runner ``node`` when given (other
    test sessions may share the Docker daemon, with the same task ids)."""
    labels = [f"zriver.task={task_id}"]
    runner_id = cluster.root / node / "runner-id" if cluster is not None else None
    if runner_id is not None and runner_id.exists():
        labels.append(f"zriver.runner={runner_id.read_text().strip()}")
    return client.api.containers(all=True, filters={"label": labels})


def test_output_env_mounts_and_removal(dcluster, docker_client, tmp_path):
    shared = tmp_path / "shared"
    data = tmp_path / "data"
    data.mkdir()
    (data / "input.txt").write_text("from the node\n")
    cluster = dcluster({"n1": {"cores": 2, "memory": "4G", "shared_dir": str(shared),
                               "additional_mounts": [f"{data}:/data:ro"]}},
                       host={"shared_dir": str(shared)})
    version = make_env(cluster)
    (shared / "shared_data").mkdir(parents=True, exist_ok=True)
    (shared / "shared_data" / "job.sh").write_text("echo job ran\n")
    (tmp_path / "e").write_text("extra\n")
    task_id = submit_docker(cluster, ["sh", "-c",
                                      "sh /shared/job.sh; echo $SEED $ZRIVER_TASK_ID; pwd; "
                                      "cat /data/input.txt; echo x > /data/nope || echo ro; "
                                      "echo tmp > /local_temp/t; cat /extra/e; echo err >&2"],
                            env={"SEED": "7"}, workdir="/work",
                            mounts=[f"{tmp_path}:/extra:ro"])
    [summary] = cluster.wait(task_id)
    assert summary["state"] == "completed", cluster.task(task_id)
    out = cluster.log(task_id).decode().splitlines()
    assert out == ["job ran", f"7 {task_id}", "/work", "from the node", "ro", "extra"]
    assert b"err\n" in cluster.log(task_id, "stderr")
    assert (tmp_path / "c0" / "n1" / "local_temp" / "t").read_text() == "tmp\n"
    task = cluster.task(task_id)
    assert task["backend"] == "docker" and version in cluster.client().call(
        "task.get", {"id": task_id})["events"][2]["detail"]
    wait_docker_event(docker_client, "destroy", since=task["started_at"] - 1,
                      label=[f"zriver.task={task_id}"])
    assert containers_of(docker_client, task_id, cluster) == []


def test_limits_are_really_applied(dcluster, docker_client):
    cluster = dcluster()
    make_env(cluster)
    script = ("cat /sys/fs/cgroup/cpuset/cpuset.cpus 2>/dev/null || "
              "cat /sys/fs/cgroup/cpuset.cpus; "
              "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us "
              "2>/dev/null || cat /sys/fs/cgroup/cpu.max; "
              "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || "
              "cat /sys/fs/cgroup/memory.max")
    task_id = submit_docker(cluster, ["sh", "-c", script], cores=1, memory=64 << 20)
    [summary] = cluster.wait(task_id)
    assert summary["state"] == "completed", cluster.task(task_id)
    values = cluster.log(task_id).decode().split()
    allocated = cluster.task(task_id)["allocated_cores"]
    assert values[0] == ",".join(map(str, allocated))
    if len(values) == 4:  # cgroup v1: quota, period, limit
        assert int(values[1]) == int(values[2])  # one CPU's worth of quota per period
        assert int(values[3]) == 64 << 20
    else:  # cgroup v2: "quota period", limit
        assert int(values[1]) == int(values[2]) and int(values[3]) == 64 << 20


def test_a_numa_target_binds_the_container_memory(dcluster):
    cluster = dcluster()
    make_env(cluster)
    task_id = submit_docker(cluster, ["sh", "-c", "cat /sys/fs/cgroup/cpuset/cpuset.mems "
                                                  "2>/dev/null || cat /sys/fs/cgroup/cpuset.mems"],
                            target="n1:0")
    assert cluster.wait(task_id)[0]["state"] == "completed", cluster.task(task_id)
    assert cluster.log(task_id) == b"0\n"


def test_logs_follow_a_running_container_live(dcluster):
    cluster = dcluster()
    make_env(cluster)
    go = cluster.root / "n1" / "local_temp" / "go"
    task_id = submit_docker(cluster, ["sh", "-c", "echo first; while [ ! -e /local_temp/go ]; "
                                                  "do sleep 0.05; done; echo second"])
    follow = subprocess.Popen([sys.executable, "-m", "zriver", *cluster.cli_flags(), "logs",
                               "-f", str(task_id)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert follow.stdout.readline() == "first\n"  # before the task can end
        go.touch()
        assert follow.stdout.readline() == "second\n"
        assert follow.wait(30) == 0
    finally:
        follow.kill()
        follow.wait()
    assert cluster.wait(task_id)[0]["state"] == "completed"


def test_oom_kill_becomes_killed_oom(dcluster):
    cluster = dcluster()
    make_env(cluster)
    task_id = submit_docker(cluster, ["dd", "if=/dev/zero", "of=/dev/null", "bs=96M",
                                      "count=1"], memory=32 << 20)
    [summary] = cluster.wait(task_id)
    assert summary["state"] == "killed_oom", cluster.task(task_id)
    assert "OOM" in cluster.task(task_id)["detail"]
    # a plain exit 137 is not an OOM kill
    other = submit_docker(cluster, ["sh", "-c", "exit 137"], memory=32 << 20)
    assert cluster.wait(other)[0]["state"] == "failed"


def test_pause_resume_and_kill(dcluster, docker_client):
    cluster = dcluster()
    make_env(cluster)
    task_id = submit_docker(cluster, ["sh", "-c", "trap 'echo term; exit 3' TERM; "
                                                  "while :; do sleep 0.05; done"])
    running = cluster.wait_state(task_id, {"running"})
    since = running["started_at"] - 1
    label = [f"zriver.task={task_id}"]
    client = cluster.client()
    client.call("task.pause", {"id": task_id})
    wait_docker_event(docker_client, "pause", since, label=label)
    [container] = containers_of(docker_client, task_id, cluster)
    assert docker_client.api.inspect_container(container["Id"])["State"]["Paused"]
    cluster.wait_state(task_id, {"paused"})  # reported once Docker's pause has returned
    client.call("task.resume", {"id": task_id})
    unpaused = wait_docker_event(docker_client, "unpause", since, label=label)["timeNano"]
    cluster.wait_state(task_id, {"running"})
    client.call("task.pause", {"id": task_id})
    wait_docker_event(docker_client, "pause", f"{unpaused // 10**9}.{unpaused % 10**9:09d}",
                      label=label)
    assert docker_client.api.inspect_container(container["Id"])["State"]["Paused"]
    client.call("task.kill", {"id": task_id})  # a paused container is unpaused to get TERM
    [summary] = cluster.wait(task_id)
    assert summary["state"] == "killed"
    assert summary["exit_code"] == 3 and cluster.log(task_id) == b"term\n"
    wait_docker_event(docker_client, "destroy", since, label=label)


def test_bad_input_fails_with_a_reason(dcluster):
    cluster = dcluster()
    with pytest.raises(NotFound, match="unknown env 'nope'"):
        submit_docker(cluster, ["true"], container="nope")
    make_env(cluster, "empty", commit=False)
    with pytest.raises(InvalidArgument, match="no committed version"):
        submit_docker(cluster, ["true"], container="empty")
    version = make_env(cluster)
    with pytest.raises(NotFound, match="no version 0123456789ab"):
        submit_docker(cluster, ["true"], env_version="0123456789ab")
    missing = submit_docker(cluster, ["no-such-command"])
    not_dir = submit_docker(cluster, ["true"], workdir="/etc/passwd")
    bad_mount = submit_docker(cluster, ["true"], mounts=["/no/such/dir:/x"])
    assert cluster.wait(missing)[0] == {"id": missing, "state": "failed", "exit_code": 127}
    assert cluster.task(missing)["detail"] == f"command not found in env bb {version}: " \
                                              f"no-such-command"
    assert cluster.wait(not_dir)[0]["state"] == "failed"
    assert cluster.task(not_dir)["detail"] == ("Docker could not create the container: "
                                               "Cannot mkdir: /etc/passwd is not a directory")
    assert cluster.wait(bad_mount)[0]["state"] == "failed"
    assert "mount source /no/such/dir does not exist on n1" in cluster.task(bad_mount)["detail"]


def test_privileged_is_refused_unless_allowed(dcluster):
    cluster = dcluster({"n1": {"cores": 2}, "n2": {"cores": 2, "allow_privileged": True}})
    make_env(cluster)
    command = ["sh", "-c", "grep CapEff /proc/self/status"]
    refused = submit_docker(cluster, command, privileged=True, target="n1")
    assert cluster.wait(refused)[0]["state"] == "failed"
    assert "privileged containers are not allowed on n1" in cluster.task(refused)["detail"]
    allowed = submit_docker(cluster, command, privileged=True, target="n2")
    [summary] = cluster.wait(allowed)
    detail = cluster.task(allowed)["detail"]
    if summary["state"] == "completed":  # a machine where privileged containers can run
        assert int(cluster.log(allowed).split()[-1], 16) > 0xffffffff  # every capability
    else:  # this development machine: Docker itself refuses, and the task says so
        assert summary["state"] == "failed" and summary["exit_code"] == 126
        assert detail.startswith("Docker refused to start the privileged container:")
        assert "caps" in detail or "permitted" in detail


def test_runner_restart_reattaches_to_running_containers(dcluster, docker_client):
    cluster = dcluster(host={"heartbeat_misses": 100})
    make_env(cluster)
    go = cluster.root / "n1" / "local_temp" / "go"
    task_id = submit_docker(cluster, ["sh", "-c", "echo before; "
                                      "while [ ! -e /local_temp/go ]; do sleep 0.05; done; "
                                      "echo after"])
    cluster.wait_state(task_id, {"running"})
    assert cluster.log(task_id) in (b"", b"before\n")
    cluster.stop_runner("n1", kill_tasks=False)
    [container] = containers_of(docker_client, task_id, cluster)
    assert container["State"] == "running"  # the runner left; its container did not
    runner = cluster.start_runner("n1", **cluster.runner_specs["n1"])
    assert task_id in runner.running()
    go.touch()
    [summary] = cluster.wait(task_id)
    assert summary["state"] == "completed"
    assert cluster.log(task_id) == b"before\nafter\n"
    wait_docker_event(docker_client, "destroy", time.time() - 30,
                      label=[f"zriver.task={task_id}"])


def test_restarted_runner_removes_containers_the_host_forgot(dcluster, docker_client):
    cluster = dcluster(host={"unreachable_grace": 1.5})
    make_env(cluster)
    task_id = submit_docker(cluster, ["sleep", "300"])
    cluster.wait_state(task_id, {"running"})
    cluster.stop_runner("n1", kill_tasks=False)
    cluster.wait_state(task_id, {"lost"})  # the host gave up on it
    since = time.time() - 1
    cluster.start_runner("n1", **cluster.runner_specs["n1"])
    wait_docker_event(docker_client, "destroy", since, label=[f"zriver.task={task_id}"])
    assert cluster.task(task_id)["state"] == "lost"


def test_host_restart_never_stops_a_container(dcluster, docker_client):
    from dataclasses import replace

    from zriver.roles import port_of

    cluster = dcluster(host={"heartbeat_misses": 100})
    make_env(cluster)
    go = cluster.root / "n1" / "local_temp" / "go"
    task_id = submit_docker(cluster, ["sh", "-c", "while [ ! -e /local_temp/go ]; "
                                                  "do sleep 0.05; done; echo done"])
    cluster.wait_state(task_id, {"running"})
    ports = {k: port_of(v) for k, v in cluster.host.endpoints.items()}
    cluster.run(cluster.host.stop)
    [container] = containers_of(docker_client, task_id, cluster)
    assert container["State"] == "running"
    cluster.host_settings = replace(cluster.host_settings, router_port=ports["router"],
                                    xsub_port=ports["xsub"], xpub_port=ports["xpub"])
    cluster.run(cluster._start_host)
    go.touch()
    [summary] = cluster.wait(task_id)
    assert summary["state"] == "completed"
    client = cluster.client()
    sub = client.subscribe(["evt.node.n1"])
    try:
        eventually(lambda: client.call("node.list")["nodes"][0]["state"] == "online", 10,
                   "n1 back online", sub)
    finally:
        sub.close(linger=0)
    assert cluster.log(task_id) == b"done\n"


def test_node_without_docker_says_so_and_still_runs_native(dcluster):
    cluster = dcluster({"n1": {"cores": 1, "docker_host": "unix:///nonexistent/docker.sock"}})
    [node] = cluster.client().call("node.list")["nodes"]
    assert node["backends"] == ["native"]
    assert node["docker"] is False and "nonexistent" in node["docker_error"]
    native = cluster.submit(["true"], backend="native")
    assert cluster.wait(native)[0]["state"] == "completed"
    make_env(cluster)  # the host's own Docker works
    with pytest.raises(Impossible, match="docker"):
        submit_docker(cluster, ["true"])


def test_docker_daemon_going_away(dcluster, tmp_path):
    proxy = SocketProxy(tmp_path / "docker.sock").start()
    try:
        cluster = dcluster({"n1": {"cores": 2, "docker_host": proxy.url,
                                   "docker_probe_interval": 3600}})
        make_env(cluster)
        first = submit_docker(cluster, ["true"])
        assert cluster.wait(first)[0]["state"] == "completed"
        proxy.stop()  # the daemon "dies"; the runner has not noticed yet
        started = time.monotonic()
        task_id = submit_docker(cluster, ["true"])
        [summary] = cluster.wait(task_id)
        assert summary["state"] == "failed" and summary["exit_code"] == 126
        assert cluster.task(task_id)["detail"].startswith("Docker is not available on n1")
        client = cluster.client()
        sub = client.subscribe(["hb.n1"])
        try:
            node = eventually(lambda: next(n for n in client.call("node.list")["nodes"]
                                           if n["docker"] is False), 10, "docker unavailable",
                              sub)
            assert "docker" not in node["backends"] and node["docker_error"]
            assert time.monotonic() - started < 10  # nothing hung
            proxy.start()  # back: the next check finds it again
            runner = cluster.runners["n1"]
            assert cluster.run(runner.backends["docker"].recheck)
            eventually(lambda: "docker" in client.call("node.list")["nodes"][0]["backends"], 10,
                       "docker back in the node's backends", sub)
        finally:
            sub.close(linger=0)
        again = submit_docker(cluster, ["true"])
        assert cluster.wait(again)[0]["state"] == "completed"
    finally:
        proxy.stop()


def test_a_container_numbers_its_gpus_from_zero():
    """Docker passes the allocated GPUs in as devices 0..n-1: CUDA_VISIBLE_DEVICES with the
    node's indices (``node::2,3``) would name none of them inside."""
    from zriver.runner.backends import Job
    from zriver.runner.backends.docker import container_environment
    from zriver.spec import TaskSpec

    spec = TaskSpec(command=["true"])
    given = {"CUDA_VISIBLE_DEVICES": "2,3", "ZRIVER_TASK_ID": "7"}
    job = Job(7, spec, (0,), 0, "out", "err", given, gpus=(2, 3))
    env = container_environment(job)
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1" and env["ZRIVER_GPUS"] == "2,3"
    assert env["ZRIVER_TASK_ID"] == "7" and given["CUDA_VISIBLE_DEVICES"] == "2,3"
    no_gpus = Job(8, spec, (0,), 0, "out", "err", {"CUDA_VISIBLE_DEVICES": ""})
    assert container_environment(no_gpus) == {"CUDA_VISIBLE_DEVICES": ""}  # still hidden
