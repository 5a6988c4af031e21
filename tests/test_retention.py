"""Retention (``zriver.host.retention``): old finished tasks pruned in batches, unfinished and
recent ones kept, ``usage.report`` the same before and after, the setting validated, a submit
answered while a prune is under way, and the host's start and submit path free of scans of
finished rows. Old rows are written straight into a real host's store (on its loop), shaped as
``handlers.submit`` and ``dispatch`` write them."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zriver import lifecycle as lc
from zriver.config import HostSettings, load
from zriver.errors import InvalidArgument, NotFound
from zriver.host import retention as ret
from zriver.host.accounting import HOUR_US, first_hour, rollup, usage_report
from zriver.host.core import HostCore
from zriver.host.model import allocation_to_wire
from zriver.host.ops import OpTable
from zriver.host.scheduler import Allocation
from zriver.host.service import Host
from zriver.host.store import Store, pack
from zriver.spec import TaskSpec

DAY = 86400.0
NOW = time.time()
OLD = NOW - 200 * DAY
"""Finished this long ago a task is past the default retention (180 days)."""


def put_tasks(cluster, shapes: list[dict]) -> list[int]:
    """Write tasks into the running host's store (ids after every id given so far); each of
    ``shapes``: ``state``, ``at`` (submitted), ``run`` (seconds running, ``None``: never
    started), ``owner``, ``node``, ``cores``, ``gpus``. Final ones get the four events of a
    task that ran; unfinished ones stay out of the host's model (the store is what counts)."""
    def write():
        core, store = cluster.host.core, cluster.host.store
        ids, tasks, events = [], [], []
        for shape in shapes:
            task_id = core.next_task_id
            core.next_task_id += 1
            ids.append(task_id)
            spec = TaskSpec(["python", "train.py", "--seed", str(task_id)], cores=shape["cores"],
                            gpus=shape["gpus"], owner=shape["owner"], name="sweep").to_wire()
            submitted, run, node = shape["at"], shape["run"], shape["node"]
            started = None if run is None else submitted + 0.25
            finished = None
            if lc.is_final(shape["state"]):
                finished = submitted + 1 if started is None else started + run
            alloc = None if run is None else allocation_to_wire(Allocation(
                node, tuple(range(shape["cores"])), None, tuple(range(shape["gpus"])), None))
            tasks.append((task_id, "sweep", shape["owner"], shape["state"],
                          node if run is not None else None, pack(spec),
                          None if alloc is None else pack(alloc),
                          0 if finished is not None else None, "", submitted, started,
                          finished))
            events.append((task_id, "pending", submitted, "submitted"))
            if run is not None:
                events += [(task_id, "assigned", submitted + 0.1, f"on {node}"),
                           (task_id, "running", started, "")]
            if finished is not None:
                events.append((task_id, shape["state"], finished, ""))
        with store.conn:
            store.conn.executemany(
                "INSERT INTO tasks(id, name, owner, state, node, spec, alloc, exit_code, detail,"
                " submitted_at, started_at, finished_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", tasks)
            store.conn.executemany(
                "INSERT INTO task_events(task_id, state, at, detail) VALUES (?,?,?,?)", events)
        cluster.host.flush()  # committed (with the tick, when one was open): readers see them
        return ids

    return cluster.call_soon(write)


def shape(at: float, state: str = "completed", run: float | None = 600.0, owner: str = "alice",
          node: str = "n1", cores: int = 2, gpus: int = 0) -> dict:
    return {"at": at, "state": state, "run": run, "owner": owner, "node": node, "cores": cores,
            "gpus": gpus}


def stored(cluster, ids: list[int]) -> tuple[set[int], set[int]]:
    """Which of ``ids`` still have a task row, and which still have events."""
    def read():
        conn, marks = cluster.host.store.conn, ",".join("?" * len(ids))
        tasks = {r[0] for r in conn.execute(f"SELECT id FROM tasks WHERE id IN ({marks})", ids)}
        events = {r[0] for r in conn.execute(
            f"SELECT DISTINCT task_id FROM task_events WHERE task_id IN ({marks})", ids)}
        return tasks, events

    return cluster.call_soon(read)


