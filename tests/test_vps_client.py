"""The client verbs of VPSes and the SSH relay, end to end with the real CLI as a process:
``zriver connect`` under a real PTY (size, resize, Ctrl-C, exit code), one command with its
exit code and separate streams, ``zriver ssh`` into an sshd VPS (asyncssh), ``ssh-config`` used
by the real OpenSSH client, ``forward`` to an HTTP server in a container, and the errors a
person meets with no key or with a key that may not reach the task.

Every CLI run has ``HOME`` pointing at a temporary directory whose ``~/.ssh`` holds a fresh
ed25519 pair registered to the cluster's admin, so the default key lookup is what is tested.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import asyncssh
import pexpect
import pytest

from docker_fixtures import *  # noqa: F401,F403  (fixtures)
from docker_fixtures import submit_docker
from docker_images import ensure_sshd_image

from zriver.client.sshclient import Relay, known_hosts_text
from zriver.client.terminal import remote_command

ENV = "sx"
CLI_TIMEOUT = 60


# ---- fixtures --------------------------------------------------------------------------
@pytest.fixture(scope="session")
def sshd_image(docker_client) -> str:
    return ensure_sshd_image()


def make_ssh_home(root: Path, name: str = "me") -> Path:
    """A HOME whose ``~/.ssh`` holds an ed25519 pair (``id_ed25519``, ``id_ed25519.pub``)."""
    ssh = root / ".ssh"
    ssh.mkdir(parents=True, mode=0o700)
    key = asyncssh.generate_private_key("ssh-ed25519", comment=f"{name}@test")
    (ssh / "id_ed25519").write_bytes(key.export_private_key())
    os.chmod(ssh / "id_ed25519", 0o600)
    (ssh / "id_ed25519.pub").write_bytes(key.export_public_key())
    return root


@pytest.fixture
def home(tmp_path) -> Path:
    return make_ssh_home(tmp_path / "home")


@pytest.fixture
def rc(dcluster, sshd_image, home):
    """A docker cluster with env ``sx`` (the sshd image, also the default container) and
    ``home``'s key for the admin."""
    cluster = dcluster(host={"default_container": ENV})
    cluster.client(timeout=120).call("env.create", {"name": ENV, "image": sshd_image,
                                                    "commit": True}, timeout=120)
    cluster.client().call("ssh_key.add",
                          {"public_key": (home / ".ssh" / "id_ed25519.pub").read_text()})
    return cluster


def cli_env(home: Path) -> dict[str, str]:
    return {**os.environ, "HOME": str(home), "TERM": "xterm"}


def zriver(cluster, home: Path, *args: str, key: Path | None = None, **kwargs):
    return subprocess.run([sys.executable, "-m", "zriver", *cluster.cli_flags(key), *args],
                          capture_output=True, env=cli_env(home), timeout=CLI_TIMEOUT, **kwargs)


def running_task(cluster, command: list[str]) -> int:
    task_id = submit_docker(cluster, command, container=ENV)
    cluster.wait_state(task_id, {"running"}, timeout=60)
    return task_id


def wait_host_key(cluster, task_id: int, timeout: float = 60) -> dict:
    """The VPS's ``vps.list`` row once it runs and its runner reported its host key (checked
    at each of its events, and at most every 0.1 s in between)."""
    client = cluster.client()
    sub = client.subscribe([f"evt.task.{task_id}"])
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            [row] = [v for v in client.call("vps.list")["vps"] if v["id"] == task_id]
            if row["state"] == "running" and row["host_key"]:
                return row
            assert row["state"] in ("pending", "assigned", "running"), row
            if sub.poll(100):
                sub.recv_multipart()
        raise AssertionError(f"VPS {task_id} never reported a host key: {row}")
    finally:
        sub.close(linger=0)


# ---- no cluster needed -----------------------------------------------------------------
def test_remote_command_keeps_words_apart_and_a_single_word_is_a_shell_line():
    assert remote_command([]) is None and remote_command(["--"]) is None
    assert remote_command(["--", "ls | wc -l"]) == "ls | wc -l"
    assert remote_command(["--", "sh", "-c", "exit 7"]) == "sh -c 'exit 7'"


