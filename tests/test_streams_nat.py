"""Byte streams to a runner the host cannot dial (behind NAT): real processes, a network
namespace that drops every connection coming in, ``zriver connect`` through the relay.

The runner lives in a namespace (``tests/netns.py``) whose INPUT chain drops TCP SYNs: it can
open connections to the host, nothing can open one to it, as behind a NAT gateway. The test
first shows the drop (a listener inside is unreachable from the host's side), then runs a
command in a container task of that runner through the relay: the stream rides the
connection the runner dialled.
"""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

import netns
from docker_fixtures import DockerCluster, busybox, docker_client  # noqa: F401  (fixtures)
from netns import NetNamespace
from procs import Cluster
from test_vps_e2e import make_home

pytestmark = [pytest.mark.docker, pytest.mark.slow]

LISTEN = ("import socket, sys\n"
          "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
          "s.bind(('0.0.0.0', 7999)); s.listen(); print('ready', flush=True); s.accept()\n")


@pytest.fixture
def nat(tmp_path):
    reason = netns.available()
    if reason:
        pytest.fail(reason)  # root and iproute2 are part of the test machine (tests/run.sh)
    with NetNamespace() as ns:
        ns.run("iptables", "-A", "INPUT", "-p", "tcp", "--syn", "-j", "DROP")
        yield ns


def test_a_runner_behind_nat_serves_streams_over_the_connection_it_dialled(
        nat, tmp_path, docker_client, busybox):  # noqa: F811
    listener = subprocess.Popen(nat.command([sys.executable, "-c", LISTEN]),
                                stdout=subprocess.PIPE)
    cleanup = DockerCluster(None, docker_client, tmp_path)
    try:
        assert listener.stdout.readline() == b"ready\n"
        with pytest.raises((socket.timeout, TimeoutError)):  # the SYN is dropped: no answer
            socket.create_connection((nat.inner_addr, 7999), timeout=1.0)
        with Cluster(tmp_path / "lab") as lab:
            home = make_home(tmp_path / "home")
            env = {**lab.env, "HOME": str(home)}
            lab.start_host(bind_address=nat.host_addr, env_image_prefix=f"{cleanup.prefix}-h")
            lab.start_runner("n1", netns=nat, image_prefix=f"{cleanup.prefix}-n1")

            def zriver(*args: str) -> subprocess.CompletedProcess:
                return subprocess.run([sys.executable, "-m", "zriver", "--host", lab.endpoint,
                                       *args], capture_output=True, text=True, env=env,
                                      timeout=120)

            for args in (("env", "create", "bb", "--image", busybox),
                         ("ssh-key", "add", str(home / ".ssh" / "id_ed25519.pub"))):
                assert zriver(*args).returncode == 0
            task = lab.submit(["sleep", "600"], backend="docker", container="bb")
            lab.wait_task_state(task, {"running"}, timeout=120)
            run = zriver("connect", str(task), "--", "sh", "-c", "echo through-nat; exit 4")
            assert (run.returncode, run.stdout) == (4, "through-nat\n"), run.stderr
            for runner in lab.runners.values():
                runner.terminate()
    finally:
        listener.kill()
        listener.wait()
        cleanup.cleanup()
