"""Everyday use on one machine: ``zriver up -d`` / ``zriver down`` as real background processes,
the client's fast failures (each of the three causes under a second), ``kill`` of several ids
and ``--batch``, Ctrl-C while following (through a pty), config values out of range, sweeps
the shell expanded, and sizes shown in one style."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pexpect
import pytest

from procs import end_keepers, pid_alive, role_environment, wait_until
from zriver import config as cfg
from zriver import dirlock, sweep
from zriver.client.api import Client
from zriver.client.probe import NoHost
from zriver.config import ClientSettings
from zriver.errors import InvalidArgument

CLI_TIMEOUT = 90.0
"""Seconds one CLI process may take (``up -d`` waits up to 60 s for the cluster)."""
FAST = 1.0
"""What "knows within a second" means."""


# ---- a background cluster ------------------------------------------------------------------
class Home:
    """A HOME of its own (``~/.zriver`` inside it) and the CLI run as a process there."""

    def __init__(self, base: Path) -> None:
        self.home = base / "home"
        self.zriver = self.home / ".zriver"
        self.zriver.mkdir(parents=True)
        self.env = {**role_environment(self.zriver), "HOME": str(self.home)}
        self.pids: list[int] = []

    def cli(self, *args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "zriver", *args], env=self.env,
                              cwd=self.home, capture_output=True, text=True, timeout=timeout)

    def up(self, *args: str) -> subprocess.CompletedProcess:
        ran = self.cli("up", "-d", "--port", "0", "--cores", "2", "--memory", "2G", *args)
        holder = dirlock.held(self.zriver, "host")
        if holder and holder.get("pid"):
            self.pids.append(holder["pid"])  # for the clean-up, whatever the test does
        return ran

    def endpoints(self) -> dict:
        return json.loads((self.zriver / "endpoints.json").read_text())

    def client(self, timeout: float = 5.0) -> Client:
        """A client of the background cluster with its admin key (``zriver up`` made it)."""
        return Client(self.endpoints()["router"], timeout,
                      key=str(self.zriver / "keys" / "client.key_secret"),
                      host_key=self.endpoints()["host_key"], settings=ClientSettings())

    def wait_state(self, task_id: int, states: set[str], timeout: float = 30.0) -> dict:
        def state():
            with self.client() as client:
                task = client.call("task.get", {"id": task_id})["task"]
            return task if task["state"] in states else None
        return wait_until(state, timeout, f"task {task_id} in {states}")

    def clean_up(self) -> None:
        """``zriver down``, then SIGKILL whatever is left: the up, the keeper and its tasks."""
        if dirlock.held(self.zriver, "host") is not None:
            self.cli("down")
        for pid in self.pids:
            if pid_alive(pid):
                os.kill(pid, 9)
        end_keepers([self.zriver / "runner"])


@pytest.fixture
def home(tmp_path):
    made = Home(tmp_path)
    yield made
    made.clean_up()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One background cluster for the tests that only need one running."""
    made = Home(tmp_path_factory.mktemp("everyday"))
    try:
        ran = made.up()
        assert ran.returncode == 0, ran.stdout + ran.stderr
        yield made
    finally:
        made.clean_up()


def submit(home: Home, *command: str, **spec) -> list[int]:
    with home.client() as client:
        return client.submit([{"command": list(command), "workdir": str(home.home),
                               "cores": 1, **spec}])["ids"]


# ---- up -d and down ------------------------------------------------------------------------
def test_up_detached_returns_once_it_answers_and_down_stops_it(home):
    ran = home.up()
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "up in the background" in ran.stdout and str(home.zriver / "up.log") in ran.stdout
    pid = dirlock.held(home.zriver, "host")["pid"]
    assert home.endpoints()["pid"] == pid
    with home.client() as client:  # it answers the moment `up -d` has returned
        assert [n["state"] for n in client.call("node.list")["nodes"]] == ["online"]
    again = home.up()
    assert again.returncode == 1 and "in use by zriver up" in again.stderr

    [task_id] = submit(home, "sleep", "120")
    home.wait_state(task_id, {"running"})
    down = home.cli("down")
    assert down.returncode == 0 and f"pid {pid}" in down.stdout, down.stdout + down.stderr
    assert not pid_alive(pid) and dirlock.held(home.zriver, "host") is None
    assert not (home.zriver / "endpoints.json").exists()
    nothing = home.cli("down")
    assert nothing.returncode == 0 and "nothing to stop" in nothing.stderr

    back = home.up()  # the task ran on under the keeper; the next start takes it back
    assert back.returncode == 0, back.stdout + back.stderr
    assert home.wait_state(task_id, {"running"})["state"] == "running"
    assert home.cli("kill", str(task_id)).returncode == 0
    home.wait_state(task_id, {"killed"})