def test_known_hosts_pin_the_relay_by_host_and_port_and_each_vps_by_name():
    relay = Relay("10.0.0.5", 2222, "ssh-ed25519 AAAArelay")
    text = known_hosts_text(relay, [{"id": 4, "host_key": "ssh-ed25519 AAAAv4"},
                                    {"id": 5, "host_key": None}])
    assert text == "[10.0.0.5]:2222 ssh-ed25519 AAAArelay\nvps-4 ssh-ed25519 AAAAv4\n"


def test_with_no_key_the_verbs_say_where_they_looked_and_how_to_make_one(cluster, tmp_path):
    empty = tmp_path / "nobody"
    empty.mkdir()
    made = zriver(cluster, empty, "vps", "create", "--container", "dev", text=True)
    assert made.returncode == 1
    assert "~/.ssh/id_ed25519.pub" in made.stderr and "~/.ssh/id_rsa.pub" in made.stderr
    assert "ssh-keygen -t ed25519" in made.stderr
    for verb in (["ssh", "1"], ["connect", "1"], ["forward", "1", "80"]):
        run = zriver(cluster, empty, *verb, text=True)
        assert run.returncode == 1, (verb, run.stderr)
        assert "~/.ssh/id_ed25519" in run.stderr and "ssh-keygen" in run.stderr, run.stderr
    assert cluster.client().call("task.list", {})["tasks"] == []  # nothing was submitted
    home = make_ssh_home(tmp_path / "someone")
    native = zriver(cluster, home, "vps", "create", text=True)  # no default_container here
    assert native.returncode == 1 and "give --container ENV" in native.stderr, native.stderr
    assert cluster.client().call("task.list", {})["tasks"] == []


@pytest.mark.docker
def test_vps_create_submits_a_vps_with_the_default_key_and_vps_stop_ends_it(rc, home):
    made = zriver(rc, home, "vps", "create", "--cores", "1",  # the default container
                  "--memory", "1G", "--idle-stop", "2h", "--name", "box", text=True)
    assert made.returncode == 0, made.stderr
    task_id = int(made.stdout.strip())
    assert f"zriver ssh {task_id}" in made.stderr and f"ssh vps-{task_id}" in made.stderr
    task = rc.task(task_id)
    assert task["kind"] == "vps" and task["name"] == "box" and task["idle_stop"] == 7200
    assert task["memory"] == 1 << 30 and task["command"] == []
    assert (task["backend"], task["container"]) == ("docker", ENV)
    # the default key reaching authorized_keys: test_ssh_into_an_sshd_vps... logs in with it
    listed = json.loads(zriver(rc, home, "vps", "list", "--json", text=True).stdout)
    assert [(v["id"], v["name"]) for v in listed] == [(task_id, "box")]
    bad = zriver(rc, home, "vps", "create", "--public-key", "ssh-ed25519 nonsense", text=True)
    assert bad.returncode == 1 and "not an SSH public key" in bad.stderr
    stopped = zriver(rc, home, "vps", "stop", str(task_id), text=True)
    assert stopped.returncode == 0 and "stop requested" in stopped.stdout, stopped.stderr
    [summary] = rc.wait(task_id)
    assert summary["state"] == "killed", summary


def expect(child: pexpect.spawn, pattern) -> None:
    """``child.expect(pattern)``, answering the cursor position queries (ESC [6n) busybox's
    line editor sends at a prompt, as a real terminal does (unanswered, it may take the next
    typed line for the answer)."""
    while child.expect([pattern, r"\x1b\[6n"]) == 1:
        child.send("\x1b[1;1R")


