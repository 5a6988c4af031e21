"""A machine without Docker: `zriver up` falls back to native and says so; `zriver nodes` says
Docker is unavailable. (No Docker engine needed: the runner is pointed at a missing socket.)"""

from __future__ import annotations

import os
import subprocess
import sys

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def test_up_without_docker_falls_back_to_native_and_says_so(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "host.toml").write_text('default_container = "py312"\n')
    (home / "runner.toml").write_text('docker_host = "unix:///nonexistent/docker.sock"\n'
                                      'docker_probe_interval = 3600.0\n')
    env = {**ENV, "ZRIVER_HOME": str(home)}
    up = subprocess.Popen([sys.executable, "-m", "zriver", "up", "--port", "0"],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        first = up.stdout.readline()
        assert first.startswith("zriver is up"), first
        said = up.stdout.readline()
        assert said.startswith("Docker is not available here (no answer from "
                               "unix:///nonexistent/docker.sock"), said
        assert "tasks run natively; default_container 'py312' is not used" in said

        def zriver(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "zriver", *args], capture_output=True,
                                  text=True, env=env, timeout=60)

        done = zriver("submit", "--wait", "--", "sh", "-c", "echo native")
        assert done.returncode == 0, done.stderr
        assert zriver("logs", done.stdout.strip()).stdout == "native\n"
        nodes = zriver("nodes").stdout
        assert nodes.splitlines()[0].split()[6] == "DOCKER"
        assert nodes.splitlines()[1].split()[6] == "unavailable"
        assert "docker unavailable: no answer from unix:///nonexistent/docker.sock" in nodes
    finally:
        up.terminate()
        up.wait(30)