def test_up_detached_that_fails_prints_the_log_tail(home):
    (home.zriver / "runner.toml").write_text("cores = -3\n")
    started = time.monotonic()
    ran = home.up()
    assert ran.returncode == 1
    assert "runner.toml: cores must be at least 0, got -3" in ran.stderr, ran.stderr
    assert "exited with status" in ran.stderr and "up.log" in ran.stderr
    assert time.monotonic() - started < CLI_TIMEOUT
    assert dirlock.held(home.zriver, "host") is None


# ---- fast failures -------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def first_call_fails(endpoint: str | None, match: str) -> float:
    """Seconds until a fresh client's first call raised ``NoHost`` matching ``match``."""
    started = time.monotonic()
    with pytest.raises(NoHost, match=match):
        with Client(endpoint, timeout=10.0, settings=ClientSettings()) as client:
            client.call("cluster.hello")
    return time.monotonic() - started


@pytest.fixture
def no_home(tmp_path, monkeypatch):
    home = tmp_path / "zriver"
    home.mkdir()
    monkeypatch.setenv("ZRIVER_HOME", str(home))
    monkeypatch.delenv("ZRIVER_HOST", raising=False)
    return home


def test_nothing_listening_is_known_within_a_second(no_home):
    port = free_port()
    assert first_call_fails(f"tcp://127.0.0.1:{port}", "nothing listens at .*connection "
                            "refused.*zriver up -d") < FAST


def test_a_stale_endpoints_file_is_known_within_a_second(no_home):
    router = f"tcp://127.0.0.1:{free_port()}"
    (no_home / "endpoints.json").write_text(json.dumps(
        {"router": router, "pid": dead_pid(), "security": "none", "host_key": ""}))
    assert first_call_fails(None, "stale endpoints file .*endpoints.json.*no longer "
                            "running") < FAST


def test_a_listener_that_is_not_zriver_is_known_within_a_second(no_home):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        assert first_call_fails(f"tcp://127.0.0.1:{port}", "is not a zriver host: it does "
                                "not speak ZeroMQ") < FAST
    finally:
        server.shutdown()
        server.server_close()


def test_a_submit_to_nothing_is_not_resent_for_ten_seconds(no_home):
    started = time.monotonic()
    with pytest.raises(NoHost):
        with Client(f"tcp://127.0.0.1:{free_port()}", settings=ClientSettings()) as client:
            client.submit([{"command": ["true"]}])
    assert time.monotonic() - started < FAST


def test_the_cli_says_nothing_listens(no_home):
    ran = subprocess.run([sys.executable, "-m", "zriver", "--host",
                          f"127.0.0.1:{free_port()}", "nodes"], capture_output=True,
                         text=True, timeout=CLI_TIMEOUT, env=role_environment(no_home))
    assert ran.returncode == 1 and "nothing listens at" in ran.stderr


# ---- kill of several ids, --batch, Ctrl-C ----------------------------------------------------
def test_kill_of_several_ids_kills_the_live_ones_and_reports_the_rest(cluster):
    [done] = submit(cluster, "true")
    cluster.wait_state(done, {"completed"})
    [live] = submit(cluster, "sleep", "120")
    cluster.wait_state(live, {"running"})
    ran = cluster.cli("kill", str(done), str(live))
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert f"{live}: kill requested" in ran.stdout
    assert f"zriver: not killed: task {done} already completed" in ran.stderr
    cluster.wait_state(live, {"killed"})
    again = cluster.cli("kill", str(done), str(live))
    assert again.returncode == 1 and "already killed" in again.stderr
    unknown = cluster.cli("kill", "999999")
    assert unknown.returncode == 1 and "zriver: not killed: no task 999999" in unknown.stderr


def test_kill_batch_kills_every_live_task_of_a_sweep(cluster):
    with cluster.client() as client:
        reply = client.submit_sweep({"command": ["sleep", "span:{100..103}"], "cores": 1,
                                     "workdir": str(cluster.home)})
    batch, ids = reply["batch_id"], reply["ids"]
    cluster.wait_state(ids[0], {"running"})
    ran = cluster.cli("kill", "--batch", str(batch), "--json")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert sorted(t["id"] for t in json.loads(ran.stdout)["killed"]) == ids
    for task_id in ids:
        cluster.wait_state(task_id, {"killed"})
    over = cluster.cli("kill", "--batch", str(batch))
    assert over.returncode == 1 and "nothing to kill" in over.stderr
    missing = cluster.cli("kill", "--batch", "987654")
    assert missing.returncode == 1 and "no batch 987654" in missing.stderr


