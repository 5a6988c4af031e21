"""``zriver init service``: systemd units whose stop and restart never end running tasks.

The unit text is checked for each role (ExecStart, KillMode, Restart, After...), and the CLI
refuses to overwrite a unit file without ``--force``. Then the runner unit's stop semantics are
followed for real, the way systemd carries them out: the runner is started with the unit's
``ExecStart`` and ``Environment`` inside a cgroup of its own (systemd's ``name=systemd``
hierarchy on this machine, else a cgroup v2 leaf), so its keeper and the task inherit it as
they would a unit's; "stop" is what the unit's ``KillMode`` makes systemd do (``process``:
SIGTERM to the main PID only; ``control-group``, systemd's default: SIGTERM to every process
of the cgroup); "start" runs the ``ExecStart`` into the same cgroup again.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from procs import Cluster, keepers_of, pid_alive, role_environment

from zriver import PROTOCOL_VERSION, __version__, units
from zriver.errors import Unavailable

pytestmark = pytest.mark.timeout(90)


def spec_for(role: str, **changes) -> units.UnitSpec:
    fields = {"role": role, "command": ("/usr/local/bin/zriver",),
              "config": f"/etc/zriver/{role}.toml", "user": "zriver", "home": "/var/lib/zriver"}
    return units.UnitSpec(**{**fields, **changes})


def fields_of(text: str) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit, every value of each key, in order."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def argv_of(exec_start: str) -> list[str]:
    """An ``ExecStart=`` value split as systemd does for what ``units.quote`` writes."""
    return [word.replace("$$", "$").replace("%%", "%") for word in shlex.split(exec_start)]


# ---- the text ---------------------------------------------------------------------------
def test_the_runner_unit_leaves_tasks_running_on_stop_and_restarts_on_failure() -> None:
    text = units.render(spec_for("runner"))
    unit = fields_of(text)
    assert unit["ExecStart"] == ["/usr/local/bin/zriver runner --config /etc/zriver/runner.toml"]
    assert unit["KillMode"] == ["process"]
    assert unit["Restart"] == ["on-failure"]
    assert unit["After"] == ["network-online.target docker.service"]
    assert unit["Wants"] == ["network-online.target"]
    assert unit["User"] == ["zriver"]
    assert unit["Environment"] == ["ZRIVER_HOME=/var/lib/zriver"]
    assert unit["WantedBy"] == ["multi-user.target"]
    assert text.startswith("# zriver-runner.service: zriver runner, written by `zriver init "
                           "service --runner`")
    assert "never ends running tasks" in text
    assert text.index("[Unit]") < text.index("[Service]") < text.index("[Install]")


def test_the_host_unit() -> None:
    unit = fields_of(units.render(spec_for("host")))
    assert unit["ExecStart"] == ["/usr/local/bin/zriver host --config /etc/zriver/host.toml"]
    assert unit["KillMode"] == ["control-group"]
    assert unit["Restart"] == ["on-failure"]
    assert unit["After"] == ["network-online.target"]
    assert unit["LimitNOFILE"] == ["65536"]


def test_exec_start_is_quoted_as_systemd_splits_it() -> None:
    spec = spec_for("runner", command=("/opt/my tools/python", "-m", "zriver"),
                    config="/srv/50%/$HOME/runner.toml", home="/var/lib/z river",
                    pythonpath="/opt/my tools/lib")
    unit = fields_of(units.render(spec))
    assert argv_of(unit["ExecStart"][0]) == ["/opt/my tools/python", "-m", "zriver", "runner",
                                             "--config", "/srv/50%/$HOME/runner.toml"]
    assert unit["ExecStart"][0].count("%%") == 1 and "$$HOME" in unit["ExecStart"][0]
    assert unit["Environment"] == ['"ZRIVER_HOME=/var/lib/z river"',
                                   '"PYTHONPATH=/opt/my tools/lib"']


def test_the_command_is_the_binary_the_script_or_this_interpreter(tmp_path: Path) -> None:
    assert units.zriver_command("x", "/opt/zriver/zriver", frozen=True) == ("/opt/zriver/zriver",)
    script = tmp_path / "zriver"
    script.write_text("#!/bin/sh\n")
    assert units.zriver_command(str(script), "/usr/bin/python3", False) == (str(script),)
    main = tmp_path / "__main__.py"  # `python -m zriver`: argv[0] is the package's __main__
    assert units.zriver_command(str(main), "/usr/bin/python3", False) == (
        "/usr/bin/python3", "-m", "zriver")


# ---- the verb ---------------------------------------------------------------------------
def cli(*args: str) -> subprocess.CompletedProcess:
    env = role_environment(Path(os.environ["ZRIVER_HOME"]))
    return subprocess.run([sys.executable, "-m", "zriver", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def test_init_service_prints_or_writes_and_never_overwrites_without_force(
        tmp_path: Path) -> None:
    printed = cli("init", "service", "--runner", "--user", "root")
    assert printed.returncode == 0, printed.stderr
    unit = fields_of(printed.stdout)
    assert argv_of(unit["ExecStart"][0]) == [
        sys.executable, "-m", "zriver", "runner", "--config",
        str(Path(os.environ["ZRIVER_HOME"]) / "runner.toml")]
    assert "does not exist yet" in printed.stderr
    target = tmp_path / "zriver-runner.service"
    target.write_text("mine")
    refused = cli("init", "service", "--runner", "--output", str(target))
    assert refused.returncode == 1
    assert f"{target} exists; use --force to overwrite it" in refused.stderr
    assert target.read_text() == "mine"
    forced = cli("init", "service", "--host", "--config", str(tmp_path / "h.toml"),
                 "--output", str(target), "--force")
    assert forced.returncode == 0, forced.stderr
    assert fields_of(target.read_text())["ExecStart"][0].endswith(f"host --config {tmp_path}/h.toml")
    neither = cli("init", "service")
    assert neither.returncode == 1 and "--host or --runner" in neither.stderr


# ---- stop semantics, for real -------------------------------------------------------------
def unit_cgroup() -> Path | None:
    """A fresh cgroup to hold one "unit": in systemd's own v1 hierarchy, else under a cgroup
    v2 mount; ``None`` when this machine lets us make neither."""
    for mount, fstype, options in _cgroup_mounts():
        if (fstype == "cgroup" and "name=systemd" in options.split(",")) or fstype == "cgroup2":
            group = Path(mount) / f"zriver-test-{uuid.uuid4().hex[:8]}.service"
            try:
                group.mkdir()
                return group
            except OSError:
                continue
    return None


def _cgroup_mounts() -> list[tuple[str, str, str]]:
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        tail = right.split()
        if len(tail) >= 3 and tail[0] in ("cgroup", "cgroup2"):
            found.append((left.split()[4], tail[0], tail[2]))
    return found


def members(group: Path) -> set[int]:
    return {int(pid) for pid in (group / "cgroup.procs").read_text().split()}


def remove_cgroup(group: Path) -> None:
    """Move what is left to the parent group, then remove the group."""
    for pid in members(group):
        try:
            (group.parent / "cgroup.procs").write_text(str(pid))
        except OSError:
            pass
    group.rmdir()


class UnitStart:
    """Starts a role as systemd would start the runner unit: the unit's ``Environment`` and
    ``ExecStart``, the process put into the unit's cgroup before it execs (so what it spawns
    is in there too). Used through the cluster helper's wrapping hook (``netns``), which
    also wraps restarts."""

    host_addr = "127.0.0.1"

    def __init__(self, group: Path | None, home: Path) -> None:
        self.group, self.home = group, home
        self.unit = ""

    def command(self, argv: list[str]) -> list[str]:
        config = argv[argv.index("--config") + 1]
        self.unit = units.render(units.UnitSpec(
            "runner", units.zriver_command(), config, "root", str(self.home),
            units.package_root()))
        unit = fields_of(self.unit)
        join = f"echo $$ > {shlex.quote(str(self.group / 'cgroup.procs'))} && " if (
            self.group) else ""
        return ["sh", "-c", join + 'exec env "$@"', "unit",
                *[argv_of(assignment)[0] for assignment in unit["Environment"]],
                *argv_of(unit["ExecStart"][0])]


def stop(mode: str, main_pid: int, group: Path | None) -> None:
    """What ``systemctl stop`` does with ``KillMode=mode`` (SIGTERM; the wait is the
    caller's)."""
    if mode == "process":
        os.kill(main_pid, signal.SIGTERM)
        return
    assert mode == "control-group" and group is not None
    for pid in members(group):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:  # ended since it was listed (the task's `sleep`, say)
            continue


@pytest.fixture
def group():
    made = unit_cgroup()
    yield made
    if made is not None:
        remove_cgroup(made)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["unit", "control-group"])
