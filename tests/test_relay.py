"""The SSH relay on the host: logins by registered SSH keys, task references, refusals with
their reason, commands and shells in container tasks, forwards into containers, with the real
OpenSSH client and with asyncssh, on the in-process cluster (CURVE on) and real Docker."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import struct
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
                           "xpub_port": 0, "stream_port": 0, "relay_port": 0, "web_port": 0,
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
                    "file": (endpoints.get("relay"), endpoints.get("relay_host_key"))}
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
        assert life["hello"]["host_key"] == " ".join(public) and life["file"] == (
            life["endpoint"], life["hello"]["host_key"])
        assert life["endpoint"] == f"127.0.0.1:{life['hello']['port']}"
        assert life["hello"]["host_key"].startswith("ssh-ed25519 AAAA")


def test_relay_port_minus_one_is_off(tmp_path):
    life = one_life(host_settings(tmp_path, relay_port=-1))
    assert life == {"endpoint": None, "hello": None, "file": (None, None)}
    assert not (tmp_path / "relay").exists()


def test_stopping_the_host_closes_open_ssh_connections(tmp_path):
    """With ``security = "none"`` a registered key logs in (as an admin, as every client
    then is); the host's stop closes the connections its relay holds."""
    from zriver.host.service import TRUSTED

    key = asyncssh.generate_private_key("ssh-ed25519")

    async def life() -> None:
        host = Host(host_settings(tmp_path))
        await host.start()
        try:
            await host.call(TRUSTED, "ssh_key.add",
                            {"public_key": key.export_public_key().decode()})
            conn = await asyncssh.connect(
                "127.0.0.1", host.relay.port, username="zriver", client_keys=[key],
                agent_path=None,
                known_hosts=([asyncssh.import_public_key(host.relay.host_key)], [], []))
            with pytest.raises(asyncssh.ChannelOpenError, match="no task 7"):
                await conn.open_connection("vps-7", 22)
        finally:
            await host.stop()
        await asyncio.wait_for(conn.wait_closed(), 10)
        assert host.relay.connections == set()

    asyncio.run(life())


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


# ---- through to containers (Docker) ---------------------------------------------------------
def make_env(cluster: Cluster, name: str = "bb") -> None:
    cluster.client(timeout=120).call("env.create", {"name": name, "image": "zriver-test-busybox",
                                                    "commit": True}, timeout=120)


WEB_SCRIPT = ("mkdir -p /www && echo hello from the container > /www/index.html && "
              "dd if=/dev/urandom of=/www/big bs=64k count=16 2>/dev/null && "
              "exec httpd -f -p 8080 -h /www")


class DockerLab(Lab):
    """``Lab`` on Docker with running busybox tasks: ``shell_task`` (alice's, named
    "box") and ``web`` (alice's, busybox httpd on port 8080 serving ``index.html`` and a
    1 MiB ``big``)."""

    def __init__(self, cluster: Cluster, root: Path) -> None:
        super().__init__(cluster, root)
        make_env(cluster)
        self.shell_task = self.submit(["sleep", "3600"], name="box")
        self.web = self.submit(["sh", "-c", WEB_SCRIPT], name="web")
        for task_id in (self.shell_task, self.web):
            cluster.wait_state(task_id, {"running"}, timeout=60)

    def submit(self, command: list[str], **spec) -> int:
        return self.alice.client.call("task.submit", {"tasks": [{
            "command": command, "backend": "docker", "container": "bb", "workdir": "/",
            **spec}]})["ids"][0]

    def streams_open(self) -> tuple[int, dict]:
        """(streams the hub holds to n1, the relay's touch counts): both 0 when idle."""
        host = self.cluster.host
        return self.cluster.call_soon(lambda: (len(host.streams.streams_of("n1")),
                                               dict(host.vps.streams)))


@pytest.fixture(scope="module")
def dlab(docker_client, busybox, tmp_path_factory):
    """One Docker cluster for this module's container tests (its containers, images and
    runners are removed afterwards)."""
    root = tmp_path_factory.mktemp("relay")
    clusters: list[Cluster] = []

    def make(runners, host) -> Cluster:
        clusters.append(Cluster(root / f"c{len(clusters)}", runners, host))
        return clusters[-1].start()

    factory = DockerCluster(make, docker_client, root)
    try:
        yield DockerLab(factory(), root)
    finally:
        for cluster in clusters:
            for name in list(cluster.runners):
                cluster.stop_runner(name)
        factory.cleanup()
        for cluster in clusters:
            cluster.stop()


