"""Network partitions and host stalls, with real processes: never lose work, never run a task twice.

A ``zriver host`` binds the root-side address of a network namespace (``tests/netns.py``) and a
``zriver runner`` runs inside it, so ``NetNamespace.cut`` silences that node the way a pulled
cable does (no RST, no ICMP). A second runner in the root namespace (it reaches the host's
address over loopback) is "another node" where a retry needs one. Heartbeats every 0.25 s and
3 misses: the lease is 0.75 s. Every task appends a line to a marks file when it starts (and,
where the order matters, when it ends, with ``date +%s.%N``), so "ran exactly once" and "never
two at a time" are read from that file, not from what zriver says.

Cases:

1. the link is cut for longer than the lease (3 s) but shorter than the grace (20 s): the node
   and its running tasks show ``unreachable``, its staged work goes back to the queue; a task
   that finishes during the cut reports after the restore, the long one goes back to
   ``running`` and ends with its own exit code; nothing lost, nothing ran twice;
2. the link is cut for longer than the grace (3 s): the task (``retries: 1``) is ``lost`` and
   retried on the other node; the orphan on the cut node ended itself (self-fencing) before
   the retry started, so the two runs never overlap; after the restore the node comes back and
   nothing runs again;
3. the host is stopped (SIGSTOP) for 10 s, far longer than the lease: nothing is marked
   ``unreachable``, ``lost`` or ``offline``, the tasks run on and end normally.

Each prints the figures it observed (``-s`` shows them; ``docs/reliability.md`` records them).
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import msgpack
import pytest
import zmq

import netns
from netns import NetNamespace
from marks import gated, marks_of, quick, running_and_staged
from procs import Cluster, pid_alive

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

if netns.available():
    pytest.skip(netns.available(), allow_module_level=True)

HB = {"heartbeat_interval": 0.25, "heartbeat_misses": 3}  # lease 0.75 s
LEASE = 0.75
RUNNER = {"request_timeout": 1.0, "kill_grace": 0.5}


@pytest.fixture
def ns():
    with NetNamespace() as made:
        try:
            yield made
        finally:
            made.restore()


@pytest.fixture
def cluster(tmp_path: Path):
    with Cluster(tmp_path) as made:
        try:
            yield made
        finally:
            if made.host is not None and made.host.alive():
                os.kill(made.host.pid, signal.SIGCONT)  # a stopped host cannot be stopped
            print(made.diagnostics())


# ---- tasks ---------------------------------------------------------------------------------
def timed(cluster: Cluster, marks: Path, gate: Path, **spec) -> int:
    """Writes ``start <id> <node> <time> <pid>`` when it starts, ``term <id> <node> <time>``
    when SIGTERM ends it and ``end <id> <node> <time>`` when it sees ``gate``."""
    line = '$ZRIVER_TASK_ID $ZRIVER_NODE $(date +%s.%N)'
    script = (f"echo \"start {line} $$\" >> '{marks}'; "
              f"trap 'echo \"term {line}\" >> \"{marks}\"; exit 143' TERM; "
              f"while [ ! -e '{gate}' ]; do sleep 0.05; done; "
              f"echo \"end {line}\" >> '{marks}'")
    return cluster.submit(["sh", "-c", script], cores=1, **spec)


def timed_marks(marks: Path) -> list[tuple[str, int, str, float]]:
    """``(kind, id, node, wall time)`` per line of a ``timed`` marks file."""
    try:
        lines = marks.read_text().splitlines()
    except FileNotFoundError:
        return []
    return [(p[0], int(p[1]), p[2], float(p[3])) for p in (line.split() for line in lines)]


def pid_of(task: dict) -> int:
    """The pid from the task's latest ``running`` event (``pid N ...``)."""
    for event in reversed(task["events"]):
        found = re.search(r"\bpid (\d+)", event["detail"]) if event["state"] == "running" else None
        if found:
            return int(found.group(1))
    raise AssertionError(f"no pid in the running events of {task}")


def states(task: dict) -> list[str]:
    return [event["state"] for event in task["events"]]


def histories(task: dict) -> str:
    return " -> ".join(f"{e['state']} ({e['detail']})" for e in task["events"])


def no_lost(tasks: dict[int, dict]) -> None:
    lost = {tid: states(t) for tid, t in tasks.items() if "lost" in states(t)}
    assert not lost, f"tasks marked lost: {lost}"


def figures(name: str, **values) -> None:
    print(f"FIGURES {name}: " + ", ".join(f"{k}={v}" for k, v in values.items()))


