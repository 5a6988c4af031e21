"""The pure pieces of `zriver top` and the shell: the cluster model, the line drawing, completion.

Tables of cases, plain asserts, no sockets: the model is fed rows and pushed messages exactly as
the host sends them (``node.list`` / ``task.list`` rows, ``evt.task.*``, ``evt.node.*``,
``hb.*`` bodies).
"""

from __future__ import annotations

import pytest

from zriver.client import topview as tv
from zriver.client.completion import NodeInfo, TaskInfo, candidates, split_line
from zriver.client.live import env_names
from zriver.client.topmodel import EVENTS, NODES, TASKS, ClusterModel

NOW = 1_000_000.0


def node_row(name, state="online", cores=4, zones=2, gpus=0, **extra):
    return {"name": name, "state": state, "cores": cores, "cores_used": 0, "memory": 8 << 30,
            "memory_used": 0, "numa_zones": zones,
            "gpus": [{"index": i, "name": "FakeGPU", "memory": 1 << 34} for i in range(gpus)],
            **extra}


def task_row(task_id, state="pending", node=None, cores=1, name="", owner="ann", **extra):
    return {"id": task_id, "name": name or f"t{task_id}", "state": state, "node": node,
            "cores": cores, "memory": 1 << 30, "gpus": 0, "owner": owner,
            "submitted_at": NOW - 60, "started_at": None, "detail": "", "exit_code": None,
            **extra}


def evt(task_id, state, node=None, name="", exit_code=None, detail=""):
    return (f"evt.task.{task_id}", {"id": task_id, "state": state, "node": node, "name": name,
                                    "exit_code": exit_code, "detail": detail})


def model_with(nodes=(), tasks=()):
    model = ClusterModel()
    model.load([node_row(n) if isinstance(n, str) else n for n in nodes], list(tasks), NOW)
    return model


# ---- ordering and counting -----------------------------------------------------------------
def test_tasks_are_shown_running_first_then_pending_in_queue_order():
    model = model_with(["n1"], [task_row(5), task_row(2, "running", "n1"), task_row(3),
                                task_row(9, "paused", "n1"), task_row(7, "assigned", "n1")])
    assert model.task_ids() == [2, 9, 7, 3, 5]
    assert model.summary().running == 2 and model.summary().pending == 2
    assert model.summary().paused == 1


@pytest.mark.parametrize("events, order, counts", [
    # a pending task starts: it moves to the running group
    ([evt(3, "assigned", "n1"), evt(3, "running", "n1")], [2, 3, 5], (2, 1)),
    # a running task ends: it leaves the view
    ([evt(2, "completed", "n1", exit_code=0)], [3, 5], (0, 2)),
    # an unknown task shows up through an event (submitted after the snapshot)
    ([evt(11, "assigned", "n1", name="new")], [2, 11, 3, 5], (2, 2)),
    # a retry puts a running task back in the queue (pending, no node)
    ([evt(2, "pending", None, detail="retry 1 of 2 after failed")], [2, 3, 5], (0, 3)),
    # a duplicate end is harmless
    ([evt(2, "failed", "n1", exit_code=1), evt(2, "failed", "n1", exit_code=1)], [3, 5], (0, 2)),
])
def test_task_events_move_rows(events, order, counts):
    model = model_with(["n1"], [task_row(5), task_row(2, "running", "n1"), task_row(3)])
    for topic, body in events:
        assert model.apply(topic, body, NOW) == TASKS
    assert model.task_ids() == order
    s = model.summary()
    assert (s.running, s.pending) == counts


def test_node_use_follows_the_tasks_not_polling():
    model = model_with(["n1", "n2"], [task_row(1, "running", "n1", cores=3),
                                      task_row(2, "pending", cores=2)])
    assert (model.nodes["n1"].cores_used, model.nodes["n1"].tasks) == (3, 1)
    model.apply(*evt(2, "assigned", "n2"), NOW)
    assert model.nodes["n2"].cores_used == 2
    model.apply(*evt(7, "assigned", "n2"), NOW)  # cores unknown until its row is fetched
    assert model.unknown_tasks == {7} and model.nodes["n2"].tasks == 2
    model.apply(*evt(1, "completed", "n1", exit_code=0), NOW)
    assert (model.nodes["n1"].cores_used, model.nodes["n1"].memory_used) == (0, 0)
    model.upsert_task(task_row(7, "assigned", "n2", cores=1))
    assert model.nodes["n2"].cores_used == 3 and not model.unknown_tasks