@pytest.mark.parametrize("verb", ["submit", "logs"])
def test_ctrl_c_while_following_says_the_task_keeps_running(cluster, verb):
    if verb == "submit":
        args = ["submit", "--follow", "--", "sh", "-c", "echo started; exec sleep 120"]
    else:
        [task_id] = submit(cluster, "sh", "-c", "echo started; exec sleep 120")
        args = ["logs", "-f", str(task_id)]
    child = pexpect.spawn(sys.executable, ["-m", "zriver", *args], env=cluster.env,
                          cwd=str(cluster.home), timeout=60, encoding="utf-8")
    try:
        if verb == "submit":
            child.expect(r"(\d+)\r\n")
            task_id = int(child.match.group(1))
        child.expect("started")
        child.sendintr()
        child.expect(rf"task {task_id} keeps running \(`zriver kill {task_id}` stops it")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 130
    assert cluster.wait_state(task_id, {"running"})["state"] == "running"
    assert cluster.cli("kill", str(task_id)).returncode == 0


# ---- sizes in one style ----------------------------------------------------------------------
def test_a_task_too_big_is_refused_in_human_sizes(cluster):
    ran = cluster.cli("submit", "--memory", "10T", "--", "true")
    assert ran.returncode == 1
    assert "10T memory" in ran.stderr and "2G memory" in ran.stderr, ran.stderr
    assert "10485760M" not in ran.stderr


# ---- config values --------------------------------------------------------------------------
@pytest.mark.parametrize("cls, text, message", [
    (cfg.HostSettings, "router_port = 99999", "router_port must be a port from 0 to 65535"),
    (cfg.HostSettings, "xpub_port = -1", "xpub_port must be a port from 0 to 65535"),
    (cfg.HostSettings, "web_port = 70000", "web_port must be a port from -1 to 65535"),
    (cfg.HostSettings, "heartbeat_interval = 0", "heartbeat_interval must be more than 0"),
    (cfg.HostSettings, "heartbeat_misses = 0", "heartbeat_misses must be at least 1"),
    (cfg.HostSettings, "placement = \"tight\"", "placement must be 'pack' or 'spread'"),
    (cfg.HostSettings, "retention = \"1s\"", "retention: '1s' is out of range"),
    (cfg.RunnerSettings, "router_port = 123456", "router_port must be a port"),
    (cfg.RunnerSettings, "memory = \"lots\"", "memory: bad size 'lots'"),
    (cfg.RunnerSettings, "request_timeout = -1.0", "request_timeout must be more than 0"),
    (cfg.RunnerSettings, "gpus = -2", "gpus must be at least -1"),
])
def test_config_values_out_of_range_are_refused_naming_file_and_key(tmp_path, cls, text,
                                                                     message):
    path = tmp_path / "some.toml"
    path.write_text(text + "\n")
    with pytest.raises(InvalidArgument) as refused:
        cfg.load(path, cls, "some.toml")
    assert str(refused.value).startswith(f"{path}: ") and message in str(refused.value)


def test_zriver_host_refuses_a_router_port_out_of_range(tmp_path):
    config = tmp_path / "host.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\nrouter_port = 99999\n')
    ran = subprocess.run([sys.executable, "-m", "zriver", "host", "--config", str(config)],
                         capture_output=True, text=True, timeout=CLI_TIMEOUT,
                         env=role_environment(tmp_path))
    assert ran.returncode == 1
    assert f"{config}: router_port must be a port from 0 to 65535, got 99999" in ran.stderr
    assert not (tmp_path / "data" / "endpoints.json").exists()


# ---- sweeps the shell expanded ---------------------------------------------------------------
def test_a_brace_expanded_span_says_how_to_quote_it():
    with pytest.raises(InvalidArgument, match=r"span:\{1\.\.3\} expanded by the shell.*"
                                              r"'span:\{1\.\.3\}' \(in quotes\)"):
        sweep.parse(["echo", "span:1", "span:2", "span:3"])


def test_a_span_alone_or_globbed_into_a_file_name_says_to_quote():
    for word in ("span:1", "span:0", "--lr=span:0.1"):
        with pytest.raises(InvalidArgument, match="quote spans .*'span:\\{1..100\\}'"):
            sweep.parse(["python", "x.py", word])


def test_an_unquoted_sweep_pasted_into_bash_is_refused_with_the_quoting(tmp_path):
    (tmp_path / "span:0").write_text("")  # what the glob span:[0.1,0.01] matches
    env = role_environment(tmp_path)
    for line, said in (("echo span:{1..4}", "write 'span:{1..4}' (in quotes)"),
                       ("echo span:[0.1,0.01]", "bad span in 'span:0'")):
        ran = subprocess.run(["bash", "-c", f"{sys.executable} -m zriver submit -- {line}"],
                             cwd=tmp_path, capture_output=True, text=True, env=env,
                             timeout=CLI_TIMEOUT)
        assert ran.returncode == 1 and said in ran.stderr, ran.stderr
        assert "quote spans so that the shell leaves them alone" in ran.stderr
