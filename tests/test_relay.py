"""The SSH relay on the host: logins by registered SSH keys, task references, refusals with
their reason, commands and shells in container tasks, forwards into containers, with the real
OpenSSH client and with asyncssh, on the in-process cluster (CURVE on) and real Docker."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
from pathlib import Path

import asyncssh
import pytest

from cluster import Cluster
from docker_fixtures import *  # noqa: F401,F403  (fixtures)
from docker_fixtures import DockerCluster

from zriver.config import HostSettings
from zriver.host.service import Host


class Person:
    """A principal with a CURVE key and one registered SSH key (files for OpenSSH)."""

    def __init__(self, cluster: Cluster, root: Path, name: str, role: str) -> None:
        self.name = name
        self.curve = cluster.key_for(name, role) if name != "test" else cluster.admin_key
        self.client = cluster.client(key=self.curve)
        self.ssh_key = asyncssh.generate_private_key("ssh-ed25519", comment=f"{name}@test")
        self.key_file = root / f"{name}-id_ed25519"
        self.key_file.write_bytes(self.ssh_key.export_private_key())
        self.key_file.chmod(0o600)
        self.fingerprint = self.client.call("ssh_key.add", {
            "public_key": self.ssh_key.export_public_key().decode()})["fingerprint"]


class Lab:
    """A cluster with the relay, and its people: ``admin`` ("test"), ``alice``, ``bob``."""

    def __init__(self, cluster: Cluster, root: Path) -> None:
        self.cluster = cluster
        self.root = root
        relay = cluster.host.relay
        self.port, self.host_key = relay.port, relay.host_key
        self.admin = Person(cluster, root, "test", "admin")
        self.alice = Person(cluster, root, "alice", "user")
        self.bob = Person(cluster, root, "bob", "user")

    # ---- asyncssh ----------------------------------------------------------------------
    def connect(self, person: Person, user: str, **options) -> "asyncssh.SSHClientConnection":
        """(a coroutine) An asyncssh connection to the relay as ``user`` with ``person``'s
        key, the relay's host key pinned."""
        return asyncssh.connect("127.0.0.1", self.port, username=user,
                                client_keys=[person.ssh_key], agent_path=None,
                                known_hosts=([asyncssh.import_public_key(self.host_key)], [], []),
                                **options)

    # ---- OpenSSH -----------------------------------------------------------------------
    def ssh_config(self, person: Person) -> Path:
        """An OpenSSH config: ``Host relay`` is this relay, with ``person``'s key and the
        relay's pinned host key (no prompt, no agent, no ~/.ssh)."""
        known = self.root / "known_hosts"
        known.write_text(f"zriver-relay {self.host_key}\n")
        config = self.root / f"ssh_config-{person.name}"
        config.write_text(
            f"Host relay\n  HostName 127.0.0.1\n  Port {self.port}\n"
            f"  IdentityFile {person.key_file}\n  IdentitiesOnly yes\n  IdentityAgent none\n"
            f"  HostKeyAlias zriver-relay\n  UserKnownHostsFile {known}\n"
            f"  GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking yes\n"
            f"  BatchMode yes\n  LogLevel ERROR\n  ConnectTimeout 20\n")
        return config


def ssh_run(lab: Lab, person: Person, user: str, command: str, **kw):
    """``ssh -F CONFIG USER@relay COMMAND`` (a command string, as a person types it)."""
    return subprocess.run(["ssh", "-F", str(lab.ssh_config(person)), f"{user}@relay", command],
                          capture_output=True, timeout=kw.get("timeout", 60),
                          input=kw.get("input"))


# ---- the host key and start/stop (no cluster) ------------------------------------------------
def host_settings(tmp_path: Path, **overrides) -> HostSettings:
    return HostSettings(**{"data_dir": str(tmp_path), "router_port": 0, "xsub_port": 0,
                           "xpub_port": 0, "stream_port": 0, "relay_port": 0,
                           "security": "none", **overrides})


def one_life(settings: HostSettings) -> dict:
    """Start a host, note what it says about its relay, stop it."""

    async def life() -> dict:
        host = Host(settings)
        await host.start()
        try:
            endpoints = json.loads((host.data_dir / "endpoints.json").read_text())
            return {"endpoint": host.endpoints.get("relay"),
                    "hello": host.core.hello_info.get("relay"),
                    "file": endpoints.get("relay")}
        finally:
            await host.stop()

    return asyncio.run(life())


def test_the_host_key_is_made_once_and_kept(tmp_path):
    first, second = one_life(host_settings(tmp_path)), one_life(host_settings(tmp_path))
    key_file = tmp_path / "relay" / "ssh_host_ed25519_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    public = asyncssh.read_private_key(str(key_file)).export_public_key().decode().split()[:2]
    for life in (first, second):
        assert life["hello"]["host_key"] == " ".join(public) and life["file"] == life["hello"]
        assert life["endpoint"] == f"127.0.0.1:{life['hello']['port']}"
        assert life["hello"]["host_key"].startswith("ssh-ed25519 AAAA")


def test_relay_port_minus_one_is_off(tmp_path):
    life = one_life(host_settings(tmp_path, relay_port=-1))
    assert life == {"endpoint": None, "hello": None, "file": None}
    assert not (tmp_path / "relay").exists()


