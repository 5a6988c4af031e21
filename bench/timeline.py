#!/usr/bin/env python
"""Where a lone task's time goes: submit -> completed, step by step, across the processes.

    python bench/timeline.py [--samples 300] [--cluster embedded] [--cores 1] [--json out.json]

Starts one cluster as ``bench/dispatch.py`` does (same configs, ephemeral ports, the trivial
command ``true``), with a ``sitecustomize`` module on the roles' ``PYTHONPATH`` (the node's
keeper inherits it) that wraps the functions on a task's path (``POINTS``) as their modules are
imported (``zriver.importhooks``), records ``time.perf_counter`` (CLOCK_MONOTONIC: one clock
for every process of the machine) at their entry or return, and writes the records when the
process exits. The client records when it sends each submit and when the reply and the final
event arrive. For each sample, each step is the first record of its point after the step
before; the table shows, per step, the median time since the submit was sent and the median of
the gaps from the step before. Recording costs ~1 us a point (about 25 a task), which the
figures include.

``TMPDIR=/dev/shm`` puts the logs and stores on tmpfs (see ``bench/dispatch.py``). Bounded:
every wait has a timeout, the roles are stopped and the temporary directory removed.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]

import dispatch  # noqa: E402 (the cluster and client of the dispatch benchmark)

POINTS = [
    # (module, function, "enter" or "return", label)
    ("zriver.host.service", "Host._on_envelope", "enter", "host: a message decoded"),
    ("zriver.host.core", "HostCore.handle", "enter", "host: the core handles the submit"),
    ("zriver.host.core", "HostCore.handle", "return", "host: the core has answered"),
    ("zriver.host.service", "Host._on_envelope", "return", "host: effects carried out"),
    ("zriver.host.service", "Host.flush", "enter", "host: the tick starts (schedule)"),
    ("zriver.host.store", "Store.write_pending", "enter", "host: the tick's writes"),
    ("zriver.host.service", "Host._runner_messages", "enter", "host: committed"),
    ("zriver.inproc", "InProcessLink.hand_over", "enter", "host: starts handed to the agent"),
    ("zriver.runner.agent", "Runner._start_task", "enter", "agent: the start"),
    ("zriver.runner.backends.native", "NativeBackend._send_packet", "enter",
     "agent: the spawn sent to the keeper"),
    ("selectors", "EpollSelector.select", "return", "keeper: woken (the spawn)"),
    ("zriver.runner.spawn", "Spawner.spawn", "return", "keeper: posix_spawn returned"),
    ("selectors", "EpollSelector.select", "return", "keeper: woken (the exit)"),
    ("os", "waitpid", "return", "keeper: reaped"),
    ("zriver.runner.backends.native", "NativeBackend._on_readable", "enter",
     "agent: the keeper's exit read"),
    ("zriver.runner.agent", "Runner._on_exit", "enter", "agent: the end"),
    ("zriver.runner.agent", "Runner._send_next_batch", "enter", "agent: the update sent"),
    ("zriver.inproc", "InProcessLink._hand_to_host", "enter", "host: the update arrives"),
    ("zriver.host.core", "HostCore.handle", "enter", "host: the core handles it"),
    ("zriver.host.service", "Host.flush", "enter", "host: the tick starts"),
    ("zriver.host.service", "Host._runner_messages", "enter", "host: committed"),
    ("zriver.host.service", "Host._send", "enter", "host: events being sent"),
    ("zriver.host.service", "Host.flush", "return", "host: the tick is over"),
]
"""The path of a task under ``zriver up``, in order (the split cluster has no in-process
hand-over: its steps after the host's commit match the runner process's own records)."""

SITECUSTOMIZE = '''
import os, sys
_DIR = os.environ.get("ZRIVER_TIMELINE")
if _DIR:
    import atexit, functools, time
    _records, _clock = [], time.perf_counter
    _points = {points!r}

    def _dump():
        with open(os.path.join(_DIR, f"{{os.getpid()}}.tsv"), "w") as out:
            out.writelines(f"{{at:.7f}}\\t{{label}}\\n" for label, at in _records)

    atexit.register(_dump)

    def _wrap(owner, name, when, label):
        original = getattr(owner, name)

        @functools.wraps(original)
        def traced(*args, **kwargs):
            if when == "enter":
                _records.append((label, _clock()))
            result = original(*args, **kwargs)
            if when == "return" and (result or name != "select"):
                _records.append((label, _clock()))
            return result

        setattr(owner, name, traced)

    def _patch(module):
        for module_name, path, when in _points:
            if module_name == module.__name__:
                owner = module
                *parents, name = path.split(".")
                for parent in parents:
                    owner = getattr(owner, parent)
                _wrap(owner, name, when, f"{{module_name}}:{{path}}:{{when}}")

    from zriver.importhooks import when_imported

    for _name in sorted({{m for m, _, _ in _points}}):
        when_imported(_name, _patch)
'''


def steps(trace_dir: Path, samples: list[tuple[float, float, float]]) -> list[dict]:
    """Per sample (sent, reply after, final after): the time of each point's step."""
    records: dict[str, list[float]] = {}
    for path in trace_dir.glob("*.tsv"):
        for line in path.read_text().splitlines():
            at, label = line.split("\t", 1)
            records.setdefault(label, []).append(float(at))
    for times in records.values():
        times.sort()
    rows = []
    for sent, reply, final in samples:
        row, at = {}, sent
        for index, (module, path, when, _) in enumerate(POINTS):
            times = records.get(f"{module}:{path}:{when}", [])
            found = bisect.bisect_right(times, at)
            if found == len(times) or times[found] > sent + final:
                break
            at = times[found]
            row[index] = at - sent
        row["reply"], row["final"] = reply, final
        rows.append(row)
    return rows