# ---- zriver connect ----------------------------------------------------------------------
@pytest.mark.docker
def test_connect_under_a_pty_resizes_interrupts_and_returns_the_exit_code(rc, home):
    task_id = running_task(rc, ["sleep", "3600"])
    child = pexpect.spawn(sys.executable, ["-m", "zriver", *rc.cli_flags(), "connect",
                                           str(task_id)],
                          env=cli_env(home), dimensions=(24, 80), timeout=30)
    try:
        child.sendline("stty size; echo mark-$((6*7))")
        expect(child, r"24 80\s+mark-42")
        child.setwinsize(40, 132)  # the kernel sends SIGWINCH to the CLI
        child.sendline("stty size; echo mark-$((6*8))")
        expect(child, r"40 132\s+mark-48")
        child.sendline("sh -c 'echo sleep-$((1+1)); exec sleep 300'")
        expect(child, r"sleep-2")  # its output, not the echo of the line: the sleep runs
        child.sendintr()  # Ctrl-C: a byte through the raw terminal, SIGINT from the remote PTY
        expect(child, r"\^C")
        child.sendline("echo status-$?")
        expect(child, r"status-130")
        child.sendline("exit 5")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 5, child.before


@pytest.mark.docker
def test_connect_runs_one_command_with_its_exit_code_and_separate_streams(rc, home):
    task_id = running_task(rc, ["sleep", "3600"])
    seven = zriver(rc, home, "connect", str(task_id), "--", "sh", "-c", "exit 7")
    assert seven.returncode == 7, seven.stderr
    both = zriver(rc, home, "connect", str(task_id), "--", "sh", "-c",
                  "echo out; echo err >&2; exit 3")
    assert (both.returncode, both.stdout, both.stderr) == (3, b"out\n", b"err\n")
    data = os.urandom(3 << 20)
    echoed = zriver(rc, home, "connect", str(task_id), "--", "cat", input=data)
    assert echoed.returncode == 0 and hashlib.sha256(echoed.stdout).digest() == \
        hashlib.sha256(data).digest()
    named = submit_docker(rc, ["sleep", "3600"], container=ENV, name="worker")
    rc.wait_state(named, {"running"}, timeout=60)
    by_name = zriver(rc, home, "connect", "worker", "--", "sh", "-c", "echo $ZRIVER_TASK_ID")
    assert by_name.stdout == f"{named}\n".encode(), by_name.stderr
    nothing = zriver(rc, home, "connect", "-n", str(task_id), "--", "cat", input=b"unread")
    assert (nothing.returncode, nothing.stdout) == (0, b""), nothing.stderr
    lines = f"vps list\nconnect {task_id} -n -- sh -c 'echo in-the-shell; exit 7'\n"
    shell = zriver(rc, home, "shell", input=lines.encode())  # the same verbs in zriver shell
    assert b"IDLE FOR" in shell.stdout and b"in-the-shell" in shell.stdout, shell.stderr
    assert shell.returncode == 7, shell.stderr  # the last line's status


