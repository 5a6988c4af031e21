"""VPS containers on a runner, with the real in-process cluster and a real Docker engine: sshd
up with the host key the runner reported, restarts keeping the disk, a runner restart adopting
the VPS, kill removing it, an image without sshd, self-fencing sparing it, commit to an env."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace

import asyncssh
import pytest

from docker_fixtures import *  # noqa: F401,F403  (fixtures)
from docker_fixtures import eventually, wait_docker_event
from docker_images import ensure_sshd_image

pytestmark = pytest.mark.docker


@pytest.fixture(scope="session")
def sshd_image(docker_client) -> str:
    return ensure_sshd_image()


@pytest.fixture(scope="session")
def user_key():
    """A user's SSH key pair: (asyncssh private key, OpenSSH public key line)."""
    key = asyncssh.generate_private_key("ssh-ed25519")
    return key, key.export_public_key("openssh").decode().strip()


def make_env(cluster, name: str, image: str) -> str:
    reply = cluster.client(timeout=120).call("env.create", {"name": name, "image": image},
                                             timeout=120)
    return reply["version"]["version"]


def submit_vps(cluster, env: str, keys: list[str], **spec) -> int:
    return cluster.submit([], backend="docker", container=env, kind="vps", ssh_keys=keys,
                          **spec)


def labels_of(cluster, task_id: int, node: str = "n1") -> list[str]:
    """Docker label filters that find the container of ``task_id`` on this cluster's ``node``
    (other test sessions may share the daemon, with the same task ids)."""
    runner_id = (cluster.root / node / "runner-id").read_text().strip()
    return [f"zriver.task={task_id}", f"zriver.runner={runner_id}"]


def container_of(cluster, client, task_id: int) -> dict:
    [item] = client.api.containers(all=True, filters={"label": labels_of(cluster, task_id)})
    return client.api.inspect_container(item["Id"])


def reported_key(cluster, task_id: int, other_than: str = "") -> str:
    """The host key the host has for VPS ``task_id`` (waits until it has one)."""
    def check():
        rows = cluster.client().call("vps.list")["vps"]
        key = next((row["host_key"] for row in rows if row["id"] == task_id), "")
        return key if key and key != other_than else None

    return eventually(check, 20, f"the host key of VPS {task_id}")


def ssh_run(address: str, host_key: str, key, command: str, timeout: float = 20) -> str:
    """Run ``command`` as root over SSH at ``address``:22, the host key pinned to
    ``host_key``; retried until sshd answers (it may still be starting)."""
    async def once() -> str:
        known = asyncssh.import_known_hosts(f"{address} {host_key}\n")
        async with asyncssh.connect(address, 22, username="root", client_keys=[key],
                                    known_hosts=known, connect_timeout=5) as conn:
            result = await conn.run(command, check=True)
            return result.stdout

    deadline = time.monotonic() + timeout
    while True:
        try:
            return asyncio.run(once())
        except (OSError, asyncssh.ConnectionLost, asyncssh.DisconnectError) as exc:
            if isinstance(exc, asyncssh.HostKeyNotVerifiable) or time.monotonic() > deadline:
                raise
            threading.Event().wait(0.1)  # sshd is not listening yet: try again


def address_of(cluster, client, task_id: int) -> str:
    return container_of(cluster, client, task_id)["NetworkSettings"]["IPAddress"]


@pytest.fixture
def vps_cluster(dcluster, sshd_image):
    """A cluster with env ``sshd`` made from the sshd test image."""
    cluster = dcluster(host={"heartbeat_misses": 100})
    make_env(cluster, "sshd", sshd_image)
    return cluster