def table(rows: list[dict]) -> list[dict]:
    """Median time since the submit and median gap from the previous step, per step."""
    out, previous = [], None
    for index, (*_, label) in enumerate(POINTS):
        have = [r for r in rows if index in r]
        if len(have) < len(rows) / 2:
            break
        since = statistics.median(r[index] for r in have)
        gap = statistics.median(r[index] - (r[previous] if previous is not None else 0.0)
                                for r in have if previous is None or previous in r)
        out.append({"step": label, "at_ms": since * 1e3, "gap_ms": gap * 1e3})
        previous = index
    for key, label in (("reply", "client: the submit's reply"),
                       ("final", "client: the completed event")):
        out.append({"step": label, "at_ms": statistics.median(r[key] for r in rows) * 1e3,
                    "gap_ms": None})
    return out


def run(args: argparse.Namespace) -> dict:
    root = Path(tempfile.mkdtemp(prefix="zriver-timeline-"))
    trace_dir, site = root / "trace", root / "site"
    trace_dir.mkdir()
    site.mkdir()
    hooks = sorted({point[:3] for point in POINTS})
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE.format(points=hooks))
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "ZRIVER_TIMELINE")}
    repo = str(Path(__file__).resolve().parent.parent)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(site), repo])
    os.environ["ZRIVER_TIMELINE"] = str(trace_dir)
    embedded, security = dispatch.CLUSTERS[args.cluster]
    cluster = dispatch.Cluster(root / "cluster", "none", None, security=security,
                               embedded=embedded)
    zr = None
    try:
        root.chmod(0o711)
        (root / "work").mkdir()
        deadline = dispatch.Deadline(args.max_seconds)
        cluster.start(deadline)
        zr = dispatch.Zriver(cluster, str(root / "work"))
        zr.spec["cores"] = args.cores
        zr.throughput(50, deadline)  # warm-up
        samples = []
        for _ in range(args.samples):
            sent = time.perf_counter()
            one = zr.one(min(30.0, deadline.left()))
            samples.append((sent, one["reply"], one["completed"]))
    finally:
        if zr is not None:
            zr.close()
        cluster.stop()  # the roles write their records as they exit
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(list(trace_dir.glob("*.tsv"))) < 2:
            time.sleep(0.05)  # the keeper exits (and writes) once its agent has gone
        return {"cluster": args.cluster, "samples": args.samples,
                "steps": table(steps(trace_dir, samples[5:]))}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def show(result: dict) -> str:
    lines = [f"a lone task through {result['cluster']} ({result['samples']} samples; medians)",
             f"{'step':<44}{'at (ms)':>9}{'gap (ms)':>10}"]
    for step in result["steps"]:
        gap = "" if step["gap_ms"] is None else f"{step['gap_ms']:.3f}"
        lines.append(f"{step['step']:<44}{step['at_ms']:>9.3f}{gap:>10}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--cluster", choices=sorted(dispatch.CLUSTERS), default="embedded")
    parser.add_argument("--cores", type=int, default=1, help="cores each task asks for")
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument("--json", help="also write the steps to this file")
    args = parser.parse_args(argv)
    if not 10 <= args.samples <= 5000:
        parser.error("--samples 10..5000")
    result = run(args)
    print(show(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