@pytest.mark.docker
def test_ctrl_c_on_a_command_without_a_terminal_interrupts_the_remote_command(rc, home):
    task_id = running_task(rc, ["sleep", "3600"])
    proc = subprocess.Popen([sys.executable, "-m", "zriver", *rc.cli_flags(), "connect",
                             str(task_id), "--", "sh", "-c", "echo started; exec sleep 300"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=cli_env(home))
    try:
        assert proc.stdout.readline() == b"started\n"
        proc.send_signal(signal.SIGINT)  # sent on as a signal request: the sleep ends
        assert proc.wait(30) == 128 + signal.SIGINT, proc.stderr.read()
    finally:
        proc.kill()
        proc.communicate()


def test_the_shell_completes_the_new_verbs():
    from test_top_model import FakeSource

    from zriver.client.completion import candidates

    def found(line: str) -> set[str]:
        return {c.text for c in candidates(line, FakeSource())}

    assert {"create", "list", "stop", "restart", "commit"} <= found("vps ")
    assert {"ssh", "ssh-config", "connect", "forward"} <= found("")
    assert found("connect ") == found("logs ") == found("vps stop ")  # task ids
    assert found("vps create --container ") == {"torch", "jax"}
    assert found("forward 12 8888 --u") == {"--udp"} and "--ide" in found("connect 12 --i")


@pytest.mark.docker
def test_a_key_of_another_user_may_not_connect_to_the_admins_task(rc, home, tmp_path):
    task_id = running_task(rc, ["sleep", "3600"])
    bob_home = make_ssh_home(tmp_path / "bob", "bob")
    bob = rc.key_for("bob", "user")
    rc.client(key=bob).call("ssh_key.add",
                            {"public_key": (bob_home / ".ssh" / "id_ed25519.pub").read_text()})
    refused = zriver(rc, bob_home, "connect", str(task_id), "--", "true", key=bob, text=True)
    assert refused.returncode != 0 and str(task_id) in refused.stderr, refused.stderr
    stranger = make_ssh_home(tmp_path / "stranger", "stranger")  # a key registered to no one
    denied = zriver(rc, stranger, "connect", str(task_id), "--", "true", text=True)
    assert denied.returncode == 1 and "refused your SSH key" in denied.stderr, denied.stderr
    assert "zriver ssh-key add" in denied.stderr


# ---- zriver ssh and ssh-config -----------------------------------------------------------
@pytest.fixture
def vps(rc, home) -> int:
    made = zriver(rc, home, "vps", "create", "--container", ENV, "--name", "box", "--wait",
                  text=True)
    assert made.returncode == 0, made.stderr
    task_id = int(made.stdout.strip())
    wait_host_key(rc, task_id)
    return task_id


@pytest.mark.docker
def test_ssh_into_an_sshd_vps_runs_commands_with_their_exit_codes(rc, home, vps):
    hostname = zriver(rc, home, "ssh", str(vps), "--", "sh", "-c", "id -u; echo e >&2; exit 4")
    assert (hostname.returncode, hostname.stdout, hostname.stderr) == (4, b"0\n", b"e\n")
    by_name = zriver(rc, home, "ssh", "box", "-n", "--", "echo", "by-name")
    assert (by_name.returncode, by_name.stdout) == (0, b"by-name\n"), by_name.stderr
    listed = zriver(rc, home, "vps", "list", text=True)
    assert listed.returncode == 0 and f"zriver ssh {vps}" in listed.stdout, listed.stdout
    child = pexpect.spawn(sys.executable, ["-m", "zriver", *rc.cli_flags(), "ssh", str(vps)],
                          env=cli_env(home), dimensions=(30, 100), timeout=30)
    try:
        child.sendline("stty size; echo in-$((2+3))")
        expect(child, r"30 100\s+in-5")
        child.sendline("exit 6")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 6


@pytest.mark.docker
@pytest.mark.skipif(shutil.which("ssh") is None, reason="no OpenSSH client on this machine")
def test_ssh_config_lets_the_real_openssh_client_in_with_pinned_keys(rc, home, vps, tmp_path):
    config = zriver(rc, home, "ssh-config", "--identity", str(home / ".ssh" / "id_ed25519"),
                    text=True)
    assert config.returncode == 0, config.stderr
    assert "Host vps-*" in config.stdout and "StrictHostKeyChecking yes" in config.stdout
    path = tmp_path / "ssh_config"
    path.write_text(config.stdout + "\n")
    known = Path(re.search(r"UserKnownHostsFile (\S+)", config.stdout).group(1))
    assert f"vps-{vps} ssh-ed25519 " in known.read_text()
    known.write_text(known.read_text().splitlines()[0] + "\n")  # as before the VPS existed
    assert zriver(rc, home, "ssh", str(vps), "-n", "--", "true").returncode == 0
    assert f"vps-{vps} ssh-ed25519 " in known.read_text()  # `zriver ssh` refreshed it
    run = subprocess.run(["ssh", "-F", str(path), "-o", "BatchMode=yes", f"vps-{vps}",
                          "echo through-openssh; exit 3"],
                         capture_output=True, text=True, timeout=CLI_TIMEOUT, env=cli_env(home))
    assert run.returncode == 3 and run.stdout == "through-openssh\n", run.stderr


# ---- zriver forward ----------------------------------------------------------------------
HTTPD = ("mkdir -p /www && echo hello-from-the-container > /www/index.html && "
         "head -c 5000000 /dev/urandom > /www/big && httpd -p 8080 -h /www && "
         "sha256sum /www/big")  # busybox httpd returns once it listens (then runs on alone)


@pytest.mark.docker
def test_forward_reaches_an_http_server_in_the_container(rc, home):
    task_id = running_task(rc, ["sleep", "3600"])
    ready = zriver(rc, home, "connect", str(task_id), "--", "sh", "-c", HTTPD, text=True)
    assert ready.returncode == 0, ready.stderr
    digest = ready.stdout.split()[0]
    proc = subprocess.Popen([sys.executable, "-m", "zriver", *rc.cli_flags(), "forward",
                             str(task_id), "8080", "--local", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=cli_env(home))
    try:
        line = proc.stdout.readline()
        port = int(re.search(r"127\.0\.0\.1:(\d+) ->", line).group(1)), line
        url = f"http://127.0.0.1:{port[0]}"
        with urllib.request.urlopen(f"{url}/index.html", timeout=30) as answer:
            assert answer.read() == b"hello-from-the-container\n"

        def fetch(_: int) -> str:
            with urllib.request.urlopen(f"{url}/big", timeout=60) as answer:
                return hashlib.sha256(answer.read()).hexdigest()

        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            assert set(pool.map(fetch, range(20))) == {digest}
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


@pytest.fixture
def udp_echo_task(rc, docker_client):
    """A running task with a UDP echo server on port 5353 in its container's network
    namespace (this machine's python entered with nsenter: busybox has no UDP server)."""
    task_id = running_task(rc, ["sleep", "3600"])
    [runner] = {path.read_text().strip() for path in rc.root.rglob("runner-id")}
    [container] = docker_client.api.containers(filters={"label": [
        f"zriver.task={task_id}", f"zriver.runner={runner}"]})  # other tests share the daemon
    with udp_echo_in(docker_client, container["Id"]):
        yield task_id


@pytest.mark.docker
@pytest.mark.skipif(shutil.which("nsenter") is None, reason="no nsenter on this machine")
def test_forward_udp_gives_each_client_address_its_own_framed_channel(rc, home, udp_echo_task):
    proc = subprocess.Popen([sys.executable, "-m", "zriver", *rc.cli_flags(), "forward",
                             str(udp_echo_task), "5353", "--udp", "--local", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cli_env(home))
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    try:
        line = proc.stdout.readline()
        port = int(re.search(r"127\.0\.0\.1:(\d+) ->", line).group(1))
        for n, client in enumerate(clients):
            client.settimeout(20)
            for datagram in (b"client-%d" % n, os.urandom(1400), b"x" * 60000):
                client.sendto(datagram, ("127.0.0.1", port))
                assert client.recvfrom(65535)[0] == b"echo:" + datagram
    finally:
        for client in clients:
            client.close()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


@pytest.mark.docker
def test_forward_to_a_task_that_is_not_running_says_so(rc, home):
    done = submit_docker(rc, ["true"], container=ENV)
    rc.wait(done)
    run = zriver(rc, home, "forward", str(done), "8080", "--local", "0", text=True)
    assert run.returncode == 1 and str(done) in run.stderr, run.stderr


# ---- zriver up ---------------------------------------------------------------------------
class UpProcess:
    """``zriver up --port 0`` with its output lines read by a thread into a queue."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "zriver", "up", "--port", "0", "--cores", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd)
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def line_with(self, text: str, timeout: float = 60) -> str:
        """The first next line holding ``text`` (fails at the end of the output or after
        ``timeout`` seconds without one)."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            if line is None:
                raise AssertionError(f"no line with {text!r}:\n" + "".join(self.seen))
            self.seen.append(line)
            if text in line:
                return line

    def stop(self) -> str:
        """SIGINT, then everything it printed."""
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(60)
        while (line := self.lines.get(timeout=10)) is not None:
            self.seen.append(line)
        return "".join(self.seen)


def test_zriver_up_registers_the_local_ssh_keys_once(tmp_path):
    from procs import role_environment

    home = make_ssh_home(tmp_path / "home")
    env = {**role_environment(tmp_path / "zhome"), "HOME": str(home)}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "zriver", *args], capture_output=True,
                              text=True, env=env, timeout=CLI_TIMEOUT)

    up = UpProcess(env, tmp_path)
    try:
        line = up.line_with("registered your SSH key")
        assert "id_ed25519.pub" in line, line
        keys = json.loads(cli("ssh-key", "list", "--json").stdout)
        assert [k["comment"] for k in keys] == ["me@test"]
        relay = cli("connect", "999", "--", "true")  # the relay lets the key in, then says
        assert relay.returncode != 0 and "999" in relay.stderr, relay.stderr
        assert "refused your SSH key" not in relay.stderr
    finally:
        up.stop()
    again = UpProcess(env, tmp_path)
    try:
        again.line_with("zriver is up")
        assert len(json.loads(cli("ssh-key", "list", "--json").stdout)) == 1
    finally:
        output = again.stop()
    assert "registered your SSH key" not in output, output


# ---- zriver connect --ide ----------------------------------------------------------------
@pytest.mark.docker
def test_the_ide_lists_opens_saves_and_runs_a_shell_line_in_the_container(rc, home):
    task_id = submit_docker(rc, ["sleep", "3600"], container=ENV, workdir="/srv")
    rc.wait_state(task_id, {"running"}, timeout=60)
    made = zriver(rc, home, "connect", str(task_id), "--", "sh", "-c",
                  "mkdir -p /srv/sub && echo hello-ide > /srv/notes.txt")
    assert made.returncode == 0, made.stderr
    child = pexpect.spawn(sys.executable, ["-m", "zriver", *rc.cli_flags(), "connect",
                                           str(task_id), "--ide"],
                          env=cli_env(home), dimensions=(30, 110), timeout=30)
    try:
        child.expect("notes.txt")  # the tree: ../, sub/, notes.txt
        child.expect("Ctrl-Q")  # the status line: the first screen is drawn
        child.send("\x1b[B\x1b[B\r")  # Down, Down, Enter: open notes.txt
        child.expect("hello-ide")
        child.send("top-")  # typed at the start of the file
        child.send("\x13")  # Ctrl-S
        child.expect(r"14 bytes")  # the status line: saved (only what changed is redrawn)
        child.send("\t")  # the shell pane's line
        child.send("echo shell-$((6*7)) > made.txt; cat made.txt\r")
        child.expect(r"shell-42")
        child.expect(r"\[exit 0\]")
        child.send("\x11")  # Ctrl-Q
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    saved = zriver(rc, home, "connect", str(task_id), "--", "cat", "/srv/notes.txt",
                   "/srv/made.txt")
    assert saved.stdout == b"top-hello-ide\nshell-42\n", saved.stderr


# ---- vps restart and vps commit ----------------------------------------------------------
@pytest.mark.docker
def test_vps_restart_keeps_the_disk_and_vps_commit_makes_an_env_version(rc, home, vps):
    wrote = zriver(rc, home, "ssh", str(vps), "-n", "--", "echo kept > /root/marker")
    assert wrote.returncode == 0, wrote.stderr
    key = wait_host_key(rc, vps)["host_key"]
    client = rc.client()
    sub = client.subscribe([f"evt.task.{vps}"])
    try:
        restarted = zriver(rc, home, "vps", "restart", str(vps), text=True)
        assert restarted.returncode == 0 and "restart requested" in restarted.stdout
        deadline = time.monotonic() + 60
        while not any("restarted" in e["detail"]  # its history says the runner did it
                      for e in client.call("task.get", {"id": vps})["events"]):
            assert time.monotonic() < deadline, client.call("task.get", {"id": vps})
            if sub.poll(500):
                sub.recv_multipart()
    finally:
        sub.close(linger=0)
    assert wait_host_key(rc, vps)["host_key"] == key
    after = zriver(rc, home, "ssh", str(vps), "-n", "--", "cat", "/root/marker")
    assert after.stdout == b"kept\n", after.stderr
    committed = zriver(rc, home, "vps", "commit", str(vps), "--env", "snap", "--json",
                       text=True)
    assert committed.returncode == 0, committed.stderr
    assert json.loads(committed.stdout)["env"] == "snap"
    task_id = submit_docker(rc, ["cat", "/root/marker"], container="snap")
    [summary] = rc.wait(task_id)
    assert summary["state"] == "completed" and rc.log(task_id) == b"kept\n", summary
