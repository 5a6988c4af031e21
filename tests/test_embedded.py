"""The in-process link of ``zriver up``: the runner speaks to the host without sockets, and
everything else stays as on a split cluster (principal, role checks, durability, liveness)."""

from __future__ import annotations

import time

import msgpack
import pytest

from zriver.errors import BadRequest, Forbidden
from zriver.inproc import InProcessLink
from zriver.protocol import decode


@pytest.fixture
def embedded(tmp_path):
    """A secure in-process cluster whose runner ``n1`` is on an in-process link."""
    from cluster import Cluster

    cluster = Cluster(tmp_path / "c", runners={})
    cluster.start()
    cluster.start_runner("n1", embedded=True, cores=2, memory="4G")
    yield cluster
    cluster.stop()


def _ask(cluster, op: str, body: dict) -> dict:
    runner = cluster.runners["n1"]
    return cluster.run(lambda: runner.request(op, body, timeout=5))


def test_a_task_runs_over_the_link_and_not_over_the_router(embedded):
    runner = embedded.runners["n1"]
    link = runner.uplink
    assert isinstance(link, InProcessLink) and link.is_open
    identity = f"r:n1:{runner.instance}".encode()
    assert embedded.call_soon(lambda: embedded.host.nodes["n1"].link) == identity
    sent, delivered = link.sent, link.delivered
    task_id = embedded.submit(["sh", "-c", "echo over the link"])
    assert embedded.wait(task_id)[0]["state"] == "completed"
    assert embedded.log(task_id) == b"over the link\n"
    assert link.sent > sent and link.delivered > delivered  # the update, its ack and start
    events = [e["state"] for e in embedded.client().call("task.get", {"id": task_id})["events"]]
    assert events == ["pending", "assigned", "running", "completed"]


def test_the_link_carries_the_runners_principal_and_its_role_checks(embedded):
    assert _ask(embedded, "runner.ping", {"name": "n1"}) == {"registered": True}
    with pytest.raises(Forbidden, match="node 'n1'"):  # its key speaks for n1 only
        _ask(embedded, "runner.ping", {"name": "n2"})
    with pytest.raises(Forbidden):  # an op for people, refused to a runner as over a socket
        _ask(embedded, "task.submit", {"tasks": [{"command": ["true"]}]})
    with pytest.raises(BadRequest):  # a malformed update: refused whole, as an error reply
        _ask(embedded, "task.update", {"name": "n1", "updates": [{"id": "x"}]})


def test_a_revoked_runner_key_is_refused_on_the_link_at_its_next_request(embedded):
    embedded.client().call("key.revoke", {"name": "n1"})
    with pytest.raises(Forbidden, match="no longer"):
        _ask(embedded, "runner.ping", {"name": "n1"})


def test_replies_renew_the_lease_and_messages_count_as_heard(embedded):
    runner, host = embedded.runners["n1"], embedded.host

    async def ping() -> tuple[float, float, float]:
        before = time.monotonic()
        await runner.request("runner.ping", {"name": "n1"})
        return before, runner.lease.start, host.nodes["n1"].seen

    before, lease_start, seen = embedded.run(ping)
    assert lease_start >= before and seen >= before
    assert embedded.call_soon(lambda: runner.lease.fresh(time.monotonic()))


def test_heartbeats_reach_subscribers_without_the_runners_secret(embedded):
    runner = embedded.runners["n1"]
    sub = embedded.client().subscribe(["hb.n1"])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not sub.poll(200):
            pass
        topic, frame = sub.recv_multipart()
    finally:
        sub.close(linger=0)
    body = decode(frame).body
    assert topic == b"hb.n1" and "instance" not in body and runner.instance not in repr(body)
    assert msgpack.unpackb(frame)["op"] == "hb"


def test_a_closed_link_is_unreachable_like_a_gone_socket(embedded):
    runner = embedded.runners["n1"]
    identity = f"r:n1:{runner.instance}".encode()
    assert embedded.call_soon(lambda: embedded.host._linked(identity))
    embedded.stop_runner("n1")
    assert not embedded.call_soon(lambda: embedded.host._linked(identity))
    assert embedded.call_soon(lambda: embedded.host.core.connected(
        embedded.host.nodes["n1"])) is False
