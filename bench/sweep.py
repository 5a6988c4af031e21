#!/usr/bin/env python
"""Sweep benchmark: a big sweep accepted by the host, and dispatched as fast as a small one.

    python bench/sweep.py [--tasks 100000] [--head 2000] [--rounds 3] [--json out.json]

A real host and a real runner, each its own process (``bench/dispatch.py``'s ``Cluster``:
CURVE on, ephemeral ports on 127.0.0.1, runner ``cores = 2``), fresh for every measurement,
running the trivial command ``true span:{1..N}`` (``true`` ignores its argument). Rounds are
interleaved, each measuring:

* small: a ``--head``-task sweep; its dispatch rate is ``--head`` over the seconds from the
  submit's reply until ``task.wait`` says all are final (all must be ``completed``);
* big: a ``--tasks``-task sweep. ``accept``: seconds from the start of ``Client.submit_sweep``
  to its reply (the host has expanded, checked and committed every task by then), with the
  host's CPU seconds over that call; then the dispatch rate of its first ``--head`` tasks,
  measured like the small one's while the rest of the sweep waits in the queue;
* cli (round 1, on the big sweep's cluster): the wall time of ``zriver submit -- true
  span:{1..N}`` run as a person would (a new process: interpreter start, the submit, and
  the ``N`` ids printed), checked to print ``N`` ids.

The table shows medians over the rounds and the ratio big/small of the dispatch rates (the
median of the per-round ratios): 1.0 means a task of a 100,000-task sweep starts as fast as
one of a 2,000-task sweep; beside it the same ratio of the host's CPU time per dispatched
task, which other load on the machine disturbs much less than the rates. The machine may be
shared: compare ratios and CPU seconds, not absolute rates, between runs. Bounded: every wait has a timeout, ``--max-seconds`` bounds the
whole run; the roles are stopped and the temporary directory removed on every exit.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import shutil
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dispatch import (BenchError, Cluster, Deadline, cpu_seconds, machine,  # noqa: E402
                      run_and_report)

from zriver import lifecycle as lc  # noqa: E402


def sweep_spec(count: int, workdir: str) -> dict[str, Any]:
    return {"command": ["true", f"span:{{1..{count}}}"], "cores": 1, "workdir": workdir,
            "owner": "bench"}


def dispatch_seconds(cluster: Cluster, ids: list[int], deadline: Deadline) -> float:
    """Seconds until every task of ``ids`` is final (each must have completed)."""
    t0 = time.perf_counter()
    end = t0 + min(300.0, deadline.left())
    while True:
        reply = cluster.client.call("task.wait", {"ids": ids, "timeout": 30.0}, timeout=40.0)
        if reply["done"]:
            break
        if time.perf_counter() > end:
            raise BenchError(f"{len(ids)} tasks did not finish within 300 s")
    seconds = time.perf_counter() - t0
    failed = [t for t in reply["tasks"] if t["state"] != lc.COMPLETED]
    if failed:
        raise BenchError(f"{len(failed)} tasks did not complete, e.g. {failed[0]}")
    return seconds


def measure(root: Path, workdir: Path, count: int, head: int, cli: bool,
            deadline: Deadline) -> dict:
    """One cluster, one sweep of ``count`` tasks; the dispatch of its first ``head``."""
    cluster = Cluster(root, "none", None)
    try:
        root.chmod(0o711)
        cluster.start(deadline)
        cluster.client.timeout = 60.0
        host = cluster.pid("host")
        cpu0, t0 = cpu_seconds(host), time.perf_counter()
        reply = cluster.client.submit_sweep(sweep_spec(count, str(workdir)))
        accept, accept_cpu = time.perf_counter() - t0, cpu_seconds(host) - cpu0
        ids = reply["ids"]
        if len(ids) != count:
            raise BenchError(f"the sweep made {len(ids)} tasks, not {count}")
        cpu1 = cpu_seconds(host)
        seconds = dispatch_seconds(cluster, ids[:head], deadline)
        row = {"tasks": count, "accept_s": accept, "accept_host_cpu_s": accept_cpu,
               "head": head, "head_s": seconds, "head_rate": head / seconds,
               "head_host_cpu_per_task_us": (cpu_seconds(host) - cpu1) / head * 1e6}
        if cli:
            row["cli_s"] = run_cli(cluster, root, workdir, count, deadline)
        return row
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def run_cli(cluster: Cluster, root: Path, workdir: Path, count: int,
            deadline: Deadline) -> float:
    """Wall seconds of ``zriver submit`` of a ``count``-task sweep, as a person runs it."""
    env = dict(os.environ, ZRIVER_HOME=str(root))
    keys = cluster.client.keys
    flags = (["--key", str(root / "keys" / "client.key_secret"), f"--host-key={keys.server}"]
             if keys is not None else ["--key", "none"])
    command = [sys.executable, "-m", "zriver", "--host", cluster.endpoint, *flags, "submit",
               "--workdir", str(workdir), "--", "true", f"span:{{1..{count}}}"]
    t0 = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env,
                          timeout=min(120.0, deadline.left()))
    seconds = time.perf_counter() - t0
    if done.returncode != 0 or len(done.stdout.split()) != count:
        raise BenchError(f"zriver submit failed ({done.returncode}): {done.stderr[-2000:]}")
    return seconds


def run(args: argparse.Namespace) -> dict[str, Any]:
    deadline = Deadline(args.max_seconds)
    base = Path(tempfile.mkdtemp(prefix="zriver-bench-sweep-"))
    base.chmod(0o711)  # a root runner runs the tasks as its task_user: they enter work/
    workdir = base / "work"
    workdir.mkdir()
    rounds = []
    try:
        for number in range(1, args.rounds + 1):
            small = measure(base / f"small{number}", workdir, args.head, args.head, False,
                            deadline)
            big = measure(base / f"big{number}", workdir, args.tasks, args.head, number == 1,
                          deadline)
            row = {"round": number, "small": small, "big": big,
                   "ratio": big["head_rate"] / small["head_rate"]}
            rounds.append(row)
            print(f"round {number}: accept {big['accept_s']:.2f} s "
                  f"(host CPU {big['accept_host_cpu_s']:.2f} s), dispatch small "
                  f"{small['head_rate']:.0f}/s big {big['head_rate']:.0f}/s "
                  f"(ratio {row['ratio']:.2f})" + (f", cli {big['cli_s']:.2f} s"
                                                   if "cli_s" in big else ""), flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    med = lambda values: statistics.median(values)  # noqa: E731
    return {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "machine": machine(), "tasks": args.tasks, "head": args.head, "rounds": rounds,
            "summary": {
                "accept_s": med([r["big"]["accept_s"] for r in rounds]),
                "accept_host_cpu_s": med([r["big"]["accept_host_cpu_s"] for r in rounds]),
                "small_accept_s": med([r["small"]["accept_s"] for r in rounds]),
                "accept_us_per_task_ratio": med([
                    (r["big"]["accept_s"] / r["big"]["tasks"])
                    / (r["small"]["accept_s"] / r["small"]["tasks"]) for r in rounds]),
                "small_rate": med([r["small"]["head_rate"] for r in rounds]),
                "big_rate": med([r["big"]["head_rate"] for r in rounds]),
                "ratio": med([r["ratio"] for r in rounds]),
                "small_host_cpu_per_task_us": med(
                    [r["small"]["head_host_cpu_per_task_us"] for r in rounds]),
                "big_host_cpu_per_task_us": med(
                    [r["big"]["head_host_cpu_per_task_us"] for r in rounds]),
                "cpu_ratio": med([r["big"]["head_host_cpu_per_task_us"]
                                  / r["small"]["head_host_cpu_per_task_us"] for r in rounds]),
                "cli_s": rounds[0]["big"].get("cli_s")}}


def table(result: dict[str, Any]) -> str:
    s = result["summary"]
    n, head = result["tasks"], result["head"]
    return "\n".join([
        f"sweep of {n} tasks, medians of {len(result['rounds'])} rounds",
        f"  accepted (submit call -> reply)     {s['accept_s']:.2f} s "
        f"(host CPU {s['accept_host_cpu_s']:.2f} s)",
        f"  a {head}-task sweep accepted in       {s['small_accept_s'] * 1000:.0f} ms "
        f"(per task: big/small {s['accept_us_per_task_ratio']:.2f})",
        f"  zriver submit (new process, ids printed) {s['cli_s']:.2f} s",
        f"  dispatch, first {head} of {n}        {s['big_rate']:.0f} tasks/s "
        f"(host CPU {s['big_host_cpu_per_task_us']:.0f} us/task)",
        f"  dispatch, a {head}-task sweep        {s['small_rate']:.0f} tasks/s "
        f"(host CPU {s['small_host_cpu_per_task_us']:.0f} us/task)",
        f"  ratio big/small                     {s['ratio']:.2f} "
        f"(host CPU per task: {s['cpu_ratio']:.2f})",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000, help="tasks of the big sweep")
    parser.add_argument("--head", type=int, default=2_000,
                        help="tasks of the small sweep, and of the big one's timed head")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="overall time bound")
    parser.add_argument("--json", help="also write the raw results to this file")
    args = parser.parse_args(argv)
    if not 1 <= args.head <= args.tasks <= 1_000_000 or not 1 <= args.rounds <= 20:
        parser.error("1 <= --head <= --tasks <= 1000000, --rounds 1..20")

    return run_and_report(run, table, args)


if __name__ == "__main__":
    sys.exit(main())
