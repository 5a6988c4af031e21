"""Identities on real processes: a ``zriver host`` and ``zriver runner`` on loopback with CURVE
on (the default), people and nodes with their own keys, and everything a stranger, a user or
a runner key might try that its role does not allow.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import zmq

from procs import Cluster, role_environment, wait_until

from zriver import keys as keyfiles
from zriver.client.api import Client
from zriver.errors import Forbidden, Unavailable
from zriver.keys import ClientKeys
from zriver.protocol import decode, encode
from zriver.wire import Wire


@pytest.fixture
def lab(tmp_path):
    with Cluster(tmp_path) as cluster:
        cluster.start_host(heartbeat_interval=0.3)
        cluster.start_runner("n1", cores=2)
        yield cluster


def client_with(lab: Cluster, secret: Path, timeout: float = 3.0) -> Client:
    return lab.client(timeout, key=secret)


def keys_of(lab: Cluster, secret: Path) -> ClientKeys:
    public, private = keyfiles.load_pair(secret)
    return ClientKeys(public, private, lab.host.host_key)


def sleeper(client: Client) -> int:
    return client.call("task.submit", {"tasks": [{"command": ["sleep", "30"],
                                                  "workdir": "/"}]})["ids"][0]


def test_strangers_get_nothing_and_the_host_serves_everyone_else(lab, tmp_path):
    plain = zmq.Context.instance().socket(zmq.DEALER)
    plain.linger = 0
    plain.connect(lab.endpoint)
    try:
        plain.send(encode("cluster.hello", 1))
        assert not plain.poll(1000), "a peer without keys got an answer"
    finally:
        plain.close()
    unknown = tmp_path / "stranger.key_secret"
    keyfiles.create_pair(unknown)
    with client_with(lab, unknown) as stranger:
        with pytest.raises(Unavailable, match="not authorised"):
            stranger.call("cluster.hello")
    hello = lab.call("cluster.hello")
    assert hello["principal"] == {"name": "test", "role": "admin"}
    assert hello["security"] == "curve"
    assert lab.nodes()["n1"]["state"] == "online"


def test_a_user_acts_on_their_own_tasks_only(lab):
    alice = client_with(lab, lab.user_key("alice"))
    bob = client_with(lab, lab.user_key("bob"))
    mine = sleeper(alice)
    lab.wait_task_state(mine, "running", 20)
    assert lab.task(mine)["owner"] == "alice"
    for op in ("task.kill", "task.pause", "task.logs", "task.follow"):
        with pytest.raises(Forbidden, match="belongs to 'alice'"):
            bob.call(op, {"id": mine})
    with pytest.raises(Forbidden):
        bob.call("task.wait", {"ids": [mine], "timeout": 0.1})
    assert lab.task(mine)["state"] == "running"
    assert alice.call("task.pause", {"id": mine})["id"] == mine
    lab.wait_task_state(mine, "paused", 20)
    alice.call("task.resume", {"id": mine})
    lab.wait_task_state(mine, "running", 20)
    assert alice.call("task.logs", {"id": mine})["data"] == b""
    alice.call("task.kill", {"id": mine})
    assert alice.wait([mine])[0]["state"] == "killed"
    # usage and listings carry the authenticated owner, not what a client claims
    faked = alice.call("task.submit", {"tasks": [{"command": ["true"], "owner": "bob",
                                                  "workdir": "/"}]})["ids"][0]
    assert lab.task(faked)["owner"] == "alice"
    assert {t["id"] for t in bob.call("task.list", {"owner": "alice"})["tasks"]} >= {mine, faked}


def test_what_only_admins_may_do(lab):
    alice = client_with(lab, lab.user_key("alice"))
    for op, body, needs in (
        ("node.drain", {"name": "n1"}, "needs the role admin"),
        ("key.list", {}, "needs the role admin"),
        ("key.add", {"name": "x", "role": "admin", "public_key": "A" * 40}, "needs the role"),
        ("task.submit", {"tasks": [{"command": ["id"], "user": "root"}]}, "--user root needs"),
        ("task.submit", {"tasks": [{"command": ["id"], "backend": "docker", "container": "bb",
                                    "mounts": ["/etc:/x"]}]}, "host path /etc needs"),
        ("task.submit", {"tasks": [{"command": ["id"], "backend": "docker", "container": "bb",
                                    "privileged": True}]}, "--privileged needs the admin role"),
    ):
        with pytest.raises(Forbidden, match=needs):
            alice.call(op, body)
    # the admin passes the same checks (this cluster has no env "bb": the next check fails)
    from zriver.errors import NotFound

    with pytest.raises(NotFound, match="unknown env 'bb'"):
        lab.call("task.submit", {"tasks": [{"command": ["id"], "backend": "docker",
                                            "container": "bb", "mounts": ["/etc:/x"]}]})


def test_a_users_native_task_does_not_run_as_root(lab):
    alice = client_with(lab, lab.user_key("alice"))  # no account "alice" on this machine
    task = alice.call("task.submit", {"tasks": [{"command": ["sh", "-c", "id -u; id -un"],
                                                 "workdir": "/"}]})["ids"][0]
    assert alice.wait([task])[0]["state"] == "completed"
    assert alice.call("task.logs", {"id": task})["data"] == b"65534\nnobody\n"


def test_a_runner_key_cannot_submit_nor_speak_for_another_node(lab):
    running = sleeper(lab.client())
    lab.wait_task_state(running, "running", 20)
    n1 = keys_of(lab, Path(lab.runners["n1"].settings["key"]))
    wire = Wire(1 << 20, client_keys=n1)
    try:
        for identity, op, body, refused in (
            (b"r:n1:probe", "task.submit", {"tasks": [{"command": ["true"]}]}, "needs the role"),
            (b"r:n1:probe", "runner.register", {"name": "n2", "info": {"cores": [0],
                                                                      "memory": 1}},
             "for node 'n1'"),
            (b"r:n2:probe", "runner.register", {"name": "n2", "info": {"cores": [0],
                                                                      "memory": 1}},
             "only the runner key of node 'n2'"),
            (b"someone", "task.list", {}, "runner key must connect with its runner identity"),
        ):
            sock = wire.dealer(lab.endpoint, identity=identity)
            sock.send(encode(op, 5, body))
            assert sock.poll(5000), f"{op} as {identity!r}: no answer"
            reply = decode(sock.recv())
            assert reply.op == "error" and reply.code == "forbidden", reply
            assert refused in reply.msg, reply.msg
            sock.close()
    finally:
        wire.close()
    assert "n2" not in lab.nodes() and lab.nodes()["n1"]["state"] == "online"
    assert lab.task(running)["state"] == "running"


def test_another_key_cannot_take_over_a_live_runners_identity(lab):
    """A runner's identity ``r:<node>:<instance>`` carries a 64-bit secret that no other peer
    sees (not in heartbeats, not in health), and a message under a runner identity must carry
    that node's key: a user key claiming the node gets ``forbidden`` and changes nothing."""
    running = sleeper(lab.client())
    lab.wait_task_state(running, "running", 20)
    mallory_key = lab.user_key("mallory")
    with client_with(lab, mallory_key) as mallory:
        assert "instance" not in mallory.call("node.health", {"name": "n1"})["nodes"][0]
        sub = mallory.subscribe(["hb.n1"])
        assert sub.poll(5000), "no heartbeat from n1"
        assert "instance" not in decode(sub.recv_multipart()[1]).body
        sub.close()
    wire = Wire(1 << 20, client_keys=keys_of(lab, mallory_key))
    try:
        sock = wire.dealer(lab.endpoint, identity=b"r:n1:0123456789abcdef")
        sock.send(encode("task.update", 5, {"name": "n1", "updates": [
            {"id": running, "attempt": 1, "state": "completed", "exit_code": 0, "at": 1.0}]}))
        assert sock.poll(5000)
        reply = decode(sock.recv())
        assert reply.op == "error" and reply.code == "forbidden", reply
        assert "only the runner key of node 'n1'" in reply.msg
    finally:
        wire.close()
    assert lab.task(running)["state"] == "running"
    lab.call("task.kill", {"id": running})  # the real runner still gets its commands
    assert lab.wait_task_state(running, "killed", 20)["exit_code"] is not None


