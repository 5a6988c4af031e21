"""Scheduling rules of issue "Scheduling": GPUs, NUMA, features, priorities, batches,
placement policies, drain and degraded nodes, reservations and EASY backfill — pure tables."""

from __future__ import annotations

import pytest

from zriver.errors import Impossible, NotFound
from zriver.host.deps import Dependencies
from zriver.host.scheduler import (DEGRADED, ONLINE, PACK, SPREAD, NodeSpec, Request,
                                   Scheduler)

G = 1 << 30


def cluster(policy=SPREAD, gpu_policy=PACK, **nodes) -> Scheduler:
    sched = Scheduler(policy, gpu_policy)
    for name, spec in nodes.items():
        sched.set_node(name, spec)
        sched.set_node_state(name, ONLINE)
    return sched


def run(sched: Scheduler, *reqs: Request, now: float = 0.0) -> dict[int, tuple]:
    for req in reqs:
        sched.check_possible(req)
        sched.submit(req)
    out = {p.task_id: (p.allocation.node, p.allocation.cores, p.allocation.gpus)
           for p in sched.schedule(now)}
    sched.validate()
    return out


GPU4 = NodeSpec.flat(8, 64 * G, gpus=4)
TWO_ZONES = NodeSpec(((0, 1, 2, 3), (4, 5, 6, 7)), 64 * G, (0, 1))


@pytest.mark.parametrize("req, expected", [
    (Request(1, gpus=2), ("z", (0,), (0, 1))),  # pack: the node it fills exactly
    (Request(1, target="g2", gpu_ids=(2, 3)), ("g2", (0,), (2, 3))),
    (Request(1, target="z", numa=1, cores=2), ("z", (4, 5), ())),
    (Request(1, target="z", numa=0, cores=4), ("z", (0, 1, 2, 3), ())),
])
def test_gpu_and_numa_allocation(req, expected):
    sched = cluster(g1=GPU4, g2=GPU4, z=TWO_ZONES)
    assert run(sched, req)[1] == expected


def test_gpus_are_exclusive_and_busy_gpus_queue():
    sched = cluster(g=GPU4)
    assert run(sched, Request(1, target="g", gpu_ids=(0,)), Request(2, target="g", gpu_ids=(0, 1))) \
        == {1: ("g", (0,), (0,))}
    assert "GPU" in sched.pending_reason(2)
    sched.release(1)
    assert [p.task_id for p in sched.schedule()] == [2]


def test_gpu_tasks_pack_cpu_tasks_spread():
    sched = cluster(g1=GPU4, g2=GPU4)
    placed = run(sched, Request(1, gpus=1), Request(2, gpus=1), Request(3), Request(4))
    assert placed[1][0] == placed[2][0] == "g1"          # pack: fill g1's GPUs first
    assert placed[3][0] == placed[4][0] == "g2"          # spread: most free cores (8, then 7 > 6)


def test_pack_policy_fills_one_node_first():
    sched = cluster(PACK, PACK, a=NodeSpec.flat(4, 8 * G), b=NodeSpec.flat(4, 8 * G))
    placed = run(sched, *(Request(i) for i in range(1, 5)))
    assert {node for node, _, _ in placed.values()} == {"a"}


@pytest.mark.parametrize("req, error, message", [
    (Request(1, target="z", numa=2), NotFound, "no NUMA zone 2"),
    (Request(1, target="z", gpu_ids=(5,)), NotFound, "no GPU 5"),
    (Request(1, gpus=3), Impossible, "3 GPUs"),
    (Request(1, target="z", numa=0, cores=5), Impossible, "NUMA zone 0"),
    (Request(1, needs=frozenset({"docker"})), Impossible, "no node offers docker"),
])
def test_impossible_targets(req, error, message):
    sched = cluster(z=TWO_ZONES)
    with pytest.raises(error, match=message):
        sched.check_possible(req)


def test_docker_tasks_only_go_to_docker_nodes():
    sched = cluster(plain=NodeSpec.flat(8, 8 * G, features=frozenset({"native"})),
                    dock=NodeSpec.flat(2, 8 * G, features=frozenset({"native", "docker"})))
    assert run(sched, Request(1, needs=frozenset({"docker"})))[1][0] == "dock"


