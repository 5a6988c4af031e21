"""The `zriver` executable as a person uses it, against a real in-process cluster."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from zriver.client.commands import REGISTRY

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def zriver(*args: str, home=None, check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(ENV)
    if home is not None:
        env["ZRIVER_HOME"] = str(home)
    result = subprocess.run([sys.executable, "-m", "zriver", *args], capture_output=True,
                            text=True, env=env, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"zriver {args} -> {result.returncode}: {result.stderr}")
    return result


@pytest.fixture
def cli(cluster):
    def run(*args: str, **kw) -> subprocess.CompletedProcess:
        return zriver(*cluster.cli_flags(), *args, **kw)

    return run


def test_version():
    result = zriver("--version", check=True)
    assert result.stdout.startswith("zriver ")


@pytest.mark.parametrize("verb", sorted(REGISTRY))
def test_help_on_every_verb(verb):
    result = zriver(*verb.split(), "-h", check=True)
    assert "usage:" in result.stdout


def test_submit_wait_prints_id_and_passes_exit_code(cli):
    ok = cli("submit", "--wait", "--", "python3", "-c", "print(42)")
    assert ok.returncode == 0 and ok.stdout.strip().isdigit()
    task_id = ok.stdout.strip()
    assert cli("logs", task_id).stdout == "42\n"
    failing = cli("submit", "--wait", "--", "sh", "-c", "exit 7")
    assert failing.returncode == 7


def test_submit_options_reach_the_task(cli, tmp_path):
    result = cli("submit", "--wait", "--cores", "2", "--memory", "1G", "--env", "SEED=3",
                 "--name", "train", "--workdir", str(tmp_path), "--user", "root", "--",
                 "sh", "-c", "echo $SEED; pwd", check=True)
    task_id = result.stdout.strip()
    status = json.loads(cli("status", task_id, "--json", check=True).stdout)
    assert (status["name"], status["cores"], status["memory"]) == ("train", 2, 1 << 30)
    assert status["env"] == {"SEED": "3"} and status["workdir"] == str(tmp_path)
    assert [e["state"] for e in status["events"]][-1] == "completed"
    assert cli("logs", task_id).stdout == f"3\n{tmp_path}\n"


def test_json_field_names_are_stable(cli):
    cli("submit", "--wait", "--", "true", check=True)
    [task] = json.loads(cli("tasks", "--json", check=True).stdout)
    for field in ("id", "name", "state", "node", "command", "exit_code", "submitted_at",
                  "started_at", "finished_at", "cores", "memory", "detail"):
        assert field in task
    [node] = json.loads(cli("nodes", "--json", check=True).stdout)
    for field in ("name", "state", "cores", "memory", "cores_used", "memory_used", "gpus",
                  "numa_zones", "last_seen"):
        assert field in node


def test_tables_are_readable(cli):
    cli("submit", "--wait", "--name", "hello", "--", "true", check=True)
    tasks = cli("tasks", check=True).stdout.splitlines()
    assert tasks[0].split() == ["ID", "NAME", "STATE", "NODE", "CORES", "MEM", "AGE", "EXIT",
                                "DETAIL"]
    assert "hello" in tasks[1] and "completed" in tasks[1]
    nodes = cli("nodes", check=True).stdout.splitlines()
    assert nodes[1].split()[:3] == ["n1", "online", "0/2"]
    assert "cpu" in cli("health", "n1", check=True).stdout


@pytest.mark.parametrize("args, message", [
    (["submit", "--memory", "4Q", "--", "true"], "bad size '4Q'"),
    (["submit", "--cores", "64", "--", "true"], "no node can ever run this task"),
    (["submit", "--target", "ghost", "--", "true"], "unknown node 'ghost'"),
    (["submit", "--env", "NOEQUALS", "--", "true"], "KEY=VALUE"),
    (["submit"], "nothing to run"),
    (["status", "999"], "no task 999"),
    (["kill", "999"], "no task 999"),
    (["health", "ghost"], "unknown node"),
])
def test_bad_input_gives_a_clear_error(cli, args, message):
    result = cli(*args)
    assert result.returncode == 1
    assert message in result.stderr and result.stderr.startswith("zriver: ")


def test_unreachable_host_is_a_clear_error(tmp_path):
    result = zriver("--host", "tcp://127.0.0.1:9", "--timeout", "0.5", "tasks", home=tmp_path)
    assert result.returncode == 1
    assert "nothing listens at tcp://127.0.0.1:9 (connection refused)" in result.stderr


def test_client_finds_a_local_cluster_with_no_flags(cluster):
    home = cluster.host.data_dir  # the host writes endpoints.json into its data dir
    result = zriver("nodes", "--json", home=home, check=True)
    assert json.loads(result.stdout)[0]["name"] == "n1"


def test_logs_follow_prints_output_while_the_task_runs(cluster, tmp_path):
    gate = tmp_path / "gate"
    task_id = cluster.submit(["sh", "-c", f"echo first; while [ ! -e {gate} ]; do sleep 0.05; done;"
                                          " echo second"])
    proc = subprocess.Popen([sys.executable, "-m", "zriver", *cluster.cli_flags(), "logs",
                             "-f", str(task_id)], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert proc.stdout.readline() == "first\n"  # printed before the task can finish
        gate.touch()
        assert proc.stdout.readline() == "second\n"
        assert proc.wait(30) == 0
        assert proc.stdout.read() == ""
    finally:
        proc.kill()


def test_submit_follow_streams_and_returns_status(cli):
    result = cli("submit", "--follow", "--", "sh", "-c", "echo a; echo b >&2; exit 4")
    lines = result.stdout.splitlines()
    assert lines[0].isdigit() and lines[1:] == ["a"]
    assert "b" in result.stderr and result.returncode == 4


def test_wait_and_kill_verbs(cli, cluster):
    task_id = cluster.submit(["sleep", "60"])
    cluster.wait_state(task_id, {"running"})
    assert "kill requested" in cli("kill", str(task_id), check=True).stdout
    result = cli("wait", str(task_id))
    assert result.returncode == 143 and "killed" in result.stdout


def test_wait_and_status_of_a_task_that_never_ran(cli, cluster):
    """A task failed by its dependency has no exit code: ``wait`` says none (not "None"), and
    every line of ``status`` keeps its key and value apart, the longest key's too."""
    failed = cluster.submit(["false"])
    never = cluster.submit(["true"], after=[failed])
    waited = cli("wait", str(never))
    assert waited.returncode == 1 and waited.stdout == f"{never}: failed\n", waited.stdout
    lines = cli("status", str(never), check=True).stdout.split("history:")[0].splitlines()
    assert lines and all(re.match(r"^[a-z_]+: +\S", line) for line in lines), lines
    assert any(line.startswith("allocated_cores: ") for line in lines)


