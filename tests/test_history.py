"""Cluster usage history (``zriver.host.history``): the sampler driven with explicit times on a
real in-process cluster (no sleeps), its downsampling and pruning, and ``usage.history``."""

from __future__ import annotations

import pytest

from zriver.errors import InvalidArgument
from zriver.host import history as hist

T0 = 1_700_000_100.0
"""A fixed start, 100 s past a 15-minute boundary."""


def drive(cluster, times) -> int:
    """Sample at each of ``times`` on the cluster's loop; the table's row count after."""
    def run():
        for at in times:
            cluster.host.history.sample(at)
        return cluster.host.history.records.count()

    return cluster.call_soon(run)


def test_a_sample_is_the_schedulers_usage_over_counted_nodes(make_cluster):
    c = make_cluster({"n1": {"cores": 2, "memory": "4G", "gpus": 2}})
    task = c.submit(["sleep", "60"], cores=1, gpus=1, memory=1 << 30)
    c.wait_state(task, {"running"})
    row = c.call_soon(lambda: c.host.history.sample(T0 + 0.7))
    assert row == {"at": T0, "step": 60, "cores_used": 1, "cores_total": 2,
                   "memory_used": 1 << 30, "memory_total": 4 << 30, "gpus_used": 1,
                   "gpus_total": 2}
    c.client().call("task.kill", {"id": task})
    c.wait(task)
    reply = c.client().call("usage.history", {"since": 0})
    assert reply["samples"] == [row] and reply["step"] is None


def test_old_minutes_become_quarter_hours_and_the_oldest_go(cluster):
    minutes = [T0 + 60 * i for i in range(50 * 60)]  # 50 hours of samples
    rows = drive(cluster, minutes)
    now = minutes[-1]
    samples = cluster.client().call("usage.history", {"since": 0})["samples"]
    assert len(samples) == rows <= hist.MAX_FINE_ROWS
    coarse = [s for s in samples if s["step"] == 900]
    fine = [s for s in samples if s["step"] == 60]
    assert coarse and all(s["at"] % 900 == 0 for s in coarse)
    assert len({s["at"] for s in coarse}) == len(coarse)  # each interval made once
    assert coarse[-1]["at"] + 900 <= fine[0]["at"]  # no overlap between the two
    assert now - fine[0]["at"] <= hist.FINE_KEPT + 900
    assert all(s["cores_total"] == 2 and s["cores_used"] == 0 for s in samples)
    rows = drive(cluster, [now + 31 * 86400])  # a month later: every old row is gone
    assert rows <= 1


def test_rows_stay_bounded_when_the_clock_goes_back(cluster):
    drive(cluster, [T0 + 60 * i for i in range(100)])
    rows = drive(cluster, [T0 - 86400 * 3 + 60 * i for i in range(hist.MAX_FINE_ROWS + 50)])
    assert rows <= hist.MAX_FINE_ROWS + 100


def test_history_averages_into_steps_and_checks_them(cluster):
    drive(cluster, [T0 - 100 + 60 * i for i in range(30)])
    client = cluster.client()
    reply = client.call("usage.history", {"since": T0, "step": 600})
    assert reply["step"] == 600 and all(s["at"] % 600 == 0 for s in reply["samples"])
    assert all(s["step"] == 600 and s["cores_total"] == 2 for s in reply["samples"])
    with pytest.raises(InvalidArgument, match="at least 60"):
        client.call("usage.history", {"step": 10})


def test_average_is_the_mean_per_interval():
    rows = [{"at": at, **dict.fromkeys(hist.FIELDS, used)}
            for at, used in ((900, 1), (960, 3), (1800, 4))]
    averaged = hist.average(rows, 900)
    assert [(r["at"], r["cores_used"], r["step"]) for r in averaged] == [(900, 2, 900),
                                                                         (1800, 4, 900)]


def test_cluster_usage_counts_only_nodes_that_offer_something():
    nodes = [{"state": state, **dict.fromkeys(hist.FIELDS, 1)}
             for state in ("online", "degraded", "unreachable", "offline")]
    assert hist.cluster_usage(nodes) == dict.fromkeys(hist.FIELDS, 3)