def test_a_row_read_before_an_event_does_not_undo_it():
    """Rows and events travel on two sockets: the ``task.get`` row of a task, read in the
    tick that started it, may arrive after the start's event (and stayed ``assigned``)."""
    model = model_with(["n1"], [task_row(1, "running", "n1", seq=4)])
    model.apply("evt.task.2", {**evt(2, "assigned", "n1", name="eval")[1], "seq": 5}, NOW)
    model.apply("evt.task.2", {**evt(2, "running", "n1", name="eval")[1], "seq": 6}, NOW)
    model.upsert_task(task_row(2, "assigned", "n1", name="eval", cores=3, seq=5))
    task = model.lookup(2)
    assert (task.state, task.cores, task.known) == ("running", 3, True)
    assert model.count("running") == 2 and model.count("assigned") == 0
    model.upsert_task(task_row(2, "completed", "n1", name="eval", exit_code=0, seq=7))
    assert model.lookup(2).state == "completed" and model.count("running") == 1


def test_an_event_the_snapshot_includes_is_ignored():
    model = model_with(["n1"], [task_row(1, "running", "n1", seq=9)])
    assert model.apply("evt.task.1", {**evt(1, "assigned", "n1")[1], "seq": 8}, NOW) is None
    assert model.lookup(1).state == "running" and model.count("running") == 1
    model.apply("evt.task.1", {**evt(1, "completed", "n1", exit_code=0)[1], "seq": 10}, NOW)
    assert model.lookup(1).state == "completed" and model.count("running") == 0


def test_snapshot_replaces_tasks_and_keeps_heartbeats():
    model = model_with(["n1"], [task_row(1, "running", "n1", cores=2)])
    model.apply("hb.n1", {"cpu_percent": 50.0, "memory_used": 1, "memory_total": 4}, NOW)
    model.load([node_row("n1")], [task_row(1, "running", "n1", cores=2)], NOW + 30)
    assert model.nodes["n1"].cpu_percent == 50.0
    assert model.nodes["n1"].cores_used == 2  # recomputed, not added twice
    assert model.nodes["n1"].memory_percent == 25.0


def test_refresh_pending_updates_reasons_and_drops_what_moved_on():
    model = model_with(["n1"], [task_row(1), task_row(2), task_row(3, "running", "n1")])
    model.refresh_pending([task_row(2, detail="waiting for 2 cores on n1")])
    assert model.task_ids() == [3, 2]
    assert model.tasks[2].detail == "waiting for 2 cores on n1"


@pytest.mark.parametrize("topic, body, status, reason", [
    ("evt.node.n1", {"name": "n1", "state": "offline", "reason": "missed heartbeats"},
     "offline", "missed heartbeats"),
    ("evt.node.n1", {"name": "n1", "state": "online", "drained": "disk swap"}, "drained",
     "disk swap"),
    ("evt.node.n1", {"name": "n1", "state": "degraded", "reason": "GPU 1 gone"}, "degraded",
     "GPU 1 gone"),
])
def test_node_events(topic, body, status, reason):
    model = model_with(["n1"])
    assert model.apply(topic, body, NOW) == NODES
    assert (model.nodes["n1"].status, model.nodes["n1"].reason) == (status, reason)
    assert model.event_list()[0].text.startswith(f"node n1 {status}")


def test_unknown_node_from_a_heartbeat_is_listed_for_fetching():
    model = model_with(["n1"])
    model.apply("hb.n9", {"cpu_percent": 1.0}, NOW)
    assert "n9" in model.unknown_nodes and "n9" in model.node_names()
    model.load_nodes([node_row("n9")])
    assert not model.unknown_nodes


@pytest.mark.parametrize("heartbeat_gpus, held, drained, free", [
    ([], 0, None, 2),
    ([{"index": 0, "utilization": 95}, {"index": 1, "utilization": 0}], 0, None, 1),
    ([{"index": 0, "utilization": 0}, {"index": 1, "utilization": 0}], 2, None, 0),
    ([], 0, "maintenance", 0),
])
def test_free_gpus(heartbeat_gpus, held, drained, free):
    model = model_with([node_row("g1", gpus=2, drained=drained)],
                       [task_row(1, "running", "g1", allocated_gpus=list(range(held)))])
    model.apply("hb.g1", {"gpus": heartbeat_gpus}, NOW)
    assert model.nodes["g1"].gpus_free == free
    assert model.summary().gpus_free == free