def wait_idle(lab: DockerLab) -> None:
    """Every stream of the relay is closed on the host (and so told to the runner)."""
    from docker_fixtures import eventually

    eventually(lambda: lab.streams_open() == (0, {}), 20, "the relay's streams to close")


def test_a_command_its_output_and_exit_code_with_openssh(dlab):
    task = dlab.shell_task
    for user in (str(task), f"task-{task}", f"vps-{task}", "box"):
        result = ssh_run(dlab, dlab.alice, user, "echo hi; echo oops >&2; exit 3")
        assert (result.returncode, result.stdout, result.stderr) == (3, b"hi\n", b"oops\n"), user
    traffic = dlab.cluster.host.relay.traffic  # what /metrics shows of the relay
    counts = lambda: dlab.cluster.call_soon(  # noqa: E731
        lambda: (traffic.bytes_in, traffic.bytes_out, traffic.opened, traffic.open))
    before = counts()
    data = os.urandom(3 << 20)  # binary both ways, more than the windows: back-pressure
    result = ssh_run(dlab, dlab.alice, str(task), "cat", input=data)
    assert result.returncode == 0 and result.stdout == data
    admin = ssh_run(dlab, dlab.admin, str(task), "id -u")  # an admin reaches anyone's
    assert (admin.returncode, admin.stdout) == (0, b"0\n")
    wait_idle(dlab)
    after = counts()
    assert after[0] - before[0] >= len(data) and after[1] - before[1] >= len(data)
    assert after[2] - before[2] == 2 and after[3] == 0


def test_a_command_with_asyncssh_and_stdin_eof(dlab):
    async def check() -> None:
        async with dlab.connect(dlab.alice, str(dlab.shell_task)) as conn:
            result = await conn.run("wc -c; exit 4", input=b"x" * 100_000, encoding=None)
            assert (result.exit_status, result.stdout.strip()) == (4, b"100000")
            results = await asyncio.gather(*(conn.run(f"echo {i}", encoding=None)
                                             for i in range(8)))
            assert [r.stdout for r in results] == [f"{i}\n".encode() for i in range(8)]

    asyncio.run(check())
    wait_idle(dlab)


async def read_until(stdout, marker: bytes, seen: bytearray, start: int = 0) -> bytes:
    """Read ``stdout`` into ``seen`` until ``marker`` is in ``seen[start:]``; returns all."""
    while marker not in seen[start:]:
        chunk = await asyncio.wait_for(stdout.read(4096), 20)
        assert chunk, f"EOF before {marker!r}; got {bytes(seen)!r}"
        seen += chunk
    return bytes(seen)


async def size_seen(process, seen: bytearray, size: bytes, tries: int = 50) -> bool:
    """Whether ``stty size`` in the shell says ``size`` within ``tries`` runs (a window
    change travels apart from the bytes typed after it: a first run may still be ahead)."""
    for attempt in range(tries):
        mark = len(seen)
        process.stdin.write(b"stty size; echo TRY$((%d))\n" % (100 + attempt))
        out = await read_until(process.stdout, b"TRY%d\r\n" % (100 + attempt), seen, mark)
        if size in out[mark:]:
            return True
    return False