def test_a_revoked_key_is_refused_on_its_open_connection(lab):
    carol = client_with(lab, lab.user_key("carol"))
    assert carol.call("task.list")["tasks"] is not None
    lab.call("key.revoke", {"name": "carol"})
    with pytest.raises(Forbidden, match="not .*authorised"):
        carol.call("task.list")
    listed = {k["name"]: k for k in lab.call("key.list")["keys"]}
    assert listed["carol"]["revoked_at"] is not None


def test_forged_publications_never_reach_subscribers(lab):
    task = lab.call("task.submit", {"tasks": [{"command": ["true"], "workdir": "/"}]})["ids"][0]
    with lab.client() as watcher:
        sub = watcher.subscribe(["hb.n1", f"log.{task}"])
        watcher.call("task.follow", {"id": task})  # the host subscribes to its log: forgeable
        mallory = keys_of(lab, lab.user_key("mallory"))
        wire = Wire(1 << 20, client_keys=mallory)
        try:
            pub = wire.pub(lab.endpoint.rsplit(":", 1)[0] + f":{lab.host.ports()['xsub_port']}")
            before = lab.call("node.health")["dropped_publications"]

            def dropped() -> bool:  # publish until the host has read (and dropped) both
                pub.send_multipart([b"hb.n1", encode("hb", 0, {"forged": True})])
                pub.send_multipart([f"log.{task}".encode(),
                                    encode("log", 0, {"id": task, "forged": True})])
                return lab.call("node.health")["dropped_publications"] >= before + 2

            wait_until(dropped, 20, "the host to drop the forged publications")
            # a real heartbeat after that: anything forwarded before it would be seen first
            seen = []
            while True:
                assert sub.poll(5000), "no heartbeat from n1"
                topic, frame = sub.recv_multipart()
                body = decode(frame).body
                seen.append(body)
                if topic == b"hb.n1" and not body.get("forged") and len(seen) > 1:
                    break
            assert not any(b.get("forged") for b in seen), seen
        finally:
            wire.close()