def test_sshd_answers_with_the_host_key_the_runner_reported(vps_cluster, docker_client,
                                                            user_key):
    cluster = vps_cluster
    task_id = submit_vps(cluster, "sshd", [user_key[1]])
    cluster.wait_state(task_id, {"running"}, timeout=30)
    host_key = reported_key(cluster, task_id)
    assert host_key.startswith("ssh-ed25519 ")
    info = container_of(cluster, docker_client, task_id)
    assert info["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert info["Config"]["Labels"]["zriver.kind"] == "vps"
    assert info["HostConfig"]["NetworkMode"] == "bridge"
    assert not info["HostConfig"].get("PortBindings")
    binds = info["HostConfig"]["Binds"]
    assert any(b.endswith(":/local_temp") for b in binds)
    out = ssh_run(address_of(cluster, docker_client, task_id), host_key, user_key[0],
                  "echo ok; stat -c '%a %U' /root/.ssh /root/.ssh/authorized_keys; "
                  "cat /etc/ssh/ssh_host_ed25519_key.pub")
    lines = out.splitlines()
    assert lines[:3] == ["ok", "700 root", "600 root"]
    assert lines[3] == host_key
    kept = cluster.root / "n1" / "vps" / str(task_id) / "ssh_host_ed25519_key.pub"
    assert kept.read_text().strip() == host_key
    assert cluster.task(task_id)["state"] == "running"


def test_restart_keeps_the_disk_and_the_key_and_an_sshd_exit_is_not_the_end(
        vps_cluster, docker_client, user_key):
    cluster = vps_cluster
    task_id = submit_vps(cluster, "sshd", [user_key[1]])
    cluster.wait_state(task_id, {"running"}, timeout=30)
    host_key = reported_key(cluster, task_id)
    before = container_of(cluster, docker_client, task_id)
    address = address_of(cluster, docker_client, task_id)
    ssh_run(address, host_key, user_key[0], "echo kept > /root/mark")
    since = time.time() - 1
    cluster.client().call("vps.restart", {"id": task_id})
    wait_docker_event(docker_client, "restart", since, label=labels_of(cluster, task_id))
    assert ssh_run(address_of(cluster, docker_client, task_id), host_key, user_key[0],
                   "cat /root/mark") == "kept\n"
    after = container_of(cluster, docker_client, task_id)
    assert after["Id"] == before["Id"] and after["State"]["StartedAt"] != \
        before["State"]["StartedAt"]
    eventually(lambda: any("restarted" in (e.get("detail") or "") for e in
                           cluster.client().call("task.get", {"id": task_id})["events"]),
               10, "the restart in the history")
    # the main process (sshd, PID 1) ends: the restart policy brings it back, nothing ends
    since = time.time()
    docker_client.api.kill(before["Id"], "TERM")
    wait_docker_event(docker_client, "start", since, label=labels_of(cluster, task_id))
    assert ssh_run(address_of(cluster, docker_client, task_id), host_key, user_key[0],
                   "cat /root/mark") == "kept\n"
    assert cluster.task(task_id)["state"] == "running"


def test_runner_restart_adopts_the_vps_with_the_same_host_key(vps_cluster, docker_client,
                                                               user_key):
    cluster = vps_cluster
    task_id = submit_vps(cluster, "sshd", [user_key[1]])
    cluster.wait_state(task_id, {"running"}, timeout=30)
    host_key = reported_key(cluster, task_id)
    before = container_of(cluster, docker_client, task_id)
    cluster.stop_runner("n1", kill_tasks=True)  # kills native tasks only
    assert container_of(cluster, docker_client, task_id)["State"]["Running"]
    runner = cluster.start_runner("n1", **cluster.runner_specs["n1"])
    assert task_id in runner.running()
    assert cluster.call_soon(lambda: runner.backends["docker"].vps.host_keys[task_id]) == \
        host_key
    after = container_of(cluster, docker_client, task_id)
    assert after["Id"] == before["Id"]
    assert after["State"]["StartedAt"] == before["State"]["StartedAt"]
    assert ssh_run(address_of(cluster, docker_client, task_id), host_key, user_key[0],
                   "echo ok") == "ok\n"
    assert cluster.task(task_id)["state"] == "running"
    since = time.time() - 1
    cluster.client().call("vps.stop", {"id": task_id})  # the adopted VPS is followed
    [summary] = cluster.wait(task_id)
    assert summary["state"] == "killed"
    wait_docker_event(docker_client, "destroy", since, label=labels_of(cluster, task_id))


def test_kill_stops_and_removes_the_container(vps_cluster, docker_client, user_key):
    cluster = vps_cluster
    task_id = submit_vps(cluster, "sshd", [user_key[1]])
    cluster.wait_state(task_id, {"running"}, timeout=30)
    reported_key(cluster, task_id)
    since = time.time() - 1
    cluster.client().call("task.kill", {"id": task_id})
    [summary] = cluster.wait(task_id)
    assert summary["state"] == "killed"
    wait_docker_event(docker_client, "destroy", since, label=labels_of(cluster, task_id))
    assert docker_client.api.containers(all=True, filters={
        "label": labels_of(cluster, task_id)}) == []
    assert not (cluster.root / "n1" / "vps" / str(task_id)).exists()


def test_an_image_without_sshd_still_runs_as_a_vps(dcluster, docker_client, busybox):
    cluster = dcluster()
    make_env(cluster, "bb", busybox)
    task_id = submit_vps(cluster, "bb", [])
    cluster.wait_state(task_id, {"running"}, timeout=30)
    info = container_of(cluster, docker_client, task_id)
    exec_id = docker_client.api.exec_create(info["Id"], ["sh", "-c", "echo inside"])
    assert docker_client.api.exec_start(exec_id) == b"inside\n"
    eventually(lambda: b"no sshd" in cluster.log(task_id, "stderr"), 10, "the no-sshd note")
    started = time.monotonic()
    cluster.client().call("vps.stop", {"id": task_id})
    [summary] = cluster.wait(task_id)
    assert summary["state"] == "killed"
    assert time.monotonic() - started < 1.9  # TERM ended it; no kill after the grace


def test_self_fencing_never_ends_a_vps(dcluster, docker_client, busybox):
    from zriver.roles import port_of

    cluster = dcluster(host={"unreachable_grace": 1.5})
    make_env(cluster, "bb", busybox)
    vps_id = submit_vps(cluster, "bb", [])
    task_id = cluster.submit(["sleep", "300"], backend="docker", container="bb")
    cluster.wait_state(vps_id, {"running"}, timeout=30)
    cluster.wait_state(task_id, {"running"}, timeout=30)
    vps_container = container_of(cluster, docker_client, vps_id)["Id"]
    since = time.time() - 1
    ports = {k: port_of(v) for k, v in cluster.host.endpoints.items() if k in (
        "router", "xsub", "xpub")}
    cluster.run(cluster.host.stop)  # no host: the runner's lease lapses, it fences
    try:
        wait_docker_event(docker_client, "die", since, label=labels_of(cluster, task_id))
        runner = cluster.runners["n1"]
        assert cluster.call_soon(lambda: task_id in runner._fenced or
                                 task_id not in runner.running())
        assert cluster.call_soon(lambda: vps_id in runner.running())
        assert docker_client.api.inspect_container(vps_container)["State"]["Running"]
    finally:
        cluster.host_settings = replace(cluster.host_settings, router_port=ports["router"],
                                        xsub_port=ports["xsub"], xpub_port=ports["xpub"])
        cluster.run(cluster._start_host)
    cluster.wait_state(vps_id, {"running"}, timeout=20)
    assert docker_client.api.inspect_container(vps_container)["State"]["Running"]
    assert cluster.call_soon(lambda: vps_id in cluster.runners["n1"].running())


def test_commit_makes_the_vps_filesystem_a_new_env_version(vps_cluster, docker_client,
                                                           user_key):
    cluster = vps_cluster
    task_id = submit_vps(cluster, "sshd", [user_key[1]])
    cluster.wait_state(task_id, {"running"}, timeout=30)
    host_key = reported_key(cluster, task_id)
    ssh_run(address_of(cluster, docker_client, task_id), host_key, user_key[0],
            "echo made in the vps > /root/mark")
    client = cluster.client(timeout=120)
    reply = client.call("vps.commit", {"id": task_id, "env": "snap"}, timeout=120)
    assert reply["env"] == "snap" and len(reply["version"]) == 12
    [env] = client.call("env.list", {"name": "snap"})["envs"]
    assert [v["version"] for v in env["versions"]] == [reply["version"]]
    [image] = docker_client.api.images(name=f"{cluster.host_settings.env_image_prefix}/snap")
    config = docker_client.api.inspect_image(image["Id"])["Config"]
    assert not any(value for key, value in (config.get("Labels") or {}).items()
                   if key.startswith("zriver."))  # no VPS labels carried into the env
    assert "/.zriver/vps-entry" not in (config.get("Entrypoint") or [])
    plain = cluster.submit(["sh", "-c", "cat /root/mark; echo \"[$ZRIVER_TASK_ID]\""],
                           backend="docker", container="snap")
    [summary] = cluster.wait(plain)
    assert summary["state"] == "completed", cluster.task(plain)
    assert cluster.log(plain) == f"made in the vps\n[{plain}]\n".encode()
    again = client.call("vps.commit", {"id": task_id, "env": "sshd"}, timeout=120)
    newest = client.call("env.list", {"name": "sshd"})["envs"][0]["versions"][0]
    assert newest["version"] == again["version"]
    assert cluster.task(task_id)["state"] == "running"  # the VPS goes on
    images = docker_client.api.images(name=f"{cluster.runners['n1'].settings.image_prefix}"
                                           f"-vps-commit")
    assert images == []  # the runner's temporary image is gone
