"""Exactly-once submit: an idempotency key makes a resent ``task.submit`` return what the
first one stored, across a host killed with -9 and restarted on the same data directory."""

from __future__ import annotations

import pytest

from procs import Cluster as Procs
from zriver.errors import InvalidArgument


def spec(root) -> dict:
    return {"command": ["true"], "workdir": str(root), "owner": "test"}


def test_same_key_twice_returns_the_same_ids_and_stores_once(cluster):
    client = cluster.client()
    body = {"tasks": [spec(cluster.root)] * 3, "key": "sweep-1"}
    first = client.call("task.submit", body)
    again = client.call("task.submit", body)
    assert again == first and first["batch_id"] == first["ids"][0]
    assert len(client.call("task.list", {})["tasks"]) == 3
    other = client.call("task.submit", {**body, "key": "sweep-2"})
    assert set(other["ids"]).isdisjoint(first["ids"])


def test_key_length_is_checked(cluster):
    with pytest.raises(InvalidArgument):
        cluster.client().call("task.submit", {"tasks": [spec(cluster.root)], "key": "k" * 129})


def test_client_submit_sends_one_key_per_call(cluster):
    client = cluster.client()
    one, two = client.submit([spec(cluster.root)]), client.submit([spec(cluster.root)])
    assert one["ids"] != two["ids"]
    assert client.submit([spec(cluster.root)], key="fixed") == \
        client.submit([spec(cluster.root)], key="fixed")


def test_resend_after_host_kill9_returns_the_stored_ids(tmp_path):
    with Procs(tmp_path) as procs:
        procs.start_host()
        with procs.host.client(timeout=5) as client:
            first = client.submit([spec(tmp_path)] * 2, key="before-the-crash")
        procs.host.kill9()
        procs.restart_host()
        with procs.host.client(timeout=10) as client:
            again = client.submit([spec(tmp_path)] * 2, key="before-the-crash")
            assert again == first
            assert sorted(t["id"] for t in client.call("task.list", {})["tasks"]) == \
                sorted(first["ids"])


def test_client_resends_across_a_restart(tmp_path):
    """The DEALER reconnects by itself: a submit sent while the host is down is answered
    once it is back, within the call's overall timeout."""
    with Procs(tmp_path) as procs:
        procs.start_host()
        client = procs.client(timeout=20)
        client.call("cluster.hello")
        procs.host.kill9()
        procs.restart_host(wait=False)
        reply = client.submit([spec(tmp_path)], key="while-down")
        assert len(reply["ids"]) == 1
        assert client.submit([spec(tmp_path)], key="while-down") == reply