def test_a_shell_with_a_pty_resize_interrupt_and_exit_code(dlab):
    async def check() -> None:
        async with dlab.connect(dlab.alice, f"vps-{dlab.shell_task}") as conn:
            process = await conn.create_process(term_type="xterm", term_size=(100, 30),
                                                encoding=None)
            seen = bytearray()
            await read_until(process.stdout, b"# ", seen)  # the prompt: the shell is up
            process.stdin.write(b"tty; stty size; echo DONE$((1))\n")
            out = await read_until(process.stdout, b"DONE1\r\n", seen)
            assert b"/dev/pts/" in out and b"30 100" in out
            process.change_terminal_size(120, 40)
            assert await size_seen(process, seen, b"40 120")
            process.stdin.write(b"echo SLEEPING$((3)); sleep 300\n")
            await read_until(process.stdout, b"SLEEPING3", seen)
            mark = len(seen)
            process.stdin.write(b"\x03")  # Ctrl-C, through the PTY: the sleep ends
            await read_until(process.stdout, b"# ", seen, mark)  # the next prompt
            process.stdin.write(b"echo STATUS$((4)) $?\n")
            await read_until(process.stdout, b"STATUS4 130", seen)
            process.stdin.write(b"exit 7\n")
            await asyncio.wait_for(process.wait_closed(), 20)
            assert process.exit_status == 7

    asyncio.run(check())
    result = subprocess.run(["ssh", "-F", str(dlab.ssh_config(dlab.alice)), "-tt",
                             f"{dlab.shell_task}@relay", "tty; exit 5"],
                            capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 5 and b"/dev/pts/" in result.stdout, result
    wait_idle(dlab)


def test_a_signal_reaches_a_command_without_a_pty(dlab):
    async def check() -> None:
        async with dlab.connect(dlab.alice, str(dlab.shell_task)) as conn:
            process = await conn.create_process("echo up; exec sleep 300", encoding=None)
            assert await asyncio.wait_for(process.stdout.readline(), 20) == b"up\n"
            process.send_signal("TERM")
            await asyncio.wait_for(process.wait_closed(), 20)
            assert process.exit_status == 143 or process.exit_signal is not None

    asyncio.run(check())
    wait_idle(dlab)


def jump_command(lab: Lab, person: Person, destination: str) -> list[str]:
    """What ``ssh -J zriver@relay`` runs for its jump: ``ssh -W DEST zriver@relay``."""
    return ["ssh", "-F", str(lab.ssh_config(person)), "-o", "LogLevel=INFO", "-W", destination,
            "zriver@relay"]


def test_a_jump_to_a_port_in_a_container_with_openssh(dlab):
    request = b"GET /index.html HTTP/1.0\r\n\r\n"
    for destination in (f"vps-{dlab.web}:8080", f"{dlab.web}:8080", "web:8080"):
        result = subprocess.run(jump_command(dlab, dlab.alice, destination), input=request,
                                capture_output=True, timeout=60)
        assert result.returncode == 0, result
        assert result.stdout.startswith(b"HTTP/1.") and result.stdout.endswith(
            b"\r\n\r\nhello from the container\n")
    refused = subprocess.run(jump_command(dlab, dlab.bob, f"vps-{dlab.web}:8080"),
                             input=request, capture_output=True, timeout=60)
    assert refused.returncode != 0 and b"belongs to 'alice'" in refused.stderr, refused
    wait_idle(dlab)


def test_a_forward_to_a_port_where_nothing_listens_is_refused(dlab):
    async def check() -> None:
        async with dlab.connect(dlab.alice, "zriver") as conn:
            with pytest.raises(asyncssh.ChannelOpenError) as refused:
                await conn.open_connection(f"vps-{dlab.web}", 9)
            assert refused.value.code == asyncssh.OPEN_CONNECT_FAILED
            assert refused.value.reason
            reader, writer = await conn.open_connection(f"vps-{dlab.web}", 8080)  # still serves
            writer.write(b"GET /index.html HTTP/1.0\r\n\r\n")
            assert (await reader.read()).endswith(b"hello from the container\n")

    asyncio.run(check())
    wait_idle(dlab)


async def http_get(conn, host: str, path: str) -> bytes:
    reader, writer = await conn.open_connection(host, 8080)
    writer.write(f"GET {path} HTTP/1.0\r\n\r\n".encode())
    response = await reader.read()
    writer.close()
    return response.split(b"\r\n\r\n", 1)[1]


def test_fifty_concurrent_forwarded_connections(dlab):
    expected = subprocess.run(jump_command(dlab, dlab.alice, f"vps-{dlab.web}:8080"),
                              input=b"GET /big HTTP/1.0\r\n\r\n", capture_output=True,
                              timeout=60).stdout.split(b"\r\n\r\n", 1)[1]
    assert len(expected) == 1 << 20

    async def check() -> None:
        async with dlab.connect(dlab.alice, "zriver") as jump, \
                dlab.connect(dlab.alice, str(dlab.web)) as direct:
            bodies = await asyncio.wait_for(asyncio.gather(
                *(http_get(jump, f"vps-{dlab.web}", "/big") for _ in range(25)),
                *(http_get(direct, "localhost", "/big") for _ in range(25))), 120)
            assert len(bodies) == 50 and all(body == expected for body in bodies)

    asyncio.run(check())
    wait_idle(dlab)


def test_closing_either_side_leaves_nothing_open(dlab):
    async def check() -> None:
        async with dlab.connect(dlab.alice, "zriver") as conn:
            reader, writer = await conn.open_connection(f"vps-{dlab.web}", 8080)
            host = dlab.cluster.host
            assert dlab.streams_open() == (1, {dlab.web: 1})
            writer.close()  # the client closes: the stream is closed on the host
        process_conn = await dlab.connect(dlab.alice, str(dlab.shell_task))
        process = await process_conn.create_process("echo up; exec sleep 300", encoding=None)
        assert await asyncio.wait_for(process.stdout.readline(), 20) == b"up\n"
        assert dlab.streams_open() == (1, {dlab.shell_task: 1})
        process_conn.abort()  # the connection drops: its session's stream goes too
        del host

    asyncio.run(check())
    wait_idle(dlab)


@pytest.fixture
def udp_echo(dlab, docker_client):
    """A UDP echo server on port 5353 inside the web task's container's network namespace
    (this machine's python, entered with nsenter: busybox has no UDP server)."""
    runner = dlab.cluster.runners["n1"]
    container = dlab.cluster.call_soon(lambda: runner.backends["docker"].container_of(dlab.web))
    with udp_echo_in(docker_client, container) as port:
        yield port


def test_udp_datagrams_are_framed_both_ways(dlab, udp_echo):
    datagrams = [b"one", os.urandom(1400), b"x" * 60000]

    async def check() -> None:
        async with dlab.connect(dlab.alice, "zriver") as conn:
            reader, writer = await conn.open_connection(f"udp-{dlab.web}", udp_echo)
            for datagram in datagrams:  # the length and the datagram in separate writes too
                writer.write(struct.pack(">H", len(datagram)))
                writer.write(datagram)
                size, = struct.unpack(">H", await reader.readexactly(2))
                assert await reader.readexactly(size) == b"echo:" + datagram
            writer.write(struct.pack(">H", 0))  # an empty datagram: dropped, nothing back
            writer.write(b"".join(struct.pack(">H", 2) + b"%02d" % i for i in range(20)))
            echoed = [await reader.readexactly(2 + 7) for _ in range(20)]
            assert sorted(echoed) == sorted(struct.pack(">H", 7) + b"echo:%02d" % i
                                            for i in range(20))
            writer.close()

    asyncio.run(asyncio.wait_for(check(), 60))
    wait_idle(dlab)


def bridges_of(lab: DockerLab) -> list:
    relay = lab.cluster.host.relay
    return lab.cluster.call_soon(lambda: [b for c in relay.connections for b in c.bridges])


def test_a_stalled_channel_holds_bounded_bytes_and_stalls_only_itself(dlab):
    """A client that does not read an endless output, and a client that sends to a
    command that does not read: the relay holds a bounded amount for each, and the other
    channels of the same connection flow on."""
    from docker_fixtures import eventually
    from zriver.host.sshbridge import HIGH_WATER
    from zriver.streamproto import CHUNK, WINDOW

    def held() -> list[tuple[int, int, int, bool]]:
        """(stream buffered, channel send buffer, queued for the stream, channel reading
        paused) per bridge."""
        host = dlab.cluster.host
        return dlab.cluster.call_soon(lambda: [
            (b.stream.buffered, b.chan.get_write_buffer_size(), b._queued, b._reading_paused)
            for c in host.relay.connections for b in c.bridges if b.stream is not None])

    async def check() -> None:
        async with dlab.connect(dlab.alice, str(dlab.shell_task)) as conn:
            flood = await conn.create_process("cat /dev/zero", encoding=None)  # never read
            await asyncio.to_thread(eventually, lambda: any(
                buffered >= WINDOW - CHUNK for buffered, *_ in held()), 30,
                "the unread output to fill the stream's window")
            deaf = await conn.create_process("exec sleep 300", encoding=None)
            deaf.stdin.write(b"\0" * (24 << 20))  # nobody reads it in the container
            await asyncio.to_thread(eventually, lambda: any(  # a full queue pauses the channel
                paused for *_, paused in held()), 30, "the unread input to pause its channel")
            assert (await conn.run("echo still here", encoding=None)).stdout == b"still here\n"
            for buffered, send_buffer, queued, _ in held():
                assert buffered <= WINDOW and send_buffer <= 2 * CHUNK
                assert queued <= HIGH_WATER + MAX_SSH_PACKET
            assert len(await flood.stdout.readexactly(16 << 20)) == 16 << 20  # it flows again
            for process in (flood, deaf):
                process.close()

    asyncio.run(asyncio.wait_for(check(), 120))
    wait_idle(dlab)


MAX_SSH_PACKET = 256 << 10
"""The most one SSH data message may carry to the relay (its ``max_pktsize``)."""