# ---- filters -------------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("", [1, 2, 5, 3, 4]),
    ("train", [1, 3]),
    ("TRAIN", [1, 3]),
    ("state:pend", [3, 4]),
    ("state:run train", [1]),
    ("node:n2", [2, 5]),
    ("node=n2", [2]),
    ("NODE=N2 state:run", [2]),
    ("id=1", [1]),
    ("owner:bob", [4]),
    ("nothing-like-this", []),
])
def test_task_filter(text, expected):
    model = model_with(["n1", "n2"], [
        task_row(1, "running", "n1", name="train-a"), task_row(2, "running", "n2", name="eval"),
        task_row(3, name="train-b"), task_row(4, name="prep", owner="bob"),
        task_row(5, "assigned", "n20", name="other")])
    model.set_filter(TASKS, text)
    assert model.task_ids() == expected


def test_filters_are_per_view_and_events_are_newest_first():
    model = model_with(["a1", "b1"], [task_row(1, "running", "a1")])
    model.set_filter(NODES, "b")
    model.apply(*evt(1, "completed", "a1", exit_code=0), NOW)
    model.apply("evt.node.b1", {"name": "b1", "state": "offline", "reason": "x"}, NOW + 1)
    assert model.node_names() == ["b1"] and model.task_ids() == []
    assert [e.kind for e in model.event_list()] == ["node", "task"]
    model.set_filter(EVENTS, "task 1")
    assert [e.subject for e in model.event_list()] == ["1"]


def test_ten_thousand_tasks_one_event_costs_little():
    import time

    model = model_with([f"n{i}" for i in range(100)],
                       [task_row(i, "pending") for i in range(1, 10_001)])
    started = time.perf_counter()
    for i in range(1, 201):
        model.apply(*evt(i, "assigned", f"n{i % 100}"), NOW)
        model.task_ids()[:50]
    per_event = (time.perf_counter() - started) / 200
    assert model.task_ids()[:2] == [1, 2] and len(model.task_ids()) == 10_000
    assert per_event < 0.02, f"{per_event * 1000:.2f} ms per event"


# ---- lines ---------------------------------------------------------------------------------
@pytest.mark.parametrize("width", [20, 60, 140])
def test_lines_fill_exactly_the_width(width):
    model = model_with([node_row("n1", gpus=1)], [task_row(1, "running", "n1", name="x" * 50)])
    model.apply("hb.n1", {"cpu_percent": 91.0, "memory_used": 1, "memory_total": 2,
                          "gpus": [{"index": 0, "utilization": 40}], "load": [1.5]}, NOW)
    model.apply(*evt(1, "paused", "n1"), NOW)
    lines = [tv.node_header(width, 4), tv.node_line(model.nodes["n1"], width, 4, NOW),
             tv.task_header(width), tv.task_line(model.tasks[1], width, NOW),
             tv.event_header(width), tv.event_line(model.event_list()[0], width)]
    for line in lines:
        assert sum(len(text) for _, text in line) == width


def test_bars():
    assert "".join(t for _, t in tv.bar(50, 10)) == "█████·····"
    assert tv.bar(95, 4)[0][0] == "class:bar.high"
    assert "".join(t for _, t in tv.bar(None, 3)) == "···"


# ---- completion ----------------------------------------------------------------------------
class FakeSource:
    def tasks(self):
        return [TaskInfo(12, "train", "running"), TaskInfo(11, "eval", "pending"),
                TaskInfo(3, "prep", "completed")]

    def nodes(self):
        return [NodeInfo("gpu1", "online", 2, ((0, "A100"), (1, "A100"))),
                NodeInfo("cpu1", "online", 1, ())]

    def envs(self):
        return ["torch", "jax"]


@pytest.mark.parametrize("line, expected", [
    ("", {"submit", "tasks", "logs", "kill", "help", "exit", "top", "node"}),
    ("su", {"submit"}),
    ("help lo", {"logs"}),
    ("logs ", {"12", "11", "3"}),
    ("logs 1", {"12", "11"}),
    ("logs tra", {"12"}),
    ("kill 12 ", {"12", "11", "3"}),
    ("tasks --st", {"--state"}),
    ("tasks --state ", {"pending", "assigned", "running", "paused", "completed", "failed",
                        "killed", "killed_oom", "lost", "timeout", "unreachable"}),
    ("tasks --state r", {"running"}),
    ("health ", {"gpu1", "cpu1"}),
    ("submit --target g", {"gpu1", "gpu1:0", "gpu1:1", "gpu1::0", "gpu1::1"}),
    ("submit --target gpu1::", {"gpu1::0", "gpu1::1"}),
    ("submit --target=cp", {"cpu1", "cpu1:0"}),
    ("submit --container ", {"torch", "jax"}),
    ("submit --cores 2 -- pyth", set()),
    ("init ", {"config", "keys", "service"}),
    ("shell ", set()),
])
def test_completion(line, expected):
    found = {c.text for c in candidates(line, FakeSource())}
    assert expected <= found if line == "" else found == expected, found


