"""`zriver top` as a person uses it: a real terminal (tmux), a real cluster, keys, the screen.

The big-cluster test registers 100 fake runners (DEALER sockets with identities ``r:<name>``
that never run anything) and submits 10,000 tasks (400 get assigned to the fake nodes, the rest
wait), then checks the dashboard through the terminal and measures, in-process, what one pushed
event costs: applying it to the model plus drawing a full screen of the tasks view.
"""

from __future__ import annotations

import time

import pytest

from test_shell import needs_tmux, screens, zriver_argv  # noqa: F401  (screens: a fixture)
from fakerunners import FakeRunners, keep_online

FAKE_NODES = 100
TASKS = 10_000


@pytest.fixture
def home(tmp_path):
    path = tmp_path / "home"
    path.mkdir()
    return path


@needs_tmux
def test_live_views_keys_and_resize(cluster, home, screens):
    ticker = cluster.submit(["sh", "-c", "i=0; while true; do i=$((i+1)); echo tick $i; "
                                         "sleep 0.05; done"], name="ticker")
    waiter = cluster.submit(["sleep", "30"], name="waiter", cores=2)  # waits: 1 core is free
    cluster.wait_state(ticker, {"running"})
    screen = screens(home, zriver_argv(cluster, "top"), width=130, height=24)

    screen.wait("1/1 nodes online │ 1 running · 1 pending")
    screen.wait_re(r"^n1\s+online\s+.*%.*\s1/2\s")  # bars from heartbeats, 1 of 2 cores held
    screen.keys("2")
    screen.wait_re(rf"^\s+{ticker}\s+ticker\s+running\s+n1")
    row = screen.wait_re(rf"^\s+{waiter}\s+waiter\s+pending\s+-\s+2\s.*(waiting.*)$")
    assert "cores" in row.group(1)  # the reason it waits

    screen.keys("Enter")  # the selected (first) row: follow its log
    screen.wait(f"task {ticker} (ticker) · running · stdout")
    first = int(screen.wait_re(r"^tick (\d+)").group(1))
    screen.wait_re(rf"^tick {first + 20}\b")  # it moves by itself: pushed log chunks
    screen.keys("Escape")
    screen.wait_re(rf"^\s+{waiter}\s+waiter")

    screen.keys("/")
    screen.type("state:pend")
    screen.wait(lambda s: "waiter" in s and "ticker" not in s)
    screen.keys("Enter")
    screen.wait("filter: state:pend")
    screen.keys("Escape")
    screen.wait(lambda s: "waiter" in s and "ticker" in s)

    assert "waiter" in screen.highlighted()[0]  # the selection followed its row
    screen.keys("Home")
    screen.wait(lambda s: "ticker" in screen.highlighted()[0])
    screen.keys("k")
    screen.wait(f"kill task {ticker} (ticker)? [y/N]")
    screen.keys("n")
    screen.wait("cancelled")
    screen.wait_re(rf"^\s+{ticker}\s+ticker\s+running")
    screen.keys("k")
    screen.wait(f"kill task {ticker} (ticker)? [y/N]")
    screen.keys("y")
    screen.wait(f"kill requested for task {ticker}")
    # the kill frees the cores: the waiting task starts, and the screen shows it unprompted
    screen.wait_re(rf"^\s+{waiter}\s+waiter\s+running\s+n1")
    screen.wait(lambda s: "ticker" not in s.split("\n", 3)[3])
    screen.wait(lambda s: "waiter" in screen.highlighted()[0])
    screen.keys("p")
    screen.wait(f"pause task {waiter} (waiter)? [y/N]")
    screen.keys("y")
    screen.wait_re(rf"^\s+{waiter}\s+waiter\s+paused\s+n1")
    screen.keys("r")
    screen.wait(f"resume task {waiter} (waiter)? [y/N]")
    screen.keys("y")
    screen.wait_re(rf"^\s+{waiter}\s+waiter\s+running\s+n1")

    screen.keys("3")
    screen.wait(f"task {ticker} (ticker) killed")

    screen.resize(64, 14)
    screen.wait(lambda s: fits(s, 64, 14) and s.split("\n")[13].startswith(" 1-3/Tab views"))
    screen.keys("1")
    screen.wait_re(r"^n1\s+online")
    screen.resize(150, 30)
    screen.wait("HEARTBEAT")  # the widest column is back
    screen.keys("q")
    assert screen.wait_exit() == 0


def fits(screen: str, width: int, height: int) -> bool:
    """The screen was redrawn for ``width`` x ``height``: that many lines, none wider."""
    lines = screen.rstrip("\n").split("\n")
    return len(lines) == height and all(len(line) <= width for line in lines)


