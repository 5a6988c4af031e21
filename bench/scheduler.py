"""Scheduler benchmark on the pure component (no I/O): can the host keep up with a big lab?

Run: ``python bench/scheduler.py [--sizes 100x10000,200x20000,400x20000,1000x100000]
[--nodes N --tasks T] [--rounds 3] [--drain-passes 100] [--json FILE]``.

Scenario per size (nodes x pending tasks): nodes of 32 cores in two NUMA zones / 256G /
8 GPUs; pending tasks of mixed shapes (1-4 cores, 0 or 4G memory, a quarter with 1-2 GPUs, 5%
targeted at a node, 20% with time limits, a quarter at a higher priority), as the host runs the
scheduler (chained starts on). Measured:

* the first pass: placement decisions while filling the empty cluster (wall time, placements
  per second, and CPU time, which a busy machine inflates less than wall time);
* a pass over a full cluster with the whole queue blocked (the common steady state);
* a pass over a queue that cannot move though cores are free: as many 2-core tasks on nodes
  of 31 cores (one core left free on each), after one task ended and its place was refilled
  (chained starts off, so that the queue outlasts the cluster at every size);
* a first pass where every task (2 cores) is pinned to a random node, chained starts on (CPU);
* draining: every round ends the oldest running tasks (2% of the cluster), then one
  scheduling pass, until nothing is pending or ``--drain-passes`` passes are done; reported
  as time per pass (and the total when the queue emptied).

Baseline in the same run: a bare Python loop doing one dict lookup and one set update per task
(what a scheduler pass cannot go below), so the figures read as ratios on a noisy machine.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time

from zriver.host.scheduler import ONLINE, NodeSpec, Request, Scheduler

G = 1 << 30
SIZES = "100x10000,200x20000,400x20000,1000x100000"


def build(nodes: int) -> Scheduler:
    sched = Scheduler(chain=True)  # as the host runs it (prefetch = true)
    for i in range(nodes):
        zones = (tuple(range(0, 16)), tuple(range(16, 32)))
        sched.set_node(f"n{i:03d}", NodeSpec(zones, 256 * G, tuple(range(8)),
                                             frozenset({"native"})))
        sched.set_node_state(f"n{i:03d}", ONLINE)
    return sched


def requests(count: int, nodes: int, seed: int = 7) -> list[Request]:
    rng = random.Random(seed)
    reqs = []
    for task_id in range(1, count + 1):
        gpus = rng.choice((0, 0, 0, 1, 2))
        target = f"n{rng.randrange(nodes):03d}" if rng.random() < 0.05 else None
        reqs.append(Request(task_id, cores=rng.choice((1, 1, 2, 4)), memory=rng.choice((0, 4 * G)),
                            gpus=gpus, target=target, priority=rng.choice((0, 0, 0, 5)),
                            time_limit=3600.0 if rng.random() < 0.2 else None))
    return reqs


def bare_baseline(count: int) -> float:
    """Seconds for the least work a pass does per task: a lookup and a set update."""
    free = {f"n{i:03d}": set(range(32)) for i in range(100)}
    start = time.perf_counter()
    for task_id in range(count):
        node = free[f"n{task_id % 100:03d}"]
        node.discard(task_id % 32)
        node.add(task_id % 32)
    return time.perf_counter() - start


def run(count: int, nodes: int, drain_passes: int) -> dict[str, float]:
    sched = build(nodes)
    reqs = requests(count, nodes)
    for req in reqs:
        sched.submit(req)
    start, cpu = time.perf_counter(), time.process_time()
    first = sched.schedule(now=0.0)
    first_s, first_cpu = time.perf_counter() - start, time.process_time() - cpu
    running = [p.task_id for p in first]

    blocked_start = time.perf_counter()
    sched.schedule(now=1.0)
    blocked_s = time.perf_counter() - blocked_start

    per_round = max(1, len(running) // 50)
    passes, drain_start, now = 0, time.perf_counter(), 2.0
    while sched.pending_count and passes < drain_passes:
        for task_id in running[:per_round]:
            sched.release(task_id)
        running = running[per_round:] + [p.task_id for p in sched.schedule(now)]
        passes += 1
        now += 1.0
    drain_s = time.perf_counter() - drain_start
    sched.validate()
    return {"placed_first_pass": len(first), "first_pass_ms": first_s * 1000,
            "first_pass_cpu_ms": first_cpu * 1000,
            "decisions_per_s": len(first) / first_s,
            "cpu_us_per_placement": first_cpu / len(first) * 1e6,
            "blocked_pass_ms": blocked_s * 1000, "passes": passes,
            "ms_per_pass": drain_s / max(passes, 1) * 1000,
            "drained_s": drain_s if not sched.pending_count else float("nan"),
            "pending_left": sched.pending_count, "stuck_pass_ms": stuck_pass(count, nodes) * 1000,
            "pinned_pass_cpu_ms": pinned_pass(count, nodes) * 1000,
            "baseline_ms": bare_baseline(count) * 1000}


def stuck_pass(count: int, nodes: int) -> float:
    """Seconds of one pass over ``count`` 2-core tasks with one core free on every node."""
    sched = Scheduler()
    for i in range(nodes):
        sched.set_node(f"n{i:03d}", NodeSpec.flat(31, 256 * G, features=frozenset({"native"})))
        sched.set_node_state(f"n{i:03d}", ONLINE)
    for task_id in range(1, count + 1):
        sched.submit(Request(task_id, cores=2))
    first = sched.schedule(now=0.0)
    sched.release(first[0].task_id)
    start = time.perf_counter()
    sched.schedule(now=1.0)
    return time.perf_counter() - start


def pinned_pass(count: int, nodes: int) -> float:
    """CPU seconds of a first pass over ``count`` 2-core tasks each pinned to a random node."""
    sched = build(nodes)
    rng = random.Random(11)
    for task_id in range(1, count + 1):
        sched.submit(Request(task_id, cores=2, target=f"n{rng.randrange(nodes):03d}"))
    start = time.process_time()
    sched.schedule(now=0.0)
    return time.process_time() - start


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        nodes, _, tasks = item.partition("x")
        if not (nodes.isdigit() and tasks.isdigit()):
            raise SystemExit(f"--sizes: {item!r} is not NODESxTASKS (like 200x20000)")
        sizes.append((int(nodes), int(tasks)))
    return sizes


def report(nodes: int, tasks: int, rounds: int, med: dict[str, float]) -> None:
    print(f"scheduler: {tasks} pending tasks over {nodes} nodes (median of {rounds} rounds)")
    print(f"  first pass: {med['placed_first_pass']:.0f} placed in {med['first_pass_ms']:.1f} ms"
          f" = {med['decisions_per_s']:,.0f} placements/s; CPU {med['first_pass_cpu_ms']:.1f} ms"
          f" = {med['cpu_us_per_placement']:.1f} us per placement")
    print(f"  pass over a full cluster, queue blocked: {med['blocked_pass_ms']:.2f} ms")
    print(f"  pass over 2-core tasks, one core free on each node: {med['stuck_pass_ms']:.2f} ms")
    print(f"  first pass, every task pinned to a node: CPU {med['pinned_pass_cpu_ms']:.1f} ms")
    emptied = med["drained_s"] == med["drained_s"]  # not NaN
    drained = (f"; queue empty after {med['drained_s']:.2f} s" if emptied
               else f"; {med['pending_left']:.0f} still pending")
    print(f"  drain: {med['passes']:.0f} passes, {med['ms_per_pass']:.2f} ms/pass{drained}")
    print(f"  bare loop over {tasks} tasks: {med['baseline_ms']:.2f} ms;"
          f" first pass / bare = {med['first_pass_ms'] / med['baseline_ms']:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=SIZES, help="NODESxTASKS,... (default %(default)s)")
    parser.add_argument("--tasks", type=int, help="one size: this many tasks (with --nodes)")
    parser.add_argument("--nodes", type=int, help="one size: this many nodes (with --tasks)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--drain-passes", type=int, default=100,
                        help="at most this many drain passes per round (default %(default)s)")
    parser.add_argument("--json", metavar="FILE", help="also write the medians here")
    args = parser.parse_args()
    if args.tasks or args.nodes:
        sizes = [(args.nodes or 100, args.tasks or 10_000)]
    else:
        sizes = parse_sizes(args.sizes)
    out = {"command": " ".join(["python", "bench/scheduler.py", *sys.argv[1:]]), "sizes": []}
    for nodes, tasks in sizes:
        results = [run(tasks, nodes, args.drain_passes) for _ in range(args.rounds)]
        med = {key: statistics.median(r[key] for r in results) for key in results[0]}
        report(nodes, tasks, args.rounds, med)
        out["sizes"].append({"nodes": nodes, "tasks": tasks, "rounds": args.rounds,
                             **{k: (None if v != v else v) for k, v in med.items()}})
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
