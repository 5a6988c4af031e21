"""Pure pieces: sweep expansion, usage accounting, GPU inventory through a fake NVML."""

from __future__ import annotations

import pytest

from zriver.errors import InvalidArgument
from zriver.host.accounting import usage_report
from zriver.runner import gpus
from zriver.sweep import expand


@pytest.mark.parametrize("command, count, first, last", [
    (["x"], 1, ["x"], ["x"]),
    (["x", "span:{1..3}"], 3, ["x", "1"], ["x", "3"]),
    (["x", "span:{3..1}"], 3, ["x", "3"], ["x", "1"]),
    (["x", "span:[a,b]", "span:{1..2}"], 4, ["x", "a", "1"], ["x", "b", "2"]),
    (["x", "--s=span:{1..2}/span:[p,q]"], 4, ["x", "--s=1/p"], ["x", "--s=2/q"]),
    (["python", "sim.py", "--seed", "span:{1..100}", "--lr", "span:[0.1,0.01]"], 200,
     ["python", "sim.py", "--seed", "1", "--lr", "0.1"],
     ["python", "sim.py", "--seed", "100", "--lr", "0.01"]),
])
def test_expand(command, count, first, last):
    result = expand(command)
    assert (len(result), result[0], result[-1]) == (count, first, last)


@pytest.mark.parametrize("command", [["x", "span:{1..}"], ["x", "span:[a,,b]"], ["x", "span:oops"],
                                     ["x", "span:{1..1001}", "span:{1..1000}"]])
def test_expand_refuses(command):
    with pytest.raises(InvalidArgument):
        expand(command)


def _row(owner, node, cores, start, end, gpus=(), state="completed"):
    return {"owner": owner, "node": node, "state": state, "started_at": start, "finished_at": end,
            "spec": {"cores": cores}, "alloc": {"gpus": list(gpus)}}


def test_usage_sums_core_and_gpu_hours_inside_the_window():
    rows = [_row("alice", "n1", 2, 0, 3600), _row("alice", "n2", 1, 1800, None, gpus=(0, 1)),
            _row("bob", "n1", 4, -3600, 1800, state="failed")]
    by_user = usage_report(rows, since=0, now=3600, by="user")
    assert by_user == [
        {"user": "alice", "tasks": 2, "failed": 0, "core_hours": 2.5, "gpu_hours": 1.0},
        {"user": "bob", "tasks": 1, "failed": 1, "core_hours": 2.0, "gpu_hours": 0.0},
    ]
    by_node = usage_report(rows, since=0, now=3600, by="node")
    assert [r["node"] for r in by_node] == ["n1", "n2"]


class FakeNVML:
    """Just enough of pynvml for zriver.runner.gpus."""

    NVML_TEMPERATURE_GPU = 0

    def __init__(self, count: int) -> None:
        self.count = count

    def nvmlDeviceGetCount(self):
        return self.count

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetUUID(self, handle):
        return f"GPU-{handle}"

    def nvmlDeviceGetName(self, handle):
        return b"Fake H100"

    def nvmlDeviceGetMemoryInfo(self, handle):
        return type("M", (), {"total": 80 << 30, "used": handle << 30})()

    def nvmlDeviceGetUtilizationRates(self, handle):
        return type("U", (), {"gpu": 10 * handle})()

    def nvmlDeviceGetTemperature(self, handle, kind):
        return 40 + handle

    def nvmlDeviceGetPowerUsage(self, handle):
        return 100_000


@pytest.fixture
def fake_nvml(monkeypatch):
    fake = FakeNVML(2)
    monkeypatch.setitem(gpus._state, "ready", True)
    monkeypatch.setitem(gpus._state, "nvml", fake)
    return fake


def test_inventory_and_usage_from_nvml(fake_nvml):
    assert gpus.inventory() == [
        {"index": 0, "uuid": "GPU-0", "name": "Fake H100", "memory": 80 << 30},
        {"index": 1, "uuid": "GPU-1", "name": "Fake H100", "memory": 80 << 30},
    ]
    assert gpus.usage()[1] == {"index": 1, "uuid": "GPU-1", "utilization": 10,
                               "memory_used": 1 << 30, "temperature": 41, "power_watts": 100.0}


def test_no_driver_means_no_gpus(monkeypatch):
    monkeypatch.setitem(gpus._state, "ready", False)
    assert gpus.inventory() == [] and gpus.usage() == []


def test_a_gpu_nvml_stops_reporting_degrades_the_node(fake_nvml, make_cluster):
    """Registration lists NVML's GPUs; every heartbeat carries the uuids of the GPUs its usage
    figures come from, and a GPU gone from them degrades the node."""
    cluster = make_cluster({"n1": {"cores": 2}})
    client = cluster.client()
    node = client.call("node.list")["nodes"][0]
    assert [gpu["uuid"] for gpu in node["gpus"]] == ["GPU-0", "GPU-1"]
    sub = client.subscribe(["evt.node.n1"])
    try:
        fake_nvml.count = 1
        while node["state"] != "degraded":
            assert sub.poll(5000), "no node event"
            sub.recv_multipart()
            node = client.call("node.list")["nodes"][0]
        assert node["degraded"] == "GPU GPU-1 vanished"
    finally:
        sub.close(linger=0)