# ---- 100 nodes, 10,000 tasks --------------------------------------------------------------
@pytest.fixture
def big_cluster(make_cluster):
    # every task is pending or placed; fake runners are plain DEALERs (no keys)
    cluster = make_cluster({}, host={"prefetch": False, "security": "none"})

    cluster.call_soon(lambda: keep_online(cluster))
    fakes = FakeRunners(cluster.endpoint, FAKE_NODES)
    specs = [{"command": ["true"], "name": f"job{i}", "cores": 1} for i in range(TASKS)]
    cluster.client(timeout=120).call("task.submit", {"tasks": [
        {"workdir": str(cluster.root), "owner": "test", **spec} for spec in specs]})
    yield cluster
    fakes.close()


@needs_tmux
def test_a_hundred_nodes_and_ten_thousand_tasks(big_cluster, home, screens):
    cluster = big_cluster
    started = time.monotonic()
    screen = screens(home, zriver_argv(cluster, "top", "--view", "tasks"), width=160, height=45)
    screen.wait("100/100 nodes online │ 400 running · 9600 pending", timeout=30)
    screen.wait(" 2 Tasks 10000 ")
    loaded = time.monotonic() - started
    print(f"\ntop: 100 nodes and 10,000 tasks on screen {loaded:.2f}s after start")

    screen.keys("End")
    screen.wait_re(r"^\s+10000\s+job9999\s+pending")
    assert "job9999" in screen.highlighted()[0]
    screen.keys("Home")
    screen.wait_re(r"^\s+1\s+job0\s+assigned\s+fake")

    begin = time.monotonic()
    cluster.client().call("task.kill", {"id": TASKS})  # the last pending task
    screen.wait(" 2 Tasks 9999 ")
    print(f"top: a kill elsewhere shown {time.monotonic() - begin:.3f}s later")

    screen.keys("/")
    screen.type("job999")  # the filter looks at the rows held: the newest 1,000 pending
    screen.wait(lambda s: " job9990 " in s and " job9998 " in s and "job0 " not in s)
    screen.keys("Escape")
    screen.wait(lambda s: "filter: job999" not in s and "job0 " in s)
    screen.keys("1")
    screen.wait_re(r"^fake000\s+online\s+.*\s4/4\s")
    screen.wait(" 1 Nodes 100 ")
    screen.keys("End")
    screen.wait_re(r"^fake099\s+online\s+.*\s4/4\s")
    screen.resize(90, 20)
    screen.wait(lambda s: fits(s, 90, 20) and "fake099" in s)
    screen.keys("q")
    assert screen.wait_exit() == 0


def test_one_event_and_a_redraw_stay_cheap_at_ten_thousand_tasks(big_cluster):
    """The frame budget: apply a pushed event and draw a 200x60 screen of tasks."""
    from prompt_toolkit.application import create_app_session
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput

    from zriver.client.registry import Context
    from zriver.client.top import Top

    client = big_cluster.client(timeout=30)
    nodes = client.call("node.list")["nodes"]
    tasks, before = [], None
    for _ in range(TASKS // 1000 + 1):  # pages of 1,000 (the host's most)
        reply = client.call("task.list", {"states": ["pending", "assigned", "running",
                                                     "paused"], "limit": 1000, "before": before})
        tasks += reply["tasks"]
        before = reply["next"]
        if before is None:
            break
    assert len(nodes) == FAKE_NODES and len(tasks) == TASKS
    ctx = Context(host=big_cluster.endpoint)
    with create_pipe_input() as pipe, create_app_session(input=pipe, output=DummyOutput()):
        top = Top(ctx, "tasks")
        begin = time.perf_counter()
        top.model.load(nodes, tasks, time.time())
        load = time.perf_counter() - begin
        top.render(200, 60)
        timings = []
        for n, task in enumerate(tasks[:300]):
            topic = f"evt.task.{task['id']}"
            state = "killed" if task["state"] == "pending" else "running"
            begin = time.perf_counter()
            top.model.apply(topic, {"id": task["id"], "state": state, "node": task["node"],
                                    "name": task["name"], "exit_code": None, "detail": ""},
                            time.time())
            top.model.apply(f"hb.fake{n % FAKE_NODES:03d}",
                            {"cpu_percent": 50.0, "memory_used": 1, "memory_total": 2}, 0.0)
            top.view = ("tasks", "nodes")[n % 2]
            lines = top.render(200, 60)
            timings.append(time.perf_counter() - begin)
            assert len(lines) == 60
        ctx.close()
    timings.sort()
    mean = sum(timings) / len(timings)
    print(f"\nmodel load of 10,000 tasks: {load * 1000:.1f} ms; per event + full redraw: "
          f"mean {mean * 1000:.2f} ms, p95 {timings[int(len(timings) * 0.95)] * 1000:.2f} ms, "
          f"max {timings[-1] * 1000:.2f} ms")
    assert mean < 0.02, "one event and a redraw must fit well inside a 10 fps frame"