def test_a_runner_unit_stop_and_start_keeps_a_running_task(tmp_path: Path, group, mode) -> None:
    """``unit``: the KillMode the generated unit says (``process``): the task runs on through
    the stop, the started runner takes it back, and it completes with all its output.
    ``control-group`` (systemd's default, were the unit not to say otherwise): the keeper gets
    SIGTERM too and ends the task, which is why the unit says ``KillMode=process``."""
    if mode == "control-group" and group is None:
        pytest.skip("no cgroup can be made here")
    gate = tmp_path / "gate"
    with Cluster(tmp_path / "c") as cluster:
        starter = UnitStart(group, cluster.home)
        cluster.start_host(heartbeat_interval=0.25, heartbeat_misses=3)
        runner = cluster.start_runner("n1", netns=starter, cores=2, request_timeout=1.0,
                                      kill_grace=1.0)
        kill_mode = fields_of(starter.unit)["KillMode"][0] if mode == "unit" else mode
        task_id = cluster.submit(["sh", "-c", f"echo started; while [ ! -e '{gate}' ]; do "
                                  f"sleep 0.05; done; echo finished after the restart"])
        task = cluster.wait_task_state(task_id, "running", timeout=10)
        task_pid = int(task["events"][2]["detail"].split()[1])
        keeper = keepers_of([runner.data_dir])[0].pid
        if group is not None:  # the keeper and the task are in the unit's cgroup
            assert {runner.pid, keeper, task_pid} <= members(group)
        stop(kill_mode, runner.pid, group)
        runner.expected_exit = True
        status = runner.proc.wait(20)
        if kill_mode == "process":
            assert status == 0, runner.tail()
            assert pid_alive(task_pid) and pid_alive(keeper), "the stop ended the task"
        else:
            cluster.wait_for(lambda: not pid_alive(task_pid), 10, "the task to end")
        cluster.restart_runner("n1")
        gate.touch()
        final = cluster.wait_task_state(
            task_id, {"completed", "failed", "killed", "lost"}, timeout=20)
        if kill_mode == "process":
            assert (final["state"], final["exit_code"]) == ("completed", 0), final
            states = [e["state"] for e in final["events"]]  # unreachable while restarting
            assert states[:3] == ["pending", "assigned", "running"], states
            assert set(states[3:-1]) <= {"unreachable", "running"}, states
            log = cluster.call("task.logs", {"id": task_id, "stream": "stdout"})["data"]
            assert log == b"started\nfinished after the restart\n"
        else:  # SIGTERM reached the task from its keeper (killed) or directly (failed),
            # or the keeper went before it could record the end (lost): never completed
            assert final["state"] in ("killed", "failed", "lost"), final
            cluster.wait_node_state("n1", "online")
            log = cluster.wait_for(lambda: read_log(cluster, task_id), 20, "the task's log")
            assert log == b"started\n", log
        cluster.runners["n1"].terminate()


