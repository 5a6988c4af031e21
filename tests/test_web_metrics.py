"""``/metrics`` (``zriver.web.metrics.render``) against a real in-process cluster, parsed line
by line; the latency histograms (``zriver.host.latency``); the relay's byte counter."""

from __future__ import annotations

import re
import urllib.error
import urllib.request

import pytest

from zriver.host.latency import Histogram, Latency
from zriver.web.metrics import render

SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)'
                    r'(?:\{(?P<labels>(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*",?)*)\})?'
                    r' (?P<value>[-+]?(?:[0-9.e+-]+|Inf|NaN))$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
KINDS = {"counter", "gauge", "histogram", "summary", "untyped"}


def parse(text: str) -> dict[tuple[str, frozenset], float]:
    """Every line checked: HELP then TYPE before a family's samples, samples well formed and
    of a declared family, histogram buckets cumulative up to ``+Inf`` == ``_count``."""
    assert text.endswith("\n")
    helped, typed, samples = set(), {}, {}
    for line in text.rstrip("\n").split("\n"):
        if line.startswith("# HELP "):
            name = line.split(" ")[2]
            assert name not in helped, line
            helped.add(name)
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name in helped and name not in typed and kind in KINDS, line
            typed[name] = kind
        else:
            match = SAMPLE.match(line)
            assert match, f"malformed line {line!r}"
            name = match["name"]
            family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in typed else name
            assert family in typed, f"{line!r} has no TYPE"
            labels = frozenset(LABEL.findall(match["labels"] or ""))
            assert (name, labels) not in samples, f"duplicate {line!r}"
            samples[(name, labels)] = float(match["value"])
    check_histograms(samples, [n for n, k in typed.items() if k == "histogram"])
    return samples


def check_histograms(samples: dict, names: list[str]) -> None:
    for name in names:
        series: dict[frozenset, list[tuple[float, float]]] = {}
        for (sample, labels), value in samples.items():
            if sample == f"{name}_bucket":
                le = dict(labels)["le"]
                rest = frozenset(kv for kv in labels if kv[0] != "le")
                series.setdefault(rest, []).append((float(le), value))
        for labels, buckets in series.items():
            counts = [count for _, count in sorted(buckets)]
            assert counts == sorted(counts) and sorted(buckets)[-1][0] == float("inf")
            assert counts[-1] == samples[(f"{name}_count", labels)]


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(f"zriver_{name}", frozenset(labels.items()))]


def metrics(cluster, now: float | None = None) -> dict:
    return parse(cluster.call_soon(lambda: render(cluster.host, now)))


@pytest.fixture
def gpu_cluster(make_cluster):
    return make_cluster({"n1": {"cores": 2, "memory": "4G", "gpus": 2}})


def test_an_idle_cluster_is_described(gpu_cluster):
    samples = metrics(gpu_cluster)
    assert value(samples, "nodes", state="online") == 1
    assert value(samples, "nodes", state="offline") == 0
    assert value(samples, "node_cores", node="n1") == 2
    assert value(samples, "node_memory_bytes", node="n1") == 4 << 30
    assert value(samples, "node_gpus", node="n1") == 2
    assert value(samples, "node_cores_used", node="n1") == 0
    assert value(samples, "tasks", state="running") == 0
    assert value(samples, "queue_length") == 0 and value(samples, "queue_oldest_wait_seconds") == 0
    assert value(samples, "relay_bytes_total", direction="in") == 0
    assert value(samples, "dispatch_duration_seconds_count") == 0


def test_submitted_running_queued_and_finished_tasks_show(gpu_cluster):
    c = gpu_cluster
    big = c.submit(["sleep", "60"], cores=1, gpus=1, memory=1 << 30)
    c.wait_state(big, {"running"})
    queued = c.submit(["true"], cores=2)
    row = c.task(queued)
    samples = metrics(c, now=row["submitted_at"] + 7.5)
    assert value(samples, "tasks", state="running") == 1
    assert value(samples, "tasks", state="pending") == 1
    assert value(samples, "queue_length") == 1
    assert value(samples, "queue_oldest_wait_seconds") == 7.5
    assert value(samples, "node_cores_used", node="n1") == 1
    assert value(samples, "node_gpus_used", node="n1") == 1
    assert value(samples, "node_memory_used_bytes", node="n1") == 1 << 30
    assert value(samples, "dispatch_duration_seconds_count") == 1
    assert 0 < value(samples, "dispatch_duration_seconds_sum") < 10
    assert value(samples, "request_duration_seconds_count", op="task.submit") == 2
    c.client().call("task.kill", {"id": big})
    c.wait(big, queued)
    samples = metrics(c)
    assert value(samples, "tasks_finished_total", state="killed") == 1
    assert value(samples, "tasks_finished_total", state="completed") == 1
    assert value(samples, "tasks", state="running") == 0 and value(samples, "queue_length") == 0
    assert value(samples, "dispatch_duration_seconds_count") == 2
    assert value(samples, "node_cores_used", node="n1") == 0


def test_relay_traffic_and_label_escaping(cluster):
    def poke():
        traffic = cluster.host.relay.traffic
        traffic.opened, traffic.open, traffic.bytes_in, traffic.bytes_out = 3, 1, 10, 2048
        cluster.host.latency.begin(object(), "no.such\"op")
        return render(cluster.host)

    samples = parse(cluster.call_soon(poke))
    assert value(samples, "relay_streams_total") == 3 and value(samples, "relay_streams_open") == 1
    assert value(samples, "relay_bytes_total", direction="out") == 2048


def test_the_web_server_serves_it_to_a_token_only(cluster):
    token = cluster.client().call("token.create", {"role": "user"})["token"]
    url = cluster.host.endpoints["web"] + "/metrics"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=10)
    assert refused.value.code == 401
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        samples = parse(response.read().decode())
    assert value(samples, "nodes", state="online") == 1
    assert value(samples, "request_duration_seconds_count", op="token.create") == 1


def test_histogram_buckets_are_cumulative_and_le_inclusive():
    histogram = Histogram([0.1, 1.0])
    for sample in (0.05, 0.1, 0.5, 3.0):
        histogram.observe(sample)
    assert histogram.cumulative() == [(0.1, 2), (1.0, 3), (float("inf"), 4)]
    assert histogram.count == 4 and histogram.sum == pytest.approx(3.65)


def test_latency_counts_answers_when_sent_and_unknown_ops_apart():
    latency = Latency({"task.get"})
    first, second = object(), object()
    latency.begin(first, "task.get", at=1.0)
    latency.begin(second, "made.up", at=1.0)
    latency.answered(first)
    latency.sent(at=1.25)
    assert latency.requests["task.get"].sum == 0.25 and "unknown" not in latency.requests
    latency.answered(second)
    latency.sent(at=2.0)
    assert latency.requests["unknown"].count == 1


def test_dispatch_counts_submit_to_running_once_per_attempt():
    latency = Latency(set())
    latency.task_event({"id": 1, "state": "running", "passed": ["pending", "assigned"]}, 5.0)
    assert latency.dispatch.count == 1 and latency.dispatch.sum == 0.0
    latency.task_event({"id": 2, "state": "pending", "passed": []}, 1.0)
    latency.task_event({"id": 2, "state": "assigned", "passed": []}, 2.0)
    latency.task_event({"id": 2, "state": "completed", "passed": ["running"]}, 4.0)
    assert latency.dispatch.count == 2 and latency.dispatch.sum == 3.0
    assert latency.finished["completed"] == 1
    latency.task_event({"id": 3, "state": "running", "passed": []}, 9.0)  # pending unseen
    assert latency.dispatch.count == 2
