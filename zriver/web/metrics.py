"""``/metrics``: the host's state in Prometheus's text exposition format (version 0.0.4).

``render(host)`` reads the running host (on its event loop; no I/O but one indexed row of
the store) and returns the whole page: for each metric a ``# HELP`` and a ``# TYPE`` line,
then its samples, one per line, ``name{label="value",...} number``. Label values are escaped
(backslash, double quote, newline). Every state label is always present (0 when empty), so a
series never vanishes.

Metrics (all prefixed ``zriver_``):

* ``nodes{state}``, ``nodes_drained``: nodes by state (online, degraded, unreachable,
  offline), drained ones;
* ``tasks{state}``: unfinished tasks by state; ``tasks_finished_total{state}``: tasks that
  reached each final state since the host started;
* ``queue_length``: tasks waiting for resources; ``queue_oldest_wait_seconds``: how long the
  longest-queued of them has waited since its submission (0 with an empty queue);
* ``node_cores``, ``node_cores_used``, ``node_memory_bytes``, ``node_memory_used_bytes``,
  ``node_gpus``, ``node_gpus_used`` ``{node}``: each node's capacity and what the scheduler
  holds on it;
* ``request_duration_seconds{op}`` (histogram): a request's arrival to its answer leaving
  the host, per op (``zriver.host.latency``);
* ``dispatch_duration_seconds`` (histogram): a task's submission to its ``running`` event;
* ``relay_streams_open``, ``relay_streams_total``, ``relay_bytes_total{direction}``: the
  SSH relay's bridged streams and bytes (``in``: client -> task, ``out``); 0 with no relay;
* ``host_start_time_seconds``: when the host started (Unix time).
"""

from __future__ import annotations

import math
import time
from typing import Any, Iterable

from zriver import lifecycle as lc
from zriver.host.history import node_usage
from zriver.host.latency import FINAL_STATES, Histogram

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The ``Content-Type`` of the page."""
NODE_STATES = ("online", "degraded", "unreachable", "offline")
LIVE_STATES = (lc.PENDING, lc.ASSIGNED, lc.RUNNING, lc.PAUSED, lc.UNREACHABLE)
PREFIX = "zriver_"
NODE_GAUGES = (("cores", "cores_total", "CPU cores the node offers"),
               ("cores_used", "cores_used", "CPU cores held for tasks on the node"),
               ("memory_bytes", "memory_total", "Memory the node offers (bytes)"),
               ("memory_used_bytes", "memory_used", "Memory held for tasks on the node (bytes)"),
               ("gpus", "gpus_total", "GPUs the node offers"),
               ("gpus_used", "gpus_used", "GPUs held for tasks on the node"))

Sample = tuple[str, dict[str, str], float]
"""``(name suffix, labels, value)`` of one line."""


def render(host: Any, now: float | None = None) -> str:
    """The whole ``/metrics`` page of ``host`` (a started ``Host``) at wall time ``now``."""
    now = time.time() if now is None else now
    nodes = node_usage(host.core)
    parts = [
        family("nodes", "gauge", "Nodes by state", [
            ("", {"state": s}, sum(n["state"] == s for n in nodes)) for s in NODE_STATES]),
        family("nodes_drained", "gauge", "Drained nodes (take no new tasks)",
               [("", {}, sum(n["drained"] for n in nodes))]),
        *task_families(host),
        *queue_families(host, now),
        *node_families(nodes),
        histogram_family("request_duration_seconds", "Time from a request's arrival to its "
                         "answer leaving the host, per op",
                         [({"op": op}, h) for op, h in sorted(host.latency.requests.items())]),
        histogram_family("dispatch_duration_seconds", "Time from a task's submission to its "
                         "running event", [({}, host.latency.dispatch)]),
        *relay_families(host),
        family("host_start_time_seconds", "gauge", "When the host started (Unix time)",
               [("", {}, host.started_at)]),
    ]
    return "".join(parts)


# ---- the families ----------------------------------------------------------------------------
def task_families(host: Any) -> list[str]:
    """``tasks{state}`` (live tasks) and ``tasks_finished_total{state}``."""
    counts = dict.fromkeys(LIVE_STATES, 0)
    for task in host.core.tasks.values():
        counts[task.state] = counts.get(task.state, 0) + 1
    finished = host.latency.finished
    return [family("tasks", "gauge", "Unfinished tasks by state",
                   [("", {"state": s}, n) for s, n in counts.items()]),
            family("tasks_finished_total", "counter", "Tasks that reached each final state "
                   "since the host started",
                   [("", {"state": s}, finished.get(s, 0)) for s in FINAL_STATES])]


def queue_families(host: Any, now: float) -> list[str]:
    """``queue_length`` and ``queue_oldest_wait_seconds``."""
    scheduler = host.core.scheduler
    oldest = min((req.task_id for req in scheduler.queued()), default=None)
    row = host.store.get_task(oldest) if oldest is not None else None
    wait = max(0.0, now - row["submitted_at"]) if row is not None else 0.0
    return [family("queue_length", "gauge", "Tasks waiting for resources",
                   [("", {}, scheduler.pending_count)]),
            family("queue_oldest_wait_seconds", "gauge", "How long the longest-queued task "
                   "has waited since its submission", [("", {}, wait)])]


def node_families(nodes: list[dict[str, Any]]) -> list[str]:
    """Each node's capacity and use (``NODE_GAUGES``)."""
    return [family(f"node_{name}", "gauge", text,
                   [("", {"node": n["name"]}, n[field]) for n in nodes])
            for name, field, text in NODE_GAUGES]