def read_log(cluster: Cluster, task_id: int) -> bytes | None:
    """The task's stdout, or None while its restarted runner does not answer yet (it may be
    starting a new keeper after the old one was ended with the cgroup)."""
    try:
        return cluster.call("task.logs", {"id": task_id, "stream": "stdout"})["data"]
    except Unavailable:
        return None


# ---- upgrading one node at a time ---------------------------------------------------------
def test_a_runner_of_another_release_with_the_same_protocol_joins_and_runs_tasks(
        cluster, monkeypatch) -> None:
    """Mid-upgrade: the host and n1 run this release, n2 another one of the same protocol
    version. n2 registers, says its release in ``node.list`` (``zriver nodes --json``), and
    runs tasks; ``cluster.hello`` says the host's own release and protocol."""
    monkeypatch.setattr("zriver.runner.resources.__version__", "0.0.9")
    cluster.start_runner("n2", cores=1)
    versions = {n["name"]: n["version"] for n in cluster.client().call("node.list")["nodes"]}
    assert versions == {"n1": __version__, "n2": "0.0.9"}
    hello = cluster.client().call("cluster.hello")
    assert (hello["version"], hello["protocol"]) == (__version__, PROTOCOL_VERSION)
    task_id = cluster.submit(["echo", "on the old release"], target="n2")
    assert cluster.wait(task_id)[0]["state"] == "completed"
    assert cluster.log(task_id) == b"on the old release\n"
