"""A VPS end to end with real processes: ``zriver host`` and ``zriver runner`` as processes,
the CLI as README shows it, the real OpenSSH client, a real Docker engine.

One VPS lives through the whole module's story, in order: created with ``zriver vps create``,
reached with ``zriver ssh``, stock ``ssh -J zriver@HOST:PORT root@vps-ID`` and ``ssh vps-ID``
through ``zriver ssh-config``; a 50 MB scp checked by sha256; the host restarted, then the
runner restarted, then the runner stopped for longer than the liveness window: each time the
VPS is the same container with the same disk and the same session command works again. Then
the idle stop ends a second VPS and says why in its history.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import asyncssh
import docker
import pytest

from docker_fixtures import DockerCluster, docker_client  # noqa: F401  (fixture)
from docker_images import ensure_sshd_image
from procs import Cluster

pytestmark = pytest.mark.docker

CLI_TIMEOUT = 90
LEASE = {"heartbeat_interval": 0.5, "heartbeat_misses": 3, "unreachable_grace": 3.0}


def make_home(root: Path) -> Path:
    """A HOME whose ``~/.ssh`` holds a fresh ed25519 pair (the default key lookup's)."""
    ssh = root / ".ssh"
    ssh.mkdir(parents=True, mode=0o700)
    key = asyncssh.generate_private_key("ssh-ed25519", comment="e2e@test")
    (ssh / "id_ed25519").write_bytes(key.export_private_key())
    os.chmod(ssh / "id_ed25519", 0o600)
    (ssh / "id_ed25519.pub").write_bytes(key.export_public_key())
    return root


class Story:
    """The module's cluster (processes), its user's HOME and the VPS it works in."""

    def __init__(self, base: Path, client: docker.DockerClient) -> None:
        self.docker = client
        self.cleanup = DockerCluster(None, client, base)
        self.lab = Cluster(base / "lab")
        self.home = make_home(base / "home")
        self.env = {**self.lab.env, "HOME": str(self.home), "TERM": "xterm"}
        prefix = self.cleanup.prefix
        self.lab.start_host(env_image_prefix=f"{prefix}-host", **LEASE)
        self.lab.start_runner("n1", image_prefix=f"{prefix}-n1", docker_probe_interval=0.5)
        self.vps = 0

    def close(self) -> None:
        for runner in self.lab.runners.values():  # stop runners before removing containers
            if runner.alive():
                runner.terminate()
        self.lab.close()
        self.cleanup.cleanup()

    def zriver(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """``zriver --host EP ARGS`` as a person types it (their HOME, the admin's key)."""
        run = subprocess.run([sys.executable, "-m", "zriver", "--host", self.lab.endpoint, *args],
                             capture_output=True, text=True, env=self.env, cwd=self.lab.base,
                             timeout=CLI_TIMEOUT)
        if check:
            assert run.returncode == 0, f"{args}: {run.returncode}\n{run.stdout}\n{run.stderr}"
        return run

    def row(self, task_id: int | None = None) -> dict:
        rows = json.loads(self.zriver("vps", "list", "--json").stdout)
        rows = rows["vps"] if isinstance(rows, dict) else rows
        [row] = [r for r in rows if r["id"] == (task_id or self.vps)]
        return row

    def container(self, task_id: int | None = None) -> dict:
        runner_id = (self.lab.base / "runner-n1" / "runner-id").read_text().strip()
        [item] = self.docker.api.containers(all=True, filters={"label": [
            f"zriver.task={task_id or self.vps}", f"zriver.runner={runner_id}"]})
        return self.docker.api.inspect_container(item["Id"])

    def wait_vps(self, state: str, task_id: int | None = None, timeout: float = 60) -> dict:
        return self.lab.wait_for(lambda: (lambda r: r if r["state"] == state and (
            state != "running" or r["host_key"]) else None)(self.row(task_id)),
            timeout, f"VPS {task_id or self.vps} {state}")

    def ssh(self, *command: str) -> subprocess.CompletedProcess:
        return self.zriver("ssh", str(self.vps), "--", *command, check=False)


@pytest.fixture(scope="module")
def story(tmp_path_factory, docker_client):  # noqa: F811
    story = Story(tmp_path_factory.mktemp("vps-e2e"), docker_client)
    try:
        story.zriver("env", "create", "dev", "--image", ensure_sshd_image())
        story.zriver("ssh-key", "add", str(story.home / ".ssh" / "id_ed25519.pub"))
        yield story
    finally:
        print(story.lab.diagnostics())
        story.close()


def test_create_then_zriver_ssh(story):
    made = story.zriver("vps", "create", "--container", "dev", "--name", "box", "--cores", "1",
                        "--memory", "256M", "--wait")
    story.vps = int(re.search(r"\b(\d+)\b", made.stdout).group(1))
    story.wait_vps("running")
    run = story.ssh("sh", "-c", "echo kept > /root/marker; id -u; exit 5")
    assert (run.returncode, run.stdout) == (5, "0\n"), run.stderr


def test_stock_openssh_jump_and_ssh_config(story):
    row = story.row()
    port = story.lab.host.endpoints["relay"].rsplit(":", 1)[1]  # from endpoints.json
    known = story.home / ".ssh" / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {story.lab.host.endpoints['relay_host_key']}\n"
                     f"vps-{story.vps} {row['host_key']}\n")
    # OpenSSH reads the passwd entry's home, not $HOME, and -o does not reach the jump hop:
    # a plain config for both hops stands in for the person's own ~/.ssh.
    plain_config = story.home / "plain_config"
    plain_config.write_text(f"Host *\n  UserKnownHostsFile {known}\n  IdentityFile "
                            f"{story.home / '.ssh' / 'id_ed25519'}\n  BatchMode yes\n")
    jump = subprocess.run(["ssh", "-F", str(plain_config), "-J",
                           f"zriver@127.0.0.1:{port}", f"root@vps-{story.vps}",
                           "cat /root/marker"],
                          capture_output=True, text=True, env=story.env, timeout=CLI_TIMEOUT)
    assert (jump.returncode, jump.stdout) == (0, "kept\n"), jump.stderr
    config = story.home / "ssh_config"
    identity = str(story.home / ".ssh" / "id_ed25519")  # OpenSSH ignores $HOME (see above)
    config.write_text(story.zriver("ssh-config", "--identity", identity).stdout)
    plain = subprocess.run(["ssh", "-F", str(config), "-o", "BatchMode=yes", f"vps-{story.vps}",
                            "cat /root/marker"],
                           capture_output=True, text=True, env=story.env, timeout=CLI_TIMEOUT)
    assert (plain.returncode, plain.stdout) == (0, "kept\n"), plain.stderr


def test_scp_of_50_mb_through_ssh_config_keeps_every_byte(story, tmp_path):
    config = story.home / "ssh_config"
    source = tmp_path / "blob"
    source.write_bytes(os.urandom(50 << 20))
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    up = subprocess.run(["scp", "-F", str(config), "-o", "BatchMode=yes", str(source),
                         f"vps-{story.vps}:/root/blob"],
                        capture_output=True, text=True, env=story.env, timeout=CLI_TIMEOUT)
    assert up.returncode == 0, up.stderr
    remote = story.ssh("sha256sum", "/root/blob")
    assert remote.stdout.split()[0] == digest
    back = tmp_path / "back"
    down = subprocess.run(["scp", "-F", str(config), "-o", "BatchMode=yes",
                           f"vps-{story.vps}:/root/blob", str(back)],
                          capture_output=True, text=True, env=story.env, timeout=CLI_TIMEOUT)
    assert down.returncode == 0 and hashlib.sha256(back.read_bytes()).hexdigest() == digest


class Heartbeats:
    """Arrival times of node ``n1``'s heartbeats, collected in a thread until ``stop``."""

    def __init__(self, client) -> None:
        self.sub = client.subscribe(["hb.n1"])
        self.times: list[float] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._collect, daemon=True)
        self.thread.start()

    def _collect(self) -> None:
        while not self.done.is_set():
            if self.sub.poll(100):
                self.sub.recv_multipart()
                self.times.append(time.monotonic())

    def stop(self) -> float:
        """The longest gap between two heartbeats seen (seconds)."""
        self.done.set()
        self.thread.join(5)
        self.sub.close(linger=0)
        assert len(self.times) >= 2, "no heartbeats arrived"
        return max(b - a for a, b in zip(self.times, self.times[1:]))