def prune(cluster, now: float = NOW) -> int:
    """Prune on the host's loop; returns once the last batch is committed."""
    async def run():
        count = await cluster.host.retention.prune(now)
        cluster.host.flush()
        return count

    return cluster.run(run, timeout=120)


def count_batches(cluster) -> list[int]:
    """Count the retention's pauses between batches (from now on) in the returned list."""
    calls: list[int] = []
    original = cluster.host.retention.breathe

    async def counted():
        calls.append(1)
        await original()

    cluster.host.retention.breathe = counted
    return calls


# ---- pruning -------------------------------------------------------------------------------
def test_prune_removes_old_finished_tasks_in_batches_and_keeps_the_rest(cluster):
    recent = cluster.submit(["true"])
    cluster.wait(recent)
    running = cluster.submit(["sleep", "60"])
    cluster.wait_state(running, {"running"})
    old = put_tasks(cluster, [shape(OLD - i, state=("completed", "failed", "killed")[i % 3])
                              for i in range(1234)])
    young = put_tasks(cluster, [shape(NOW - 100 * DAY)])
    unfinished = put_tasks(cluster, [shape(NOW - 400 * DAY, state="pending", run=None),
                                     shape(NOW - 400 * DAY, state="running", run=10.0),
                                     shape(NOW - 400 * DAY, state="unreachable", run=10.0)])
    never_started = put_tasks(cluster, [shape(OLD, state="killed", run=None)])
    batches = count_batches(cluster)
    assert prune(cluster) == 1234 + 1
    assert len(batches) == 1234 // ret.BATCH  # 500 + 500 + 235: a pause between batches
    kept = young + unfinished + [recent, running]
    assert stored(cluster, old + never_started) == (set(), set())
    assert stored(cluster, kept) == (set(kept), set(kept))
    assert prune(cluster) == 0
    with pytest.raises(NotFound):
        cluster.client().call("task.get", {"id": old[0]})
    cluster.client().call("task.kill", {"id": running})
    cluster.wait(running)


def test_forever_keeps_everything(make_cluster):
    cluster = make_cluster(host={"retention": "forever"})
    old = put_tasks(cluster, [shape(OLD - 1000 * DAY)])
    assert prune(cluster) == 0 and cluster.host.retention._loop_task is None
    assert stored(cluster, old) == (set(old), set(old))


# ---- usage ---------------------------------------------------------------------------------
def _history() -> list[dict]:
    """Old tasks across owners, nodes and GPUs, some spanning hours, at odd times."""
    shapes = []
    for i in range(300):
        shapes.append(shape(OLD + i * 997.3, state=("completed", "failed", "timeout")[i % 3],
                            run=(13.7, 2 * 3600.0 + 0.123, 5400.5)[i % 3],
                            owner=("alice", "bob", "")[i % 3], node=("n1", "n2")[i % 2],
                            cores=1 + i % 4, gpus=i % 3))
    return shapes