def test_completion_shows_task_names_and_flag_help():
    by_text = {c.text: c for c in candidates("logs ", FakeSource())}
    assert by_text["12"].meta == "train · running"
    flags = {c.text: c.meta for c in candidates("submit --co", FakeSource())}
    assert "cores" in flags["--cores"]
    assert "--cores" not in {c.text for c in candidates("submit --cores 2 --co", FakeSource())}
    assert "shell" not in {c.text for c in candidates("", FakeSource())}


@pytest.mark.parametrize("line, words, current", [
    ("logs 1", ["logs"], "1"),
    ("submit --name 'my run' --ta", ["submit", "--name", "my run"], "--ta"),
    ("tasks ", ["tasks"], ""),
])
def test_split_line(line, words, current):
    assert split_line(line) == (words, current)
    assert isinstance(candidates("submit --name 'my ru", FakeSource()), list)  # open quote


@pytest.mark.parametrize("reply, names", [
    ({"envs": [{"name": "torch"}, {"name": "jax"}]}, ["jax", "torch"]),
    ({"environments": ["a", "b"]}, ["a", "b"]),
    ({"count": 0}, []),
])
def test_env_names(reply, names):
    assert env_names(reply) == names


# ---- a bounded window and counts of the whole cluster --------------------------------------
def batch_evt(batch_id, count, first, name="sweep"):
    return (f"evt.batch.{batch_id}", {"batch_id": batch_id, "count": count, "first_id": first,
                                      "last_id": first + count - 1, "state": "pending",
                                      "owner": "ann", "name": name})


def windowed(counts, rows, window=3):
    model = ClusterModel(pending_window=window)
    model.load([node_row("n1")], rows, NOW, counts)
    return model


def test_counts_come_from_the_host_not_from_the_rows_held():
    model = windowed({"pending": 100_000, "running": 1},
                     [task_row(1, "running", "n1")] + [task_row(i) for i in (99_998, 99_999)])
    s = model.summary()
    assert (s.running, s.pending) == (1, 100_000)
    assert model.total() == 100_001 and model.held() == 3
    model.set_counts({"pending": 99_000, "running": 2})
    assert model.total() == 99_002


def test_a_big_submit_is_counted_from_its_summary_event():
    model = windowed({"pending": 2, "running": 0}, [task_row(1), task_row(2)])
    assert model.apply(*batch_evt(3, 100_000, 3), NOW) == TASKS
    assert model.count("pending") == 100_002 and model.held() == 2  # no rows held for it
    assert "batch 3 (sweep): 100000 tasks submitted" in model.event_list()[0].text
    model.apply(*evt(50_000, "assigned", "n1"), NOW)  # one of them, outside the window
    assert (model.count("pending"), model.count("assigned")) == (100_001, 1)
    model.apply(*evt(100_003, "pending", detail="submitted"), NOW)  # a task newer than all
    assert model.count("pending") == 100_002


@pytest.mark.parametrize("body, moved", [
    ({"state": "running"}, ("assigned", "running")),
    ({"state": "completed", "exit_code": 0}, ("running", "completed")),
    ({"state": "running", "passed": ["assigned"]}, ("pending", "running")),
    ({"state": "killed", "detail": "killed while pending"}, ("pending", "killed")),
])
def test_a_task_outside_the_window_moves_the_usual_counts(body, moved):
    model = windowed({"pending": 10, "assigned": 10, "running": 10}, [task_row(20)])
    before = {state: model.count(state) for state in moved}
    model.apply("evt.task.7", {"id": 7, **body}, NOW)
    assert model.count(moved[0]) == before[moved[0]] - 1
    assert model.count(moved[1]) == before[moved[1]] + 1


def test_events_of_tasks_in_the_window_move_counts_exactly_and_the_window_stays_bounded():
    model = windowed({"pending": 3}, [task_row(1), task_row(2), task_row(3)])
    for task_id in (4, 5):  # submitted after the snapshot: new, counted in, held
        model.apply(*evt(task_id, "pending", detail="submitted"), NOW)
    assert model.count("pending") == 5
    assert model.task_ids() == [3, 4, 5]  # the newest 3 pending held; 1 and 2 let go
    model.apply(*evt(5, "killed"), NOW)
    assert model.count("pending") == 4 and model.count("killed") == 1
    model.apply(*evt(1, "assigned", "n1"), NOW)  # one let go comes back through its event
    assert model.task_ids() == [1, 3, 4] and model.count("assigned") == 1
    model.refresh_pending([task_row(4), task_row(3)])  # the newest pending, re-read
    assert model.task_ids() == [1, 3, 4] and model.count("pending") == 3
