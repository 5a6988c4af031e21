"""Scheduler benchmark on the pure component (no I/O): can the host keep up with a big lab?

Scenario: 100 nodes of 32 cores / 256G / 8 GPUs; 10,000 pending tasks (mixed: 1-4 cores,
a quarter with 1-2 GPUs, some targeted, a few with time limits). Measured:

* the first pass: placement decisions per second while filling the empty cluster;
* draining the queue: every round ends the oldest running tasks (2% of the cluster), then one
  scheduling pass, until nothing is pending; reported as total time and time per pass;
* a pass over a full cluster with the whole queue blocked (the common steady state).

Baseline in the same run: a bare Python loop doing one dict lookup and one set update per task
(what a scheduler pass cannot go below), so the figures read as ratios on a noisy machine.

Run: ``python bench/scheduler.py [--tasks 10000] [--nodes 100]``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from zriver.host.scheduler import ONLINE, NodeSpec, Request, Scheduler

G = 1 << 30


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


def run(count: int, nodes: int) -> dict[str, float]:
    sched = build(nodes)
    reqs = requests(count, nodes)
    for req in reqs:
        sched.submit(req)
    start = time.perf_counter()
    first = sched.schedule(now=0.0)
    first_s = time.perf_counter() - start
    running = [p.task_id for p in first]

    blocked_start = time.perf_counter()
    sched.schedule(now=1.0)
    blocked_s = time.perf_counter() - blocked_start

    per_round = max(1, len(running) // 50)
    passes, drain_start, now = 0, time.perf_counter(), 2.0
    while sched.pending_count:
        for task_id in running[:per_round]:
            sched.release(task_id)
        running = running[per_round:] + [p.task_id for p in sched.schedule(now)]
        passes += 1
        now += 1.0
    drain_s = time.perf_counter() - drain_start
    sched.validate()
    return {"placed_first_pass": len(first), "first_pass_s": first_s,
            "decisions_per_s": len(first) / first_s, "blocked_pass_ms": blocked_s * 1000,
            "drain_s": drain_s, "passes": passes, "ms_per_pass": drain_s / passes * 1000,
            "baseline_s": bare_baseline(count)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results = [run(args.tasks, args.nodes) for _ in range(args.rounds)]
    med = {key: statistics.median(r[key] for r in results) for key in results[0]}
    print(f"scheduler: {args.tasks} pending tasks over {args.nodes} nodes "
          f"(median of {args.rounds} rounds)")
    print(f"  first pass: {med['placed_first_pass']:.0f} placed in {med['first_pass_s'] * 1000:.1f} ms"
          f" = {med['decisions_per_s']:,.0f} placements/s")
    print(f"  pass over a full cluster, queue blocked: {med['blocked_pass_ms']:.2f} ms")
    print(f"  drain: {med['drain_s']:.2f} s for {med['passes']:.0f} passes"
          f" ({med['ms_per_pass']:.2f} ms/pass)")
    print(f"  bare loop over {args.tasks} tasks: {med['baseline_s'] * 1000:.2f} ms;"
          f" first pass / bare = {med['first_pass_s'] / med['baseline_s']:.1f}x")


if __name__ == "__main__":
    main()