def test_usage_is_the_same_before_and_after_pruning(cluster):
    recent = cluster.submit(["true"], cores=2)
    cluster.wait(recent)
    put_tasks(cluster, _history())
    hour = HOUR_US / 1e6
    windows = [0.0, (OLD // hour - 2) * hour, (OLD // hour + 30) * hour, NOW - 7 * DAY,
               NOW - 60]
    client = cluster.client()

    def report():
        return [client.call("usage.report", {"since": since, "by": by})
                for since in windows for by in ("user", "node")]

    before = report()
    assert {r["user"] for r in before[0]["rows"]} == {"alice", "bob", "-", "test"}
    assert before[0]["rows"][0]["gpu_hours"] > 0
    assert prune(cluster) == 300
    assert report() == before
    assert cluster.host.retention.records.count() > 300  # tasks spanning hours: more rows


_TASKS = st.lists(st.tuples(
    st.integers(0, 40 * HOUR_US), st.integers(-10, 5 * HOUR_US), st.integers(1, 8),
    st.integers(0, 2), st.sampled_from(["a", "b", ""]), st.sampled_from(["n1", "n2", None]),
    st.sampled_from(sorted(lc.FINAL))), max_size=30)


@settings(max_examples=200, deadline=None)
@given(_TASKS, st.integers(-2, 45), st.sampled_from(["user", "node"]))
def test_rolled_up_sums_equal_the_rows_for_hour_aligned_windows(tasks, since_hour, by):
    base = 1_700_000_000_000_000 // HOUR_US * HOUR_US  # microseconds
    rows = [{"owner": owner, "node": node, "state": state, "started_at": (base + s) / 1e6,
             "finished_at": (base + s + d) / 1e6, "spec": {"cores": cores},
             "alloc": {"gpus": list(range(gpus))}}
            for s, d, cores, gpus, owner, node, state in tasks]
    since = (base + since_hour * HOUR_US) / 1e6
    now = (base + 50 * HOUR_US) / 1e6
    grouped: dict[str, list[int]] = {}
    for (hour, owner, node), sums in rollup(rows).items():
        if hour >= first_hour(since):
            entry = grouped.setdefault(owner if by == "user" else node, [0, 0, 0, 0])
            for index, value in enumerate(sums):
                entry[index] += value
    rolled = [(key, *sums) for key, sums in grouped.items()]
    assert usage_report([], since, now, by, rolled) == usage_report(rows, since, now, by)


# ---- the setting ---------------------------------------------------------------------------
@pytest.mark.parametrize("value, seconds", [("180d", 180 * DAY), ("12h", 43200.0),
                                            ("forever", None), ("0", None)])
def test_retention_setting(tmp_path, value, seconds):
    path = tmp_path / "host.toml"
    path.write_text(f'retention = "{value}"\n')
    assert load(path, HostSettings, "host.toml").retention_seconds == seconds


@pytest.mark.parametrize("value", ["10m", "36501d", "-5d", "soon", ""])
def test_a_bad_retention_is_refused_with_the_key_and_the_file(tmp_path, value):
    path = tmp_path / "host.toml"
    path.write_text(f'retention = "{value}"\n')
    with pytest.raises(InvalidArgument) as err:
        load(path, HostSettings, "host.toml")
    assert str(path) in str(err.value) and "retention" in str(err.value)
    with pytest.raises(InvalidArgument, match="retention"):
        HostSettings(retention=value).resolved()


# ---- responsiveness ------------------------------------------------------------------------
def test_a_submit_is_answered_while_a_prune_is_under_way(cluster):
    """The prune is held between two batches (on an asyncio event, as a slow prune would be
    between any two): the host answers a submit and a listing meanwhile."""
    old = put_tasks(cluster, [shape(OLD - i) for i in range(5 * ret.BATCH)])
    retention = cluster.host.retention
    holding, release = threading.Event(), asyncio.Event()
    pauses: list[int] = []

    async def held():
        pauses.append(1)
        if len(pauses) == 2:
            holding.set()
            await asyncio.wait_for(release.wait(), 20)
        await asyncio.sleep(0)

    retention.breathe = held
    done = asyncio.run_coroutine_threadsafe(retention.prune(NOW), cluster.loop)
    try:
        assert holding.wait(20), "the prune never reached its second pause"
        client = cluster.client(timeout=5)
        task = client.call("task.submit", {"tasks": [{"command": ["true"]}]})["ids"][0]
        listed = client.call("task.list", {})["tasks"]
        assert not done.done()
        left, _ = stored(cluster, old)
        assert len(left) == 3 * ret.BATCH  # two batches pruned, the rest waiting
        assert listed[0]["id"] == task
    finally:
        cluster.loop.call_soon_threadsafe(release.set)
    assert done.result(60) == 5 * ret.BATCH
    assert cluster.wait(task)[0]["state"] == "completed"


# ---- query plans ---------------------------------------------------------------------------
def _plans(conn, statements) -> list[str]:
    """The query plan lines of the reads and writes among ``statements``."""
    lines = []
    for sql, bindings in statements:
        if sql.split(None, 1)[0].upper() not in ("SELECT", "UPDATE", "DELETE", "INSERT"):
            continue
        for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", bindings or ()):
            lines.append(f"{row[-1]}  <- {sql}")
    return lines


def _scans(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith(("SCAN tasks", "SCAN task_events"))]


def _tracing(conn, statements: list) -> None:
    def trace(cursor, sql, bindings):
        statements.append((sql, bindings))
        return True

    conn.exec_trace = trace


def test_start_and_submit_read_no_finished_rows(cluster):
    done = put_tasks(cluster, [shape(NOW - i) for i in range(50)])
    statements: list = []
    cluster.call_soon(lambda: _tracing(cluster.host.store.conn, statements))
    try:
        client = cluster.client()
        client.call("task.submit", {"tasks": [{"command": ["true"], "after_any": done[:3]},
                                              {"command": ["true"], "after": [done[4]]}],
                                    "key": "plans"})
        client.call("task.submit", {"tasks": [{"command": ["true"]}], "key": "plans"})
    finally:
        cluster.call_soon(lambda: setattr(cluster.host.store.conn, "exec_trace", None))
    submit_plans = cluster.call_soon(lambda: _plans(cluster.host.store.conn, statements))
    assert submit_plans and not _scans(submit_plans), submit_plans

    settings = cluster.host_settings
    store = Store(Path(settings.data_dir) / "host.db", Host(settings).migrations)
    statements.clear()
    _tracing(store.conn, statements)
    HostCore(settings, store, OpTable(), "plans").load(cluster.host.core.now)
    store.conn.exec_trace = None
    load_plans = _plans(store.conn, statements)
    store.close()
    assert load_plans and not _scans(load_plans), load_plans


def test_a_usage_report_does_not_hold_the_loop(cluster):
    """The report is read in a worker thread: held there (as a week of a busy lab's rows
    would hold it), the host still answers a submit."""
    retention = cluster.host.retention
    reading, release = threading.Event(), threading.Event()
    original = retention._report

    def held(since, by):
        reading.set()
        assert release.wait(20)
        return original(since, by)

    retention._report = held
    answers: list = []
    asker = threading.Thread(target=lambda: answers.append(
        cluster.client(timeout=30).call("usage.report", {"since": 0})))
    asker.start()
    try:
        assert reading.wait(20), "usage.report never reached its read"
        task = cluster.client(timeout=5).call("task.submit",
                                              {"tasks": [{"command": ["true"]}]})["ids"][0]
        assert not answers
    finally:
        release.set()
        asker.join(30)
    assert answers and answers[0]["rows"] == [] and cluster.wait(task)[0]["state"] == "completed"


def test_a_pruned_dependency_of_a_waiting_task_counts_as_completed(tmp_path):
    """B waits on C and on A; A completed long ago and was pruned: after a restart B still
    waits on C alone, and runs once C completes."""
    settings = HostSettings(data_dir=str(tmp_path), security="none")
    store = Store(tmp_path / "host.db", Host(settings).migrations)
    for task_id, after in ((2, []), (3, [1, 2])):  # A = 1 (pruned), C = 2, B = 3
        spec = TaskSpec(["true"], after=after).to_wire()
        store.insert_task({"id": task_id, "name": "", "owner": "alice", "state": "pending",
                           "spec": spec, "submitted_at": NOW})
    core = HostCore(settings, store, OpTable(), "deps")
    core.load(core.now)
    assert core.deps.ended(2, "completed") == ([3], [])
    store.close()


def test_a_prune_batch_is_an_index_range(cluster):
    """Each batch reads the oldest rows through ``tasks_by_finished``: no scan, no sort of
    the finished rows (whatever other indexes on ``tasks`` tempt the planner)."""
    put_tasks(cluster, [shape(OLD - i) for i in range(3)])
    statements: list = []
    cluster.call_soon(lambda: _tracing(cluster.host.store.conn, statements))
    try:
        assert prune(cluster) == 3
    finally:
        cluster.call_soon(lambda: setattr(cluster.host.store.conn, "exec_trace", None))
    plans = cluster.call_soon(lambda: _plans(cluster.host.store.conn, statements))
    reads = [line for line in plans if "finished_at <" in line]
    assert reads and all("USING INDEX tasks_by_finished" in line for line in reads), plans
    assert not _scans(plans) and not [line for line in plans if "TEMP B-TREE" in line], plans
