"""The network-namespace helper itself (``tests/netns.py``): a cut link makes TCP hang like a real
partition (a connect times out, an open connection goes silent; no RST, no ICMP error), restore
makes it work again, a runner started inside talks to a host bound to the root end, and nothing
is left behind. Needs root and iproute2 (``tests/run.sh`` installs it)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import netns
from netns import NetNamespace
from procs import Cluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

if netns.available():
    pytest.skip(netns.available(), allow_module_level=True)

CONNECT = """
import socket, sys
s = socket.socket()
s.settimeout(float(sys.argv[3]))
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print("connected")
except socket.timeout:
    print("timeout")
except OSError as exc:
    print("error", exc.errno, exc)
"""

# Connects, then sends one byte every 20 ms for up to 20 s (stops at the first error).
STREAM = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
end = time.monotonic() + 20
while time.monotonic() < end:
    s.sendall(b"x")
    time.sleep(0.02)
"""


@pytest.fixture
def ns():
    with NetNamespace() as made:
        yield made


@pytest.fixture
def listener(ns):
    """A TCP socket listening on the namespace's root-side address (in the root namespace)."""
    server = socket.socket()
    server.bind((ns.host_addr, 0))
    server.listen(8)
    yield server
    server.close()


def connect_from_inside(ns: NetNamespace, port: int, timeout: float) -> tuple[str, float]:
    started = time.monotonic()
    out = ns.run(sys.executable, "-c", CONNECT, ns.host_addr, str(port), str(timeout)).stdout
    return out.strip(), time.monotonic() - started


@pytest.mark.parametrize("mode", ["drop", "link"])
def test_cut_makes_a_connect_hang_and_restore_makes_it_work(ns, listener, mode):
    port = listener.getsockname()[1]
    assert connect_from_inside(ns, port, 5)[0] == "connected"
    ns.cut(mode)
    try:
        result, took = connect_from_inside(ns, port, 1.5)
        assert result == "timeout", f"a cut link answered at once ({result}): not a partition"
        assert took >= 1.4
    finally:
        ns.restore()
    assert connect_from_inside(ns, port, 5)[0] == "connected"


def test_an_open_connection_goes_silent_and_resumes(ns, listener):
    port = listener.getsockname()[1]
    sender = subprocess.Popen(ns.command([sys.executable, "-c", STREAM, ns.host_addr, str(port)]),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        listener.settimeout(10)
        conn, peer = listener.accept()
        assert peer[0] == ns.inner_addr
        conn.settimeout(5)
        assert conn.recv(64)  # bytes flow
        ns.cut()
        # Drain what was in flight before the cut; then the connection is silent, not reset.
        conn.settimeout(0.5)
        drained = 0
        silent = False
        for _ in range(100):  # bounded: at most 100 chunks arrive before silence
            try:
                data = conn.recv(65536)
            except socket.timeout:
                silent = True
                break
            assert data, "the connection was closed by the cut"
            drained += len(data)
        assert silent, "bytes kept arriving over a cut link"
        conn.settimeout(1.0)
        with pytest.raises(socket.timeout):
            conn.recv(65536)
        assert sender.poll() is None, sender.stderr.read()  # the sender hangs, it did not fail
        ns.restore()
        conn.settimeout(10)  # TCP retransmits (backed off to well under 10 s)
        assert conn.recv(65536)
        conn.close()
    finally:
        ns.restore()
        sender.kill()
        sender.wait(timeout=5)


def test_nothing_is_left_behind_and_stale_ones_are_removed():
    with NetNamespace() as made:
        assert made.name in netns._namespaces() and made.outer in netns._root_links()
        inside = made.run("ip", "-o", "-4", "addr", "show").stdout
        assert made.inner_addr in inside and "127.0.0.1" in inside
        # only its /30 and nothing else: no default route out of the namespace
        routes = made.run("ip", "-4", "route", "show").stdout
        assert "default" not in routes and routes.split()[0] == f"{netns.SUBNET}.{made.subnet}.0/30"
    assert made.name not in netns._namespaces() and made.outer not in netns._root_links()

    # A namespace of a run whose process is gone (a crashed session) is cleaned up by name.
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale_ns, stale_link = f"{netns.PREFIX}{dead.pid}-1", f"zr{dead.pid}h1"
    netns.sh("ip", "netns", "add", stale_ns)
    netns.sh("ip", "link", "add", stale_link, "type", "veth", "peer", "name", f"zr{dead.pid}r1")
    try:
        removed = netns.cleanup_stale()
        assert stale_ns in removed and stale_link in removed
        assert stale_ns not in netns._namespaces() and stale_link not in netns._root_links()
    finally:
        netns.sh("ip", "link", "del", stale_link, check=False)
        netns.sh("ip", "netns", "del", stale_ns, check=False)


def test_a_runner_inside_talks_to_a_host_on_the_root_end(ns, tmp_path: Path):
    with Cluster(tmp_path) as cluster:
        cluster.start_host(bind_address=ns.host_addr, heartbeat_interval=0.2, heartbeat_misses=3)
        assert cluster.endpoint.startswith(f"tcp://{ns.host_addr}:")
        runner = cluster.start_runner("n1", netns=ns, cores=1, request_timeout=1.0)
        task_id = cluster.submit(["sh", "-c", "ip -o -4 addr show"])
        [task] = cluster.wait_final([task_id], timeout=10).values()
        assert (task["state"], task["exit_code"]) == ("completed", 0), task
        output = (runner.data_dir / "logs" / f"{task_id}.out").read_text()
        assert ns.inner_addr in output, f"the task did not run inside the namespace: {output}"

        # A cut makes the node unreachable on missed heartbeats; restored, it comes back.
        ns.cut()
        try:
            cut_at = time.monotonic()
            cluster.wait_node_state("n1", "unreachable", timeout=10)
            offline_after = time.monotonic() - cut_at
        finally:
            ns.restore()
        restored_at = time.monotonic()
        cluster.wait_node_state("n1", "online", timeout=20)
        print(f"unreachable {offline_after:.2f}s after the cut, "
              f"online {time.monotonic() - restored_at:.2f}s after the restore")
        assert runner.alive()
