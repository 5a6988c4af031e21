"""Heartbeats as requests (``runner.heartbeat``), negotiated at registration, with old peers.

A host offers them in its register reply (``heartbeat_request``); a runner that sees the offer
sends a heartbeat as a request whose reply renews its lease when the lease is due for renewal
(every other interval with 3 misses; the others are published), and never pings. Each side can be forced into the
behaviour of a release from before (``HostCore.heartbeat_requests``,
``Runner.heartbeat_requests`` set to False): an old runner publishes and pings, a new runner
of an old host does the same. In every mix the node stays online, its lease is renewed, the
host keeps its usage and subscribers see ``hb.<node>``; a host that stops answering the
heartbeat requests lets the runner's lease run out (the replies are what renews it).

In-process clusters (``tests/cluster.py``), heartbeats every 0.2 s, lease 0.6 s.
"""

from __future__ import annotations

import time

import pytest

from procs import wait_until

INTERVAL = 0.2


def requests_of(cluster, op: str) -> int:
    """How many ``op`` requests the host has answered (its latency histograms)."""
    def read():
        histogram = cluster.host.latency.requests.get(op)
        return histogram.count if histogram is not None else 0
    return cluster.call_soon(read)


def lease_start(cluster, name: str) -> float:
    return cluster.call_soon(lambda: cluster.runners[name].lease.start or 0.0)


def heard_usage_at(cluster, name: str) -> float:
    """The ``at`` of the last heartbeat the host kept for node ``name``."""
    return cluster.call_soon(lambda: cluster.host.core.nodes[name].heartbeat.get("at", 0.0))


def check_heartbeats_flow(cluster, name: str = "n1") -> None:
    """Over five intervals the lease is renewed, the host keeps fresh usage, a subscriber
    gets ``hb.<node>`` without the runner's secret instance, and the node stays online."""
    sub = cluster.client().subscribe([f"hb.{name}"])
    try:
        lease0, heard0 = lease_start(cluster, name), heard_usage_at(cluster, name)
        wait_until(lambda: lease_start(cluster, name) > lease0 + 3 * INTERVAL, 10,
                   "the lease to be renewed for three intervals")
        wait_until(lambda: heard_usage_at(cluster, name) > heard0 + 3 * INTERVAL, 10,
                   "the host to keep fresh usage")
        assert sub.poll(5000), "no hb. publication reached a subscriber"
        topic, frame = sub.recv_multipart()
        assert topic == f"hb.{name}".encode()
        assert b"instance" not in frame and b"cpu_percent" in frame
    finally:
        sub.close(0)
    [node] = [n for n in cluster.client().call("node.list")["nodes"] if n["name"] == name]
    assert node["state"] == "online"


def test_a_new_runner_sends_heartbeat_requests_and_no_pings(make_cluster):
    cluster = make_cluster({"n1": {"cores": 1}})
    assert cluster.call_soon(lambda: cluster.runners["n1"]._heartbeat_request)
    pings, beats = requests_of(cluster, "runner.ping"), requests_of(cluster, "runner.heartbeat")
    check_heartbeats_flow(cluster)
    assert requests_of(cluster, "runner.heartbeat") >= beats + 1
    assert requests_of(cluster, "runner.ping") == pings
    task_id = cluster.submit(["true"])
    assert cluster.wait(task_id)[0]["state"] == "completed"


def test_an_old_runner_publishes_and_pings_with_a_new_host(make_cluster):
    cluster = make_cluster({"n1": {"cores": 1}})
    runner = cluster.runners["n1"]

    async def register_as_old():
        runner.heartbeat_requests = False
        await runner.register()
    cluster.run(register_as_old)
    assert not cluster.call_soon(lambda: runner._heartbeat_request)
    pings, beats = requests_of(cluster, "runner.ping"), requests_of(cluster, "runner.heartbeat")
    check_heartbeats_flow(cluster)
    assert requests_of(cluster, "runner.ping") >= pings + 1
    assert requests_of(cluster, "runner.heartbeat") == beats
    task_id = cluster.submit(["true"])
    assert cluster.wait(task_id)[0]["state"] == "completed"


@pytest.mark.parametrize("embedded", [False, True], ids=["sockets", "in-process"])
def test_a_new_runner_of_an_old_host_publishes_and_pings(make_cluster, embedded):
    cluster = make_cluster({})
    cluster.call_soon(lambda: setattr(cluster.host.core, "heartbeat_requests", False))
    cluster.start_runner("n1", embedded=embedded, cores=1)
    assert not cluster.call_soon(lambda: cluster.runners["n1"]._heartbeat_request)
    pings = requests_of(cluster, "runner.ping")
    check_heartbeats_flow(cluster)
    assert requests_of(cluster, "runner.ping") >= pings + 1
    assert requests_of(cluster, "runner.heartbeat") == 0
    task_id = cluster.submit(["true"])
    assert cluster.wait(task_id)[0]["state"] == "completed"


def test_in_process_runner_sends_heartbeat_requests(make_cluster):
    cluster = make_cluster({})
    cluster.start_runner("n1", embedded=True, cores=1)
    assert cluster.call_soon(lambda: cluster.runners["n1"]._heartbeat_request)
    pings = requests_of(cluster, "runner.ping")
    check_heartbeats_flow(cluster)
    assert requests_of(cluster, "runner.ping") == pings


def test_unanswered_heartbeat_requests_let_the_lease_run_out(make_cluster):
    """The host drops every ``runner.heartbeat`` (as a host that is gone would): nothing else
    renews an idle runner's lease, so it lapses within a lease and an interval, and the
    runner says so; once answered again, the runner registers and the node is online."""
    cluster = make_cluster({"n1": {"cores": 1}})
    host, runner = cluster.host, cluster.runners["n1"]
    original = host._handle_light

    def deaf(request, op, body, current):
        if op != "runner.heartbeat":
            original(request, op, body, current)
    cluster.call_soon(lambda: setattr(host, "_handle_light", deaf))
    cut = time.monotonic()
    lease = cluster.call_soon(lambda: runner.lease.length)
    wait_until(lambda: cluster.call_soon(lambda: runner._lapsed), lease + 4 * INTERVAL + 5,
               "the runner to notice its lease ran out")
    assert time.monotonic() - cut < lease + 2 * INTERVAL + 2  # (room for a loaded machine)
    registrations = requests_of(cluster, "runner.register")
    cluster.call_soon(lambda: setattr(host, "_handle_light", original))
    wait_until(lambda: requests_of(cluster, "runner.register") > registrations, 10,
               "the runner to register again")
    wait_until(lambda: not cluster.call_soon(lambda: runner._lapsed), 10,
               "the lease to be fresh again")
    check_heartbeats_flow(cluster)