def test_priority_before_fifo():
    sched = cluster(a=NodeSpec.flat(1, 8 * G))
    run(sched, Request(1))  # occupies the only core
    run(sched, Request(2), Request(3, priority=5), Request(4, priority=5), Request(5, priority=-1))
    order = []
    for _ in range(4):
        sched.release(order[-1] if order else 1)
        order += [p.task_id for p in sched.schedule()]
    assert order == [3, 4, 2, 5]


def test_max_parallel_throttles_a_batch():
    sched = cluster(a=NodeSpec.flat(8, 8 * G))
    reqs = [Request(i, batch=10, max_parallel=2) for i in range(10, 15)]
    assert sorted(run(sched, *reqs)) == [10, 11]
    assert "at its limit of 2" in sched.pending_reason(12)
    sched.release(10)
    assert [p.task_id for p in sched.schedule()] == [12]
    sched.validate()


def test_drained_and_degraded_nodes_take_nothing_new():
    sched = cluster(a=NodeSpec.flat(4, 8 * G), b=NodeSpec.flat(4, 8 * G))
    sched.set_drained("a", True)
    sched.set_node_state("b", DEGRADED)
    assert run(sched, Request(1)) == {}
    sched.set_drained("a", False)
    assert [p.allocation.node for p in sched.schedule()] == ["a"]


def test_small_gpu_task_does_not_starve_a_big_one():
    """An 8-GPU task waits for a node; 1-GPU tasks behind it may not take that node."""
    sched = cluster(g=NodeSpec.flat(16, 64 * G, gpus=8))
    run(sched, Request(1, gpus=1))                         # one GPU busy
    assert run(sched, Request(2, gpus=8), Request(3, gpus=1)) == {}
    assert "reserved for it" in sched.pending_reason(2)
    sched.release(1)
    assert [p.task_id for p in sched.schedule()] == [2]   # the big one goes first
    sched.release(2)
    assert [p.task_id for p in sched.schedule()] == [3]   # and the small one is not stuck


def test_easy_backfill_uses_a_reserved_node_when_it_cannot_delay_the_reservation():
    sched = cluster(g=NodeSpec.flat(4, 8 * G, gpus=2))
    run(sched, Request(1, cores=2, time_limit=100), now=0)          # ends by t=100
    assert run(sched, Request(2, cores=4), now=10) == {}            # waits, reserves g from t=100
    short = Request(3, cores=1, time_limit=50)                     # 10 + 50 <= 100: fits before
    long = Request(4, cores=1, time_limit=500)                     # would delay task 2
    unlimited = Request(5, cores=1)
    assert sorted(run(sched, short, long, unlimited, now=10)) == [3]


def test_unknown_start_admits_only_bounded_backfill():
    """With an unlimited task in the way the reserved start is unknown: a newcomer with a time
    limit can delay it by a bounded time at most, one without could delay it forever."""
    sched = cluster(g=NodeSpec.flat(4, 8 * G))
    run(sched, Request(1, cores=2))
    placed = run(sched, Request(2, cores=4), Request(3, cores=1),
                 Request(4, cores=1, time_limit=60), now=0)
    assert sorted(placed) == [4]
    sched.release(1)   # now task 2's start is bounded by task 4's limit: no more long backfill
    assert run(sched, Request(5, cores=1, time_limit=3600), now=1) == {}


# ---- dependencies ------------------------------------------------------------------------
@pytest.mark.parametrize("after, after_any, ended, expected", [
    ([1], [], {}, "wait"),
    ([1], [], {1: "completed"}, "ready"),
    ([1], [], {1: "failed"}, "failed"),
    ([], [1], {1: "failed"}, "ready"),
    ([1, 2], [], {1: "completed"}, "wait"),
])
def test_dependency_verdict_at_submit(after, after_any, ended, expected):
    verdict = Dependencies().add(9, after, after_any, ended)
    assert ("ready" if verdict.ready else "failed" if verdict.failed else "wait") == expected