# ---- 1: a cut shorter than the grace -------------------------------------------------------
def test_cut_shorter_than_the_grace_loses_nothing_and_runs_nothing_twice(
        ns: NetNamespace, cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_host(bind_address=ns.host_addr, unreachable_grace=20.0, **HB)
    cluster.start_runner("n1", netns=ns, cores=2, **RUNNER)
    marks, gate_long, gate_short = tmp_path / "marks", tmp_path / "gate-long", tmp_path / "gate-short"
    long_task = gated(cluster, marks, gate_long, 7)
    short_task = gated(cluster, marks, gate_short, 0)
    for task_id in (long_task, short_task):
        cluster.wait_task_state(task_id, "running", timeout=10)
    staged = [quick(cluster, marks) for _ in range(4)]
    for task_id in staged:
        task = cluster.wait_task_state(task_id, "assigned", timeout=10)
        assert "starts when task" in task["detail"], task
    cluster.wait_for(lambda: sorted(marks_of(marks)) == sorted([long_task, short_task]), 10,
                     "both gated tasks to start")
    short_pid = pid_of(cluster.task(short_task))

    ns.cut()
    cut_at = time.monotonic()
    try:
        cluster.wait_node_state("n1", "unreachable", timeout=10)
        unreachable_after = time.monotonic() - cut_at
        for task_id in (long_task, short_task):
            task = cluster.wait_task_state(task_id, "unreachable", timeout=5)
            assert "unreachable" in task["detail"], task
        for task_id in staged:  # never started: back to the queue once the lease surely ran out
            cluster.wait_task_state(task_id, "pending", timeout=10)
        requeued_after = time.monotonic() - cut_at
        gate_short.touch()  # it ends while its node is cut off
        cluster.wait_for(lambda: not pid_alive(short_pid), 10, "the short task to end")
        ended_wall = time.time()

        def held_for_3s() -> bool:  # the cut lasts 3 s (4 leases); meanwhile nothing is given up
            assert cluster.nodes()["n1"]["state"] == "unreachable"
            for task_id in (long_task, short_task):
                assert cluster.task(task_id)["state"] == "unreachable"
            return time.monotonic() - cut_at >= 3.0

        cluster.wait_for(held_for_3s, 10, "the cut to last 3 s")
    finally:
        ns.restore()
    restored_at, restored_wall = time.monotonic(), time.time()
    cut_for = restored_at - cut_at

    cluster.wait_node_state("n1", "online", timeout=20)
    online_after = time.monotonic() - restored_at
    cluster.wait_task_state(long_task, "running", timeout=10)
    short = cluster.wait_task_state(short_task, "completed", timeout=10)
    result_after = time.monotonic() - restored_at
    assert short["exit_code"] == 0, short
    ended = [e for e in short["events"] if e["state"] == "completed"][-1]
    assert ended["at"] <= restored_wall, "the end must be the one produced during the cut"
    assert abs(ended["at"] - ended_wall) < 2.0, (ended, ended_wall)

    gate_long.touch()
    tasks = cluster.wait_final([long_task, short_task] + staged, timeout=20)
    assert (tasks[long_task]["state"], tasks[long_task]["exit_code"]) == ("failed", 7)
    long_states = states(tasks[long_task])
    assert long_states[-3:] == ["unreachable", "running", "failed"], long_states
    for task_id in staged:
        assert (tasks[task_id]["state"], tasks[task_id]["exit_code"]) == ("completed", 0)
        assert "pending" in states(tasks[task_id])[2:], states(tasks[task_id])  # requeued
    no_lost(tasks)
    ran = marks_of(marks)
    twice = len(ran) - len(set(ran))
    assert sorted(ran) == sorted([long_task, short_task] + staged), f"each once, got {ran}"
    assert cluster.nodes()["n1"]["state"] == "online"
    for task_id in [long_task, short_task] + staged[:1]:
        print(f"history of task {task_id}: {histories(tasks[task_id])}")
    figures("cut-shorter-than-grace", submitted=6, completed=5, failed_with_own_code=1,
            lost=0, run_twice=twice, stuck=0, cut_s=f"{cut_for:.2f}",
            unreachable_after_s=f"{unreachable_after:.2f}",
            staged_requeued_after_s=f"{requeued_after:.2f}",
            online_after_restore_s=f"{online_after:.2f}",
            away_result_after_restore_s=f"{result_after:.2f}")


# ---- 2: a cut longer than the grace --------------------------------------------------------
def test_cut_longer_than_the_grace_fences_the_orphan_before_the_retry_runs_elsewhere(
        ns: NetNamespace, cluster: Cluster, tmp_path: Path) -> None:
    grace = 3.0
    cluster.start_host(bind_address=ns.host_addr, unreachable_grace=grace, **HB)
    cluster.start_runner("n1", netns=ns, cores=1, **RUNNER)
    marks, gate = tmp_path / "marks", tmp_path / "gate"
    task_id = timed(cluster, marks, gate, retries=1)
    first = cluster.wait_task_state(task_id, "running", timeout=10)
    assert first["node"] == "n1", first
    orphan = pid_of(first)
    cluster.wait_for(lambda: timed_marks(marks), 10, "the first run to start")
    cluster.start_runner("n2", cores=1, **RUNNER)  # on loopback: the cut does not reach it

    ns.cut()
    cut_at = time.monotonic()
    seen: dict[str, float] = {}
    try:
        cluster.wait_node_state("n1", "unreachable", timeout=10)
        seen["unreachable"] = time.monotonic() - cut_at
        cluster.wait_task_state(task_id, "unreachable", timeout=5)

        def retry_placed() -> dict | None:
            if "orphan_gone" not in seen and not pid_alive(orphan):
                seen["orphan_gone"] = time.monotonic() - cut_at
            task = cluster.task(task_id)
            if task["attempt"] >= 2:
                seen.setdefault("retried", time.monotonic() - cut_at)
                # the host gave the attempt up: the orphan must be gone already
                assert not pid_alive(orphan), f"attempt 1 still runs (pid {orphan}) at {task}"
                if task["state"] == "running":
                    return task
            return None

        second = cluster.wait_for(retry_placed, 15, "the retry to run")
        seen["retry_running"] = time.monotonic() - cut_at
        assert second["node"] == "n2", second
        assert cluster.nodes()["n1"]["state"] == "offline"
        cluster.wait_for(lambda: len(timed_marks(marks)) >= 3, 10, "the retry's start mark")
        gate.touch()
        done = cluster.wait_task_state(task_id, {"completed", "failed", "killed", "lost"}, 10)
    finally:
        ns.restore()
    restored_at = time.monotonic()
    assert (done["state"], done["exit_code"], done["node"]) == ("completed", 0, "n2"), done
    history = states(done)
    assert "lost" in history, history
    lost = [e for e in done["events"] if e["state"] == "lost"]
    assert lost[0]["detail"].startswith("attempt 1:"), lost
    assert history[history.index("lost") + 1] == "pending", history

    cluster.wait_node_state("n1", "online", timeout=20)
    online_after = time.monotonic() - restored_at
    # n1 reports the fenced end of attempt 1 when it registers: it changes nothing
    after = cluster.task(task_id)
    assert (after["state"], after["node"], after["attempt"]) == ("completed", "n2", 2), after

    lines = timed_marks(marks)
    starts = [line for line in lines if line[0] == "start"]
    assert [(s[2]) for s in starts] == ["n1", "n2"], lines
    first_end = [line for line in lines if line[0] in ("term", "end") and line[2] == "n1"]
    assert [line[0] for line in first_end] == ["term"], f"the orphan did not end by SIGTERM: {lines}"
    gap = starts[1][3] - first_end[0][3]
    assert gap > 0, f"the retry started {-gap:.3f} s before the orphan ended: {lines}"
    assert not [line for line in lines if line[0] == "end" and line[2] == "n1"], lines
    assert [line[0] for line in lines] == ["start", "term", "start", "end"], lines
    print(f"history of task {task_id}: {histories(after)}")
    figures("cut-longer-than-grace", submitted=1, completed=1, lost_then_retried=1,
            run_twice_at_once=0, stuck=0, grace_s=grace,
            unreachable_after_s=f"{seen['unreachable']:.2f}",
            orphan_gone_after_s=f"{seen.get('orphan_gone', float('nan')):.2f}",
            retried_after_s=f"{seen['retried']:.2f}",
            retry_running_after_s=f"{seen['retry_running']:.2f}",
            orphan_end_to_retry_start_s=f"{gap:.2f}",
            online_after_restore_s=f"{online_after:.2f}")


# ---- 3: the host stalls ----------------------------------------------------------------------
def drain(sub: zmq.Socket) -> list[tuple[str, dict]]:
    got = []
    while True:
        try:
            topic, frame = sub.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return got
        got.append((topic.decode(), msgpack.unpackb(frame, raw=False).get("body") or {}))


def test_a_host_stopped_for_10s_marks_nothing(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_host(heartbeat_interval=0.5, heartbeat_misses=3)  # lease 1.5 s
    cluster.start_runner("n1", cores=2, **RUNNER)
    sub = cluster.client().subscribe(["evt."])
    events: list[tuple[str, dict]] = []
    try:
        marks, gate = tmp_path / "marks", tmp_path / "gate"
        running, staged = running_and_staged(cluster, marks, gate, (0, 7), 2)

        def subscribed() -> bool:  # the SUB sees the host's events (a task event has come)
            events.extend(drain(sub))
            return any(topic.startswith("evt.task.") for topic, _ in events)

        cluster.wait_for(subscribed, 10, "the event subscription to work")
        pids = [pid_of(cluster.task(t)) for t in running]

        host = cluster.host
        os.kill(host.pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        try:
            def stalled_10s() -> bool:  # the tasks run on all along
                assert all(pid_alive(pid) for pid in pids), "a task died during the stall"
                return time.monotonic() - stopped_at >= 10.0

            cluster.wait_for(stalled_10s, 20, "the stall to last 10 s")
        finally:
            os.kill(host.pid, signal.SIGCONT)
        continued_at = time.monotonic()
        stall = continued_at - stopped_at
        cluster.call("cluster.hello")
        answered_after = time.monotonic() - continued_at
        nodes = cluster.nodes()
        assert nodes["n1"]["state"] == "online", nodes
        for task_id in running:
            assert cluster.task(task_id)["state"] == "running"

        gate.touch()
        tasks = cluster.wait_final(running + staged, timeout=20)
        done_after = time.monotonic() - continued_at
        events.extend(drain(sub))
    finally:
        sub.close()
    for task_id, code in zip(running, (0, 7)):
        assert tasks[task_id]["exit_code"] == code, tasks[task_id]
    for task_id in staged:
        assert (tasks[task_id]["state"], tasks[task_id]["exit_code"]) == ("completed", 0)
    no_lost(tasks)
    marked = {tid: states(t) for tid, t in tasks.items()
              if {"unreachable", "pending"} & set(states(t)[1:])}
    assert not marked, f"tasks moved by the stall: {marked}"
    node_events = [body for topic, body in events if topic.startswith("evt.node.")]
    print(f"node events: {node_events}")
    node_states = [body.get("state") for body in node_events]
    assert not {"unreachable", "offline"} & set(node_states), node_states
    ran = marks_of(marks)
    assert sorted(ran) == sorted(running + staged), f"each once, got {ran}"
    stalls = re.findall(r"host\.stalled\s+seconds=([\d.]+)", cluster.host.log.read_text())
    assert stalls and max(map(float, stalls)) >= 9.5, f"the host did not notice: {stalls}"
    figures("host-sigstop", submitted=4, completed=3, failed_with_own_code=1, lost=0,
            run_twice=len(ran) - len(set(ran)), stuck=0, stall_s=f"{stall:.2f}",
            node_states_seen=node_states or "none", host_logged_stall_s=max(map(float, stalls)),
            host_answered_after_sigcont_s=f"{answered_after:.3f}",
            all_final_after_sigcont_s=f"{done_after:.2f}")


# ---- 4: the host stalls for longer than the grace ------------------------------------------
def test_a_host_stalled_past_the_grace_retries_what_the_runner_fenced(
        cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_host(unreachable_grace=2.0, **HB)
    cluster.start_runner("n1", cores=1, **RUNNER)
    marks, gate = tmp_path / "marks", tmp_path / "gate"
    task_id = gated(cluster, marks, gate, 0, retries=1)
    pid = pid_of(cluster.wait_task_state(task_id, "running", timeout=10))
    os.kill(cluster.host.pid, signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:  # 4 s: past the runner's fence (about 0.75 s) and the host's grace (2 s)
        cluster.wait_for(lambda: time.monotonic() - stopped_at >= 4.0, 10, "a 4 s stall")
        fenced = not pid_alive(pid)
    finally:
        os.kill(cluster.host.pid, signal.SIGCONT)
    assert fenced, "the runner did not fence its task during a stall past the grace"

    def ended_or_rerun() -> dict | None:
        task = cluster.task(task_id)
        if task["state"] in ("completed", "failed", "killed", "lost"):
            return task
        if task["attempt"] >= 2 and len(marks_of(marks)) >= 2:
            gate.touch()  # the retry runs: let it end
        return None

    task = cluster.wait_for(ended_or_rerun, 20, "the fenced task to end or run again")
    print(f"history of task {task_id}: {histories(task)}")
    assert (task["state"], task["attempt"]) == ("completed", 2), histories(task)
    assert marks_of(marks) == [task_id, task_id]
