#!/usr/bin/env python
"""History benchmark: a host over a store of 1,000,000 finished tasks against an empty one.

    python bench/history.py [--tasks 1000000] [--baseline-tasks 200] [--rounds 3]
                            [--submits 200] [--lists 30] [--usages 5] [--prune-tasks 100000]
                            [--json FILE]

Builds a host store with ``--tasks`` finished tasks and their four events each (submitted,
assigned, running, final), written straight with SQL in one transaction (``executemany``),
shaped as ``handlers.submit`` and ``dispatch`` write them: sweeps of 1,000 tasks under one
batch id, a packed spec and allocation per task, finished over the last 150 days (inside the
default retention, so the host's pruning never runs during the measurement), and a baseline
store with ``--baseline-tasks`` of the same (200: one default page of ``task.list``, so both
listings answer a full page and the ratio shows what the history costs, not a shorter reply;
0 for an empty store). Then, in interleaved rounds, starts a real host (``python -m zriver
host``, ``security = "none"``, ephemeral ports, no runner) on each store in turn and
measures:

* start: seconds from launching the process until it answers ``cluster.hello`` (the
  interpreter, the imports, the store's migrations, ``HostCore.load``, binding), and, after
  the rounds, ``Host.start()`` alone in this process (median of 3, interleaved; what the
  store costs, without the interpreter's noise; both stores then hold the same pending
  tasks, those the submits made, which the start loads);
* submit: single-task ``task.submit`` round trips (``--submits`` a round; the tasks stay
  pending: no runner), p50 and p90, and the host's CPU time per submit (from /proc);
* list: ``task.list`` with its default page (the ``zriver tasks`` call), p50 and p90;
* usage (the big store only, not in the ratios): ``usage.report`` over the last 7 days (what
  ``zriver usage`` asks by default), p50 of ``--usages`` calls: its cost follows the tasks
  that ran in the window (about 47,000 here), not the history; and the p50 of single-task
  submits made from another client meanwhile (the report is read off the host's loop).

The ratios big/empty (median of the per-round ratios) are what the issue bounds (within 1.5x).
Then, in this process, ``--prune-tasks`` tasks finished 200 days ago are pruned by
``zriver.host.retention`` (roll-up + delete, ``BATCH`` a batch) from a store of their own: tasks
pruned per second and the longest batch (the longest the host's loop is held by a prune).

Bounded: every wait has a timeout and the hosts are stopped with SIGTERM (SIGKILL if they
linger) and the temporary directory removed, also when the benchmark fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import zriver
from zriver.client.api import Client
from zriver.config import HostSettings
from zriver.host.model import allocation_to_wire
from zriver.host.retention import BATCH, Retention
from zriver.host.scheduler import Allocation
from zriver.host.service import Host
from zriver.host.store import Store, pack
from zriver.spec import TaskSpec

DAY = 86400.0
SWEEP = 1000
OWNERS = ("alice", "bob", "carol", "dave")
NODES = tuple(f"n{i}" for i in range(1, 21))
ROOT = str(Path(zriver.__file__).resolve().parent.parent)


def migrations(data_dir: Path) -> list:
    """The full migration list of a host (core and every extension)."""
    return Host(HostSettings(data_dir=str(data_dir), security="none")).migrations


def rows_of(first: int, count: int, end: float, span: float) -> tuple[list, list]:
    """``count`` finished tasks from id ``first`` (and their events), ending within ``span``
    seconds before ``end``."""
    tasks, events = [], []
    step = span / max(count, 1)
    for index in range(count):
        task_id = first + index
        batch = first + index // SWEEP * SWEEP
        owner, node = OWNERS[task_id % len(OWNERS)], NODES[task_id % len(NODES)]
        cores, gpus = 1 + task_id % 4, task_id % 5 == 0
        spec = TaskSpec(["python", "train.py", "--seed", str(task_id), "--lr", "0.01"],
                        name="sweep", cores=cores, gpus=int(gpus), owner=owner).to_wire()
        alloc = allocation_to_wire(Allocation(node, tuple(range(cores)), None,
                                              (0,) if gpus else (), None))
        finished = end - span + index * step
        started = finished - 60.0 - task_id % 3600
        submitted = started - 5.0
        state = "failed" if task_id % 17 == 0 else "completed"
        tasks.append((task_id, "sweep", owner, state, node, pack(spec), pack(alloc),
                      1 if state == "failed" else 0, "", submitted, started, finished, batch))
        events += [(task_id, "pending", submitted, "submitted"),
                   (task_id, "assigned", submitted + 0.01, f"on {node}"),
                   (task_id, "running", started, ""),
                   (task_id, state, finished, "" if state == "completed" else "exit code 1")]
    return tasks, events


def build(path: Path, count: int, end: float, span: float) -> float:
    """A store at ``path`` with ``count`` finished tasks; seconds it took."""
    began = time.perf_counter()
    store = Store(path, migrations(path.parent))
    conn = store.conn
    with conn:
        for first in range(1, count + 1, 100_000):
            tasks, events = rows_of(first, min(100_000, count + 1 - first), end, span)
            conn.executemany(
                "INSERT INTO tasks(id, name, owner, state, node, spec, alloc, exit_code, detail,"
                " submitted_at, started_at, finished_at, batch_id) VALUES "
                "(?,?,?,?,?,?,?,?,?,?,?,?,?)", tasks)
            conn.executemany("INSERT INTO task_events(task_id, state, at, detail) "
                             "VALUES (?,?,?,?)", events)
    store.close()
    return time.perf_counter() - began


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class HostProc:
    """A ``zriver host`` process on ``data_dir``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        config = data_dir.parent / f"{data_dir.name}.toml"
        config.write_text(f'data_dir = "{data_dir}"\nsecurity = "none"\nrouter_port = 0\n'
                          f'xsub_port = 0\nxpub_port = 0\nstream_port = 0\nrelay_port = -1\n'
                          f'web_port = -1\n')
        env = {**os.environ, "PYTHONPATH": ROOT, "ZRIVER_HOME": str(data_dir.parent)}
        self.log = open(data_dir.parent / f"{data_dir.name}.log", "wb")
        self.launched = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "zriver", "host", "--config",
                                      str(config)], stdout=self.log, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)
        self.client: Client | None = None
        self.started = 0.0

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Seconds from launch until the host answers ``cluster.hello``."""
        endpoints = self.data_dir / "endpoints.json"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the host on {self.data_dir} exited: see {self.log.name}")
            try:
                info = json.loads(endpoints.read_text())
                if info.get("pid") == self.proc.pid:
                    self.client = Client(info["router"], timeout=30)
                    self.client.call("cluster.hello")
                    self.started = time.perf_counter() - self.launched
                    return self.started
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.02)
        raise RuntimeError(f"the host on {self.data_dir} did not start in {timeout:g} s")

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()


def timed(call, count: int) -> list[float]:
    values = []
    for _ in range(count):
        began = time.perf_counter()
        call()
        values.append(time.perf_counter() - began)
    return values


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(host: HostProc, submits: int, lists: int) -> dict[str, float]:
    client = host.client
    submit = {"tasks": [{"command": ["true"], "name": "bench"}]}
    cpu = cpu_seconds(host.proc.pid)
    submit_times = timed(lambda: client.call("task.submit", submit), submits)
    cpu = (cpu_seconds(host.proc.pid) - cpu) / submits
    list_times = timed(lambda: client.call("task.list", {}), lists)
    return {"submit_p50_ms": 1000 * statistics.median(submit_times),
            "submit_p90_ms": 1000 * percentile(submit_times, 0.9),
            "submit_cpu_us": 1e6 * cpu,
            "list_p50_ms": 1000 * statistics.median(list_times),
            "list_p90_ms": 1000 * percentile(list_times, 0.9)}


def inprocess_start(data_dir: Path, times: int = 3) -> float:
    """Median milliseconds of ``Host.start()`` on ``data_dir`` (in this process, no runner)."""
    settings = HostSettings(data_dir=str(data_dir), security="none", router_port=0,
                            xsub_port=0, xpub_port=0, stream_port=0, relay_port=-1,
                            web_port=-1)

    async def once() -> float:
        host = Host(settings)
        began = time.perf_counter()
        await host.start()
        took = time.perf_counter() - began
        await host.stop()
        return took

    return 1000 * statistics.median(asyncio.run(once()) for _ in range(times))


def measure_usage(host: HostProc, count: int) -> dict[str, float]:
    """p50 milliseconds of ``usage.report`` since 7 days ago, and of single-task submits
    made meanwhile from another client (the report is read off the host's loop)."""
    body = {"since": time.time() - 7 * DAY, "by": "user"}
    usage: list[float] = []

    def report() -> None:
        with Client(host.client.endpoint, timeout=120) as client:
            usage.extend(timed(lambda: client.call("usage.report", body), count))

    asker = threading.Thread(target=report)
    asker.start()
    submit = {"tasks": [{"command": ["true"], "name": "bench"}]}
    during: list[float] = []
    deadline = time.monotonic() + 600
    while asker.is_alive() and time.monotonic() < deadline:
        during += timed(lambda: host.client.call("task.submit", submit), 1)
    asker.join(600)
    return {"usage_7d_ms": 1000 * statistics.median(usage),
            "submit_p50_during_usage_ms": 1000 * statistics.median(during or [0.0])}


def measure_prune(root: Path, count: int) -> dict[str, float]:
    """Prune ``count`` tasks finished 200 days ago with ``Retention`` on a bare store (each
    batch committed, as the host's tick does)."""
    path = root / "prune" / "host.db"
    path.parent.mkdir()
    build(path, count, time.time() - 200 * DAY, 10 * DAY)
    store = Store(path, migrations(path.parent))
    pauses: list[float] = []

    class BareHost:
        def __init__(self) -> None:
            self.store = store

        def begin(self) -> None:
            if not store.conn.in_transaction:
                store.conn.execute("BEGIN")

    retention = Retention(180 * DAY)
    mark = [time.perf_counter()]

    async def breathe() -> None:
        store.conn.execute("COMMIT")
        now = time.perf_counter()
        pauses.append(now - mark[0])
        await asyncio.sleep(0)
        mark[0] = time.perf_counter()

    async def run() -> int:
        retention.attach(BareHost())
        retention.breathe = breathe
        try:
            return await retention.prune(time.time())
        finally:
            await retention.close()

    began = time.perf_counter()
    pruned = asyncio.run(run())
    if store.conn.in_transaction:
        store.conn.execute("COMMIT")
    seconds = time.perf_counter() - began
    left = store.conn.execute("SELECT count(*) FROM tasks").fetchall()[0][0]
    rollups = retention.records.count()
    store.close()
    return {"pruned": pruned, "left": left, "seconds": seconds,
            "tasks_per_s": pruned / seconds, "batch_max_ms": 1000 * max(pauses or [0.0]),
            "batch_p50_ms": 1000 * statistics.median(pauses or [0.0]), "rollup_rows": rollups,
            "batch": BATCH}


def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="zriver-history-"))
    hosts: list[HostProc] = []
    try:
        (root / "big").mkdir()
        (root / "empty").mkdir()
        build(root / "empty" / "host.db", args.baseline_tasks, time.time(), 150 * DAY)
        build_s = build(root / "big" / "host.db", args.tasks, time.time(), 150 * DAY)
        print(f"built {args.tasks} finished tasks in {build_s:.1f} s "
              f"({(root / 'big' / 'host.db').stat().st_size / 2**20:.0f} MiB)", flush=True)
        rounds = []
        for index in range(args.rounds):
            round_: dict[str, Any] = {}
            for name in ("empty", "big"):
                host = HostProc(root / name)
                hosts.append(host)
                start = host.wait_ready()
                round_[name] = {"start_s": start, **measure(host, args.submits, args.lists)}
                if name == "big" and args.usages:
                    round_["usage"] = measure_usage(host, args.usages)
                host.stop()
                hosts.remove(host)
            rounds.append(round_)
            print(f"round {index + 1}: " + json.dumps(round_), flush=True)
        keys = rounds[0]["empty"].keys()
        ratios = {key: statistics.median(r["big"][key] / r["empty"][key] for r in rounds)
                  for key in keys}
        medians = {name: {key: statistics.median(r[name][key] for r in rounds) for key in keys}
                   for name in ("empty", "big")}
        starts: dict[str, list[float]] = {"empty": [], "big": []}
        for _ in range(3):  # interleaved
            for name in starts:
                starts[name].append(inprocess_start(root / name, 1))
        inproc = {name: statistics.median(values) for name, values in starts.items()}
        medians["empty"]["host_start_ms"] = inproc["empty"]
        medians["big"]["host_start_ms"] = inproc["big"]
        ratios["host_start_ms"] = inproc["big"] / inproc["empty"]
        prune = measure_prune(root, args.prune_tasks) if args.prune_tasks else None
        usage = [r["usage"] for r in rounds if "usage" in r]
        return {"usage": {key: statistics.median(u[key] for u in usage) for key in usage[0]}
                if usage else None,
                "tasks": args.tasks, "baseline_tasks": args.baseline_tasks, "build_s": build_s, "rounds": rounds, "median": medians,
                "ratio_big_over_empty": ratios, "prune": prune}
    finally:
        for host in hosts:
            host.stop()
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--baseline-tasks", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--submits", type=int, default=200)
    parser.add_argument("--lists", type=int, default=30)
    parser.add_argument("--usages", type=int, default=5)
    parser.add_argument("--prune-tasks", type=int, default=100_000)
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    result = run(args)
    ratios, medians = result["ratio_big_over_empty"], result["median"]
    print(f"\n{'':16}{'empty':>10}{'big':>10}{'big/empty':>11}")
    for key in ratios:
        print(f"{key:16}{medians['empty'][key]:10.2f}{medians['big'][key]:10.2f}"
              f"{ratios[key]:10.2f}x")
    if result["usage"] is not None:
        u = result["usage"]
        print(f"\nusage.report since 7d on the big store: {u['usage_7d_ms']:.0f} ms; single "
              f"submits meanwhile: p50 {u['submit_p50_during_usage_ms']:.2f} ms")
    if result["prune"]:
        p = result["prune"]
        print(f"\nprune: {p['pruned']} tasks in {p['seconds']:.1f} s ({p['tasks_per_s']:.0f}/s), "
              f"batch p50 {p['batch_p50_ms']:.1f} ms, max {p['batch_max_ms']:.1f} ms, "
              f"{p['rollup_rows']} roll-up rows")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
