"""The pure scheduler: tables of cases, then properties under random interleavings."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zriver.errors import Impossible, NotFound
from zriver.host.scheduler import OFFLINE, ONLINE, NodeSpec, Request, Scheduler

G = 1 << 30


def make(nodes: dict[str, tuple[int, int]], online: bool = True) -> Scheduler:
    sched = Scheduler()
    for name, (cores, mem) in nodes.items():
        sched.set_node(name, NodeSpec.flat(cores, mem * G))
        if online:
            sched.set_node_state(name, ONLINE)
    return sched


def placed(sched: Scheduler, *reqs: Request) -> dict[int, str]:
    for req in reqs:
        sched.check_possible(req)
        sched.submit(req)
    result = {p.task_id: p.allocation.node for p in sched.schedule()}
    sched.validate()
    return result


@pytest.mark.parametrize("nodes, reqs, expected", [
    # one task, one node
    ({"a": (4, 8)}, [Request(1, 2)], {1: "a"}),
    # spread: the node with most free cores wins, ties by name
    ({"a": (4, 8), "b": (4, 8)}, [Request(1, 1), Request(2, 1)], {1: "a", 2: "b"}),
    ({"a": (2, 8), "b": (4, 8)}, [Request(1, 1)], {1: "b"}),
    # targets are honoured
    ({"a": (4, 8), "b": (4, 8)}, [Request(1, 1, target="b")], {1: "b"}),
    # memory counts
    ({"a": (4, 2), "b": (4, 8)}, [Request(1, 1, 4 * G)], {1: "b"}),
    # what does not fit waits, what fits runs
    ({"a": (2, 8)}, [Request(1, 2), Request(2, 1)], {1: "a"}),
    # filling a node exactly
    ({"a": (4, 8)}, [Request(i, 1) for i in range(1, 5)], {1: "a", 2: "a", 3: "a", 4: "a"}),
    ({"a": (4, 8)}, [Request(i, 1, 2 * G) for i in range(1, 6)],
     {1: "a", 2: "a", 3: "a", 4: "a"}),
])
def test_placement(nodes, reqs, expected):
    assert placed(make(nodes), *reqs) == expected


def test_offline_nodes_get_nothing():
    sched = make({"a": (4, 8)}, online=False)
    assert placed(sched, Request(1, 1)) == {}
    assert sched.pending_reason(1).startswith("no usable node can run it")
    sched.set_node_state("a", ONLINE)
    assert {p.task_id for p in sched.schedule()} == {1}


def test_a_pass_with_no_usable_node_looks_at_no_task(monkeypatch):
    """10,000 tasks waiting while every node is offline cost nothing per pass; each still
    says why it waits."""
    sched = make({"a": (4, 8), "b": (4, 8)}, online=False)
    sched.set_node_state("b", ONLINE)
    sched.set_drained("b", True)
    for task_id in range(1, 10_001):
        sched.submit(Request(task_id, 1, target="b" if task_id == 2 else None))

    def looked_at(*args):
        raise AssertionError("a task was examined")

    monkeypatch.setattr(Scheduler, "_block", looked_at)
    monkeypatch.setattr(Scheduler, "_chain", looked_at)
    assert sched.schedule() == []
    assert sched.pending_reason(1).startswith("no usable node can run it")
    assert sched.pending_reason(2) == "target node b is drained"
    monkeypatch.undo()
    sched.set_node_state("a", ONLINE)
    assert len(sched.schedule()) == 4  # one per core of a
    assert sched.pending_reason(10_000).startswith("waiting")


def test_a_pass_walks_the_whole_queue_in_order_while_placing_from_it(monkeypatch):
    """The walk copies the queue in chunks; tasks placed mid-walk leave it, and every task is
    still looked at once, in queue order, across chunk boundaries."""
    sched = make({"a": (400, 8)})
    sched.chain = False
    for task_id in range(1, 301):
        sched.submit(Request(task_id, 1))
    asked: list[int] = []
    real_choose = Scheduler._choose

    def every_third(self, req, usable, reservation, now):
        asked.append(req.task_id)
        return real_choose(self, req, usable, reservation, now) if req.task_id % 3 == 0 else None

    monkeypatch.setattr(Scheduler, "_choose", every_third)
    monkeypatch.setattr(Scheduler, "_block", lambda self, req, usable, reservation, now: None)
    placed_ids = [p.task_id for p in sched.schedule()]
    assert asked == list(range(1, 301))
    assert placed_ids == list(range(3, 301, 3))
    asked.clear()
    sched.schedule()
    assert asked == [t for t in range(1, 301) if t % 3]
    sched.validate()


@pytest.mark.parametrize("req, error", [
    (Request(1, 9), Impossible),
    (Request(1, 1, 9 * G), Impossible),
    (Request(1, 1, target="zz"), NotFound),
    (Request(1, 5, target="small"), Impossible),
])
def test_impossible_requests(req, error):
    sched = make({"big": (8, 8), "small": (4, 4)})
    with pytest.raises(error):
        sched.check_possible(req)


def test_fifo_when_capacity_frees():
    sched = make({"a": (2, 8)})
    assert placed(sched, Request(1, 2), Request(2, 1), Request(3, 1)) == {1: "a"}
    sched.release(1)
    assert [p.task_id for p in sched.schedule()] == [2, 3]
    sched.validate()


def test_head_of_queue_is_not_starved_by_small_tasks():
    """A big task waits with a reservation; small ones must not keep taking its node."""
    sched = make({"a": (4, 8)})
    assert placed(sched, Request(1, 2), Request(2, 4), Request(3, 1)) == {1: "a"}
    assert "reserved for it" in sched.pending_reason(2)
    assert "reserved" in sched.pending_reason(3)
    sched.release(1)
    assert [p.task_id for p in sched.schedule()] == [2]
    sched.release(2)
    assert [p.task_id for p in sched.schedule()] == [3]


def test_small_tasks_backfill_other_nodes_while_the_head_waits():
    sched = make({"a": (4, 8), "b": (2, 8)})
    assert placed(sched, Request(1, 3)) == {1: "a"}
    # task 2 needs 4 cores: only "a" can ever hold it, so "a" is reserved; 3 goes to "b"
    assert placed(sched, Request(2, 4), Request(3, 1)) == {3: "b"}


@pytest.mark.parametrize("finish", ["release_running", "release_pending"])
def test_accounting_after_the_end(finish):
    sched = make({"a": (2, 4)})
    placed(sched, Request(1, 2, 4 * G), Request(2, 1))
    if finish == "release_running":
        sched.release(1)
        assert sched.node_usage("a") == (0, 0)
        assert [p.task_id for p in sched.schedule()] == [2]
    else:
        sched.release(2)
        assert sched.pending_count == 0
        assert sched.node_usage("a") == (2, 4 * G)
    sched.validate()


def test_cores_come_from_one_numa_zone_when_possible():
    sched = Scheduler()
    sched.set_node("a", NodeSpec(((0, 1, 2, 3), (4, 5, 6, 7)), 8 * G))
    sched.set_node_state("a", ONLINE)
    placed(sched, Request(1, 3))
    placed(sched, Request(2, 2))
    assert sched.allocation(1).cores == (0, 1, 2)
    assert sched.allocation(2).cores == (4, 5)


def test_hold_restores_books_after_a_host_restart():
    sched = make({"a": (4, 8)})
    placed(sched, Request(1, 3))
    alloc = sched.allocation(1)
    fresh = make({"a": (4, 8)})
    fresh.hold(1, alloc)
    assert fresh.node_usage("a") == (3, 0)
    assert placed(fresh, Request(2, 2)) == {}
    fresh.validate()


def test_node_replaced_while_tasks_hold_cores():
    sched = make({"a": (4, 8)})
    placed(sched, Request(1, 2))
    sched.set_node("a", NodeSpec.flat(4, 8 * G))
    assert sched.node_usage("a") == (2, 0)
    sched.validate()


# ---- properties ------------------------------------------------------------------------
actions = st.lists(st.one_of(
    st.tuples(st.just("submit"), st.integers(1, 4), st.integers(0, 6), st.sampled_from([None, "a", "b"])),
    st.tuples(st.just("end"), st.integers(0, 60)),
    st.tuples(st.just("node"), st.sampled_from(["a", "b", "c"]), st.booleans()),
), max_size=80)


@settings(max_examples=200, deadline=None)
@given(actions)
def test_never_oversubscribes_under_any_interleaving(steps):
    sched = make({"a": (4, 8), "b": (2, 4), "c": (8, 2)})
    sched.chain = True  # staged starts too
    next_id, known = 1, []
    for step in steps:
        if step[0] == "submit":
            req = Request(next_id, step[1], step[2] * G, step[3])
            try:
                sched.check_possible(req)
            except Impossible:
                continue
            sched.submit(req)
            known.append(next_id)
            next_id += 1
        elif step[0] == "end" and known:
            sched.release(known.pop(step[1] % len(known)))
        elif step[0] == "node":
            sched.set_node_state(step[1], ONLINE if step[2] else OFFLINE)
        for placement in sched.schedule():
            alloc = placement.allocation
            spec_cores = {"a": 4, "b": 2, "c": 8}[alloc.node]
            assert all(0 <= c < spec_cores for c in alloc.cores)
        sched.validate()
        for name, (cores, mem) in {"a": (4, 8), "b": (2, 4), "c": (8, 2)}.items():
            used_cores, used_mem = sched.node_usage(name)
            assert used_cores <= cores and used_mem <= mem * G


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=1, max_size=30))
def test_everything_eventually_runs_when_tasks_finish(sizes):
    """Liveness: ending whatever runs always lets the queue drain, in FIFO order of heads."""
    sched = make({"a": (4, 8)})
    for i, cores in enumerate(sizes, start=1):
        sched.submit(Request(i, cores))
    done: list[int] = []
    for _ in range(len(sizes) + 1):
        running = [p.task_id for p in sched.schedule()]
        sched.validate()
        for task_id in running:
            sched.release(task_id)
            done.append(task_id)
    assert sorted(done) == list(range(1, len(sizes) + 1))
    assert sched.pending_count == 0