def test_init_config_writes_a_loadable_commented_file(tmp_path):
    from zriver.config import HostSettings, RunnerSettings, load

    for role, cls in (("host", HostSettings), ("runner", RunnerSettings)):
        path = zriver("init", "config", f"--{role}", home=tmp_path, check=True).stdout.strip()
        assert path == str(tmp_path / f"{role}.toml")
        assert load(path, cls, "") == cls()
        again = zriver("init", "config", f"--{role}", home=tmp_path)
        assert again.returncode == 1 and "--force" in again.stderr


def test_config_typos_are_refused(tmp_path):
    (tmp_path / "host.toml").write_text("hearbeat_interval = 2\n")
    result = zriver("host", "--config", str(tmp_path / "host.toml"))
    assert result.returncode == 1 and "unknown setting 'hearbeat_interval'" in result.stderr


def test_sweep_submit_prints_one_id_per_task_and_filters_by_batch(cli):
    result = cli("submit", "--max-parallel", "2", "--", "echo", "span:{1..3}", "span:[a,b]",
                 check=True)
    ids = result.stdout.split()
    assert len(ids) == 6
    assert cli("wait", *ids).returncode == 0
    rows = json.loads(cli("tasks", "--batch", ids[0], "--json", check=True).stdout)
    assert sorted(str(r["id"]) for r in rows) == sorted(ids)
    assert {tuple(r["command"]) for r in rows} == {("echo", n, x) for n in "123" for x in "ab"}


def test_scheduling_flags_reach_the_task(cli):
    first = cli("submit", "--", "true", check=True).stdout.strip()
    result = cli("submit", "--priority", "5", "--after", first, "--time-limit", "1h30m",
                 "--retries", "2", "--wait", "--", "true", check=True)
    status = json.loads(cli("status", result.stdout.strip(), "--json", check=True).stdout)
    assert (status["priority"], status["after"], status["time_limit"], status["retries"]) == \
        (5, [int(first)], 5400.0, 2)


def test_drain_undrain_and_usage_verbs(cli):
    assert "drained (disk swap)" in cli("node", "drain", "n1", "--reason", "disk swap",
                                        check=True).stdout
    assert "online,drained" in cli("nodes", check=True).stdout
    cli("node", "undrain", "n1", check=True)
    cli("submit", "--wait", "--", "true", check=True)
    usage = cli("usage", "--since", "1h", check=True).stdout.splitlines()
    assert usage[0].split() == ["USER", "TASKS", "FAILED", "CORE-HOURS", "GPU-HOURS"]
    assert len(usage) == 2


def test_span_runs_a_sweep_locally(tmp_path):
    result = zriver("span", "--", "sh", "-c", "echo run span:{1..2} span:[x,y]", home=tmp_path)
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert [l for l in lines if l.startswith("run")] == ["run 1 x", "run 1 y", "run 2 x", "run 2 y"]
    assert lines[-1] == "4 succeeded, 0 failed"
    parallel = zriver("span", "--parallel", "2", "--", "sh", "-c", "exit span:[0,3]", home=tmp_path)
    assert parallel.returncode == 1 and "1 succeeded, 1 failed" in parallel.stdout