# ---- logins and refusals (no Docker needed) --------------------------------------------------
@pytest.fixture
def lab(make_cluster, tmp_path) -> Lab:
    return Lab(make_cluster({"n1": {"cores": 2, "memory": "4G"}}), tmp_path)


async def refusal_of_forward(lab: Lab, person: Person, user: str, host: str,
                             port: int = 80) -> asyncssh.ChannelOpenError:
    async with lab.connect(person, user) as conn:
        with pytest.raises(asyncssh.ChannelOpenError) as refused:
            await conn.open_connection(host, port)
        return refused.value


async def session_of(lab: Lab, person: Person, user: str, command: str | None = None):
    async with lab.connect(person, user) as conn:
        return await conn.run(command, encoding=None)


def test_an_unregistered_key_cannot_log_in(lab, tmp_path):
    stranger = asyncssh.generate_private_key("ssh-ed25519")

    async def attempt() -> None:
        await asyncssh.connect("127.0.0.1", lab.port, username="zriver",
                               client_keys=[stranger], agent_path=None,
                               known_hosts=([asyncssh.import_public_key(lab.host_key)], [], []))

    with pytest.raises(asyncssh.PermissionDenied):
        asyncio.run(attempt())
    key_file = tmp_path / "stranger"
    key_file.write_bytes(stranger.export_private_key())
    key_file.chmod(0o600)
    config = lab.ssh_config(lab.alice).read_text().replace(str(lab.alice.key_file), str(key_file))
    (tmp_path / "stranger_config").write_text(config)
    result = subprocess.run(["ssh", "-F", str(tmp_path / "stranger_config"), "zriver@relay",
                             "true"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 255 and "Permission denied (publickey)" in result.stderr


def test_unknown_ended_and_native_tasks_are_refused_with_the_reason(lab):
    cluster = lab.cluster
    ended = cluster.submit(["true"])
    assert cluster.wait(ended)[0]["state"] == "completed"
    native = cluster.submit(["sleep", "60"])
    cluster.wait_state(native, {"running"})

    async def check() -> None:
        for host, reason in (("vps-999", "no task 999"),
                             (f"task-{ended}", f"task {ended} has ended (completed)"),
                             (str(native), f"task {native} is not a container task"),
                             ("nameless", "no live task of yours is named 'nameless'")):
            refused = await refusal_of_forward(lab, lab.admin, "zriver", host)
            assert refused.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED
            assert reason in refused.reason, (host, refused.reason)
        result = await session_of(lab, lab.admin, "999", "echo hi")
        assert result.exit_status == 1 and b"no task 999" in result.stderr
        assert result.stdout == b""

    asyncio.run(check())
    result = ssh_run(lab, lab.admin, str(ended), "echo hi")
    assert result.returncode == 1, result
    assert f"task {ended} has ended (completed)".encode() in result.stderr


def test_a_key_of_another_user_is_refused_with_the_reason(lab):
    cluster = lab.cluster
    task_id = cluster.submit(["sleep", "60"])  # the admin's
    cluster.wait_state(task_id, {"running"})

    async def check() -> None:
        refused = await refusal_of_forward(lab, lab.bob, "zriver", f"vps-{task_id}")
        assert refused.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED
        assert refused.reason == (f"task {task_id} belongs to 'test': only its owner or an "
                                  f"admin may reach it")
        refused = await refusal_of_forward(lab, lab.bob, str(task_id), "localhost")
        assert "belongs to 'test'" in refused.reason
        result = await session_of(lab, lab.bob, f"task-{task_id}", "echo hi")
        assert result.exit_status == 1 and b"belongs to 'test'" in result.stderr

    asyncio.run(check())
    result = ssh_run(lab, lab.bob, str(task_id), "echo hi")
    assert result.returncode == 1 and b"belongs to 'test'" in result.stderr, result


def test_the_jump_user_opens_no_session(lab):
    async def check() -> None:
        async with lab.connect(lab.alice, "zriver") as conn:
            with pytest.raises(asyncssh.ChannelOpenError) as refused:
                await conn.run("echo hi")
            assert "is the jump host" in refused.value.reason

    asyncio.run(check())


def test_a_revoked_principal_is_refused_also_on_an_open_connection(lab):
    async def revoked_mid_connection() -> None:
        async with lab.connect(lab.alice, "zriver") as conn:
            with pytest.raises(asyncssh.ChannelOpenError) as before:
                await conn.open_connection("vps-999", 80)
            assert "no task 999" in before.value.reason
            await asyncio.to_thread(lab.admin.client.call, "key.revoke", {"name": "alice"})
            with pytest.raises(asyncssh.ChannelOpenError) as after:
                await conn.open_connection("vps-999", 80)
            assert "no longer authorised" in after.value.reason

    asyncio.run(revoked_mid_connection())

    async def login() -> None:
        await lab.connect(lab.alice, "zriver")

    with pytest.raises(asyncssh.PermissionDenied):
        asyncio.run(login())
    result = ssh_run(lab, lab.alice, "zriver", "true")
    assert result.returncode == 255 and b"Permission denied (publickey)" in result.stderr