def relay_families(host: Any) -> list[str]:
    """The SSH relay's streams and bytes (zeros when the relay is off)."""
    traffic = getattr(host.relay, "traffic", None)

    def value(attr: str) -> int:
        return getattr(traffic, attr, 0)

    return [family("relay_streams_open", "gauge", "Streams the SSH relay bridges now",
                   [("", {}, value("open"))]),
            family("relay_streams_total", "counter", "Streams the SSH relay opened since "
                   "the host started", [("", {}, value("opened"))]),
            family("relay_bytes_total", "counter", "Bytes the SSH relay moved since the host "
                   "started (in: client to task)",
                   [("", {"direction": "in"}, value("bytes_in")),
                    ("", {"direction": "out"}, value("bytes_out"))])]


# ---- the format ------------------------------------------------------------------------------
def family(name: str, kind: str, help_text: str, samples: Iterable[Sample]) -> str:
    """One metric family: ``# HELP``, ``# TYPE``, then a line per sample."""
    full = PREFIX + name
    lines = [f"# HELP {full} {escape_help(help_text)}", f"# TYPE {full} {kind}"]
    lines += [line(full + suffix, labels, value) for suffix, labels, value in samples]
    return "\n".join(lines) + "\n"


def histogram_family(name: str, help_text: str,
                     histograms: Iterable[tuple[dict[str, str], Histogram]]) -> str:
    """A histogram family: per label set, cumulative ``_bucket{le}``, ``_sum``, ``_count``."""
    samples: list[Sample] = []
    for labels, histogram in histograms:
        for bound, count in histogram.cumulative():
            samples.append(("_bucket", {**labels, "le": number(bound)}, count))
        samples.append(("_sum", labels, histogram.sum))
        samples.append(("_count", labels, histogram.count))
    return family(name, "histogram", help_text, samples)


def line(name: str, labels: dict[str, str], value: float) -> str:
    if not labels:
        return f"{name} {number(value)}"
    inner = ",".join(f'{key}="{escape_label(str(val))}"' for key, val in labels.items())
    return f"{name}{{{inner}}} {number(value)}"


def number(value: float) -> str:
    """A sample value as Prometheus writes it: integers plain, ``+Inf``, ``NaN``."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")