def test_dependency_endings_release_or_fail():
    deps = Dependencies()
    deps.add(10, [1], [], {})
    deps.add(11, [], [1], {})
    deps.add(12, [1, 2], [], {})
    assert deps.waiting_for(12) == [1, 2]
    ready, failed = deps.ended(1, "failed")
    assert ready == [11]
    assert failed == [(10, "dependency 1 ended failed"), (12, "dependency 1 ended failed")]
    assert deps.waiting_for(12) is None
    assert deps.ended(2, "completed") == ([], [])


# ---- chained starts (prefetch) -------------------------------------------------------------
def chained(**nodes) -> Scheduler:
    sched = Scheduler(chain=True)
    for name, spec in nodes.items():
        sched.set_node(name, spec)
        sched.set_node_state(name, ONLINE)
    return sched


def test_the_next_tasks_of_the_same_shape_are_staged_behind_running_ones():
    sched = chained(a=NodeSpec.flat(2, 8 * G))
    for i in range(1, 10):
        sched.submit(Request(i))
    placements = sched.schedule()
    assert [(p.task_id, p.behind) for p in placements] == [
        (1, None), (2, None), (3, 1), (4, 2), (5, 3), (6, 4), (7, 5), (8, 6)]  # chains of 3
    assert placements[2].allocation == placements[4].allocation == sched.allocation(1)
    assert sched.pending_count == 1
    sched.validate()
    sched.release(1)                      # task 3 takes over task 1's core: nothing is freed
    assert sched.allocation(3) == placements[0].allocation
    assert sched.node_usage("a") == (2, 0)
    assert [(p.task_id, p.behind) for p in sched.schedule()] == [(9, 7)]
    sched.validate()


def test_a_withdrawn_staged_task_lets_the_one_behind_it_move_up():
    sched = chained(a=NodeSpec.flat(1, 8 * G))
    for i in range(1, 6):
        sched.submit(Request(i))
    assert [(p.task_id, p.behind) for p in sched.schedule()] == [(1, None), (2, 1), (3, 2), (4, 3)]
    sched.release(2)                      # killed while staged
    assert (sched.behind(2), sched.behind(3)) == (None, 1)
    assert [(p.task_id, p.behind) for p in sched.schedule()] == [(5, 4)]
    sched.release(1)
    assert sched.node_usage("a") == (1, 0) and sched.allocation(3) is not None
    assert sched.behind(4) == 3
    sched.validate()


@pytest.mark.parametrize("blocked", [
    Request(2, cores=1),                  # another shape
    Request(2, target="a", numa=0),       # pinned to a zone
    Request(2, needs=frozenset({"docker"})),
])
def test_only_plain_same_shape_tasks_are_chained(blocked):
    sched = chained(a=NodeSpec((tuple(range(2)),), 8 * G, (), frozenset({"native", "docker"})))
    sched.submit(Request(1, cores=2))
    sched.submit(blocked)
    assert [p.behind for p in sched.schedule()] == [None]


def test_chaining_never_jumps_a_reservation():
    sched = chained(a=NodeSpec.flat(2, 8 * G))
    sched.submit(Request(1))
    sched.submit(Request(2))
    sched.schedule()
    sched.submit(Request(3, cores=2))     # blocked: gets the reservation
    sched.submit(Request(4))              # same shape as 1 and 2, but behind the reservation
    assert sched.schedule() == []
    assert "reserved for it" in sched.pending_reason(3)


def test_chains_survive_a_host_restart():
    sched = chained(a=NodeSpec.flat(1, 8 * G))
    for i in range(1, 4):
        sched.submit(Request(i))
    placements = sched.schedule()
    fresh = chained(a=NodeSpec.flat(1, 8 * G))
    for p in placements:
        fresh.hold(p.task_id, p.allocation, Request(p.task_id), behind=p.behind)
    fresh.validate()
    assert (fresh.behind(2), fresh.behind(3)) == (1, 2) and fresh.node_usage("a") == (1, 0)