SERVE = ("mkdir -p /www && head -c 209715200 /dev/urandom > /www/big && echo small > "
         "/www/small && httpd -p 8080 -h /www && sha256sum /www/big")


def test_a_200_mb_forward_and_50_connections_leave_heartbeats_and_dispatch_on_time(story):
    served = story.ssh("sh", "-c", SERVE)
    assert served.returncode == 0, served.stderr
    digest = served.stdout.split()[0]
    forward = subprocess.Popen([sys.executable, "-m", "zriver", "--host", story.lab.endpoint,
                                "forward", str(story.vps), "8080", "--local", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=story.env)
    client = story.lab.client(timeout=10)
    beats = Heartbeats(client)
    try:
        port = int(re.search(r"127\.0\.0\.1:(\d+) ->", forward.stdout.readline()).group(1))
        url = f"http://127.0.0.1:{port}"

        def fetch(path: str) -> bytes:
            with urllib.request.urlopen(f"{url}/{path}", timeout=120) as answer:
                return answer.read()

        with concurrent.futures.ThreadPoolExecutor(51) as pool:
            big = pool.submit(lambda: hashlib.sha256(fetch("big")).hexdigest())
            small = list(pool.map(fetch, ["small"] * 50))
            task = story.lab.submit(["true"])  # dispatch while the big transfer runs
            story.lab.wait_final([task], timeout=30)
            assert big.result(timeout=120) == digest
        assert small == [b"small\n"] * 50
        assert story.lab.task(task)["state"] == "completed"
    finally:
        gap = beats.stop()
        forward.send_signal(signal.SIGINT)
        forward.communicate(timeout=30)
    lease = LEASE["heartbeat_interval"] * LEASE["heartbeat_misses"]
    print(f"longest heartbeat gap during the transfer: {gap:.2f} s (interval "
          f"{LEASE['heartbeat_interval']} s)")
    assert gap < lease, f"a heartbeat gap of {gap:.2f} s reached the lease"
    assert story.lab.nodes()["n1"]["state"] == "online"


def test_a_host_restart_keeps_the_vps_and_its_session(story):
    started = story.container()["State"]["StartedAt"]
    story.lab.host.terminate()
    story.lab.restart_host()
    story.lab.wait_node_state("n1", "online")
    story.wait_vps("running")
    assert story.ssh("cat", "/root/marker").stdout == "kept\n"
    assert story.container()["State"]["StartedAt"] == started


def test_a_runner_restart_keeps_the_vps_with_the_same_host_key(story):
    before = story.row()
    started = story.container()["State"]["StartedAt"]
    story.lab.runners["n1"].terminate()
    story.lab.restart_runner("n1")  # the node may still show online from the old runner:
    story.lab.wait_for(lambda: story.ssh("cat", "/root/marker").stdout == "kept\n" or None,
                       60, "a session through the restarted runner")  # wait for the new one
    after = story.wait_vps("running")
    assert after["host_key"] == before["host_key"]
    assert story.container()["State"]["StartedAt"] == started


def test_a_runner_away_past_the_grace_leaves_the_vps_unreachable_then_running(story):
    started = story.container()["State"]["StartedAt"]
    runner = story.lab.runners["n1"]
    os.kill(runner.pid, signal.SIGSTOP)
    try:
        story.wait_vps("unreachable", timeout=30)
        story.lab.wait_node_state("n1", "offline", timeout=30)  # past the grace (3 s)
        assert story.row()["state"] == "unreachable"  # never lost
        refused = story.ssh("true")
        assert refused.returncode != 0 and "unreachable" in refused.stderr, refused.stderr
    finally:
        os.kill(runner.pid, signal.SIGCONT)
    story.wait_vps("running", timeout=60)
    assert story.ssh("cat", "/root/marker").stdout == "kept\n"
    assert story.container()["State"]["StartedAt"] == started


def test_the_idle_stop_ends_a_vps_nobody_uses_and_says_why(story):
    made = story.zriver("vps", "create", "--container", "dev", "--idle-stop", "2s", "--wait")
    task_id = int(re.search(r"\b(\d+)\b", made.stdout).group(1))
    story.lab.wait_task_state(task_id, {"killed"}, timeout=60)
    details = [e["detail"] for e in story.lab.task(task_id)["events"]]
    assert any("idle for" in d and "no SSH session" in d for d in details), details
    assert story.row()["state"] == "running"  # the first VPS has no --idle-stop: untouched