def test_zriver_up_needs_no_set_up_and_keeps_its_secrets_private(tmp_path):
    home = tmp_path / "home"
    env = role_environment(home)
    up = subprocess.Popen([sys.executable, "-m", "zriver", "up", "--port", "0", "--cores", "2"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                          cwd=tmp_path)
    try:
        wait_until(lambda: (home / "endpoints.json").exists(), 30, "zriver up to start")
        run = subprocess.run([sys.executable, "-m", "zriver", "submit", "--wait", "--workdir",
                              "/", "--", "sh", "-c", "echo hi"], capture_output=True, text=True,
                             env=env, timeout=60)
        assert run.returncode == 0, run.stderr
        task = run.stdout.split()[0]
        logs = subprocess.run([sys.executable, "-m", "zriver", "logs", task],
                              capture_output=True, text=True, env=env, timeout=60)
        assert logs.stdout == "hi\n", logs.stderr
        secrets = sorted((home / "keys").glob("*.key_secret"))
        assert {p.name for p in secrets} >= {"host.key_secret", "client.key_secret",
                                             "runner.key_secret"}
        for path in secrets:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert stat.S_IMODE((home / "keys").stat().st_mode) == 0o700
        nodes = subprocess.run([sys.executable, "-m", "zriver", "nodes"], capture_output=True,
                               text=True, env=env, timeout=60)
        assert "authentication is off" not in nodes.stdout + nodes.stderr
    finally:
        up.terminate()
        up.wait(30)
    assert "secret" not in (up.stdout.read() if up.stdout else "").lower()


def test_a_world_readable_secret_key_is_refused(lab, tmp_path):
    secret = lab.user_key("dave")
    os.chmod(secret, 0o644)
    from zriver.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="chmod 600"):
        Client(lab.endpoint, key=str(secret), host_key=lab.host.host_key)


def test_security_none_is_said_loudly(tmp_path):
    with Cluster(tmp_path) as lab:
        host = lab.start_host(security="none")
        lab.start_runner("n1", cores=2)
        assert "authentication is OFF" in host.log.read_text()
        out = subprocess.run([sys.executable, "-m", "zriver", "nodes"], capture_output=True,
                             text=True, env=lab.env, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "authentication is OFF" in out.stderr and "n1" in out.stdout
        health = subprocess.run([sys.executable, "-m", "zriver", "health"], capture_output=True,
                                text=True, env=lab.env, timeout=60)
        assert "authentication is OFF" in health.stderr
