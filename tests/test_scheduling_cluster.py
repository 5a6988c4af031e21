"""Scheduling end to end on a real in-process cluster of 3 runners that declare NUMA zones and
GPUs (runner settings ``numa_zones`` and ``gpus``): targets, GPUs, batches, sweeps, throttling,
dependencies, time limits, retries, drain, usage, degraded nodes."""

from __future__ import annotations

import time

import pytest

from zriver.errors import InvalidArgument, NotFound

LAYOUT = {
    "n1": {"numa_zones": "0-1;2-3", "memory": "8G"},
    "n2": {"numa_zones": "0-1;2-3", "memory": "8G", "gpus": 2},
    "n3": {"cores": 2, "memory": "8G", "gpus": 4},
}


@pytest.fixture
def lab(make_cluster):
    return make_cluster(LAYOUT)


def env_of(lab, task_id: int) -> dict[str, str]:
    lab.wait(task_id)
    pairs = [line.split("=", 1) for line in lab.log(task_id).decode().splitlines() if "=" in line]
    return dict(pairs)


SHOW = ["sh", "-c", "echo CORES=$ZRIVER_CORES; echo GPUS=${CUDA_VISIBLE_DEVICES-none}"]


def test_numa_target_gets_cores_of_that_zone(lab):
    task_id = lab.submit(SHOW, target="n1:1", cores=2)
    assert env_of(lab, task_id)["CORES"] == "2,3"
    assert lab.task(task_id)["numa_zone"] == 1


def test_gpu_ids_reach_the_task(lab):
    task_id = lab.submit(SHOW, target="n3::1,3")
    assert env_of(lab, task_id)["GPUS"] == "1,3"
    assert lab.task(task_id)["allocated_gpus"] == [1, 3]


def test_gpu_count_goes_to_a_node_with_enough_free_gpus(lab):
    task_id = lab.submit(SHOW, gpus=3)
    env = env_of(lab, task_id)
    assert lab.task(task_id)["node"] == "n3" and len(env["GPUS"].split(",")) == 3


def test_no_gpu_request_hides_gpus(lab):
    assert env_of(lab, lab.submit(SHOW, target="n3"))["GPUS"] == ""


@pytest.mark.parametrize("target, error, message", [
    ("n1:5", NotFound, "no NUMA zone 5"),
    ("n2::7", NotFound, "no GPU 7"),
    ("ghost", NotFound, "unknown node 'ghost'"),
    ("n1:x", InvalidArgument, "bad target"),
])
def test_bad_targets_are_refused_precisely(lab, target, error, message):
    with pytest.raises(error, match=message):
        lab.submit(["true"], target=target)


def test_busy_gpu_queues_instead_of_failing(lab, tmp_path):
    gate = tmp_path / "gate"
    first = lab.submit(["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done"], target="n2::0")
    lab.wait_state(first, {"running"})
    second = lab.submit(["true"], target="n2::0")
    assert lab.task(second)["state"] == "pending"
    assert "GPU" in lab.task(second)["detail"]
    gate.touch()
    assert lab.wait(second)[0]["state"] == "completed"


def test_one_batch_one_task_per_target(lab):
    ids = lab.submit_many([{"command": ["true"], "target": t} for t in ("n1", "n2:1", "n3::0")])
    lab.wait(*ids)
    rows = lab.client().call("task.list", {"batch": ids[0]})["tasks"]
    assert sorted(r["id"] for r in rows) == ids
    assert {r["node"] for r in rows} == {"n1", "n2", "n3"}


def test_sweep_with_max_parallel(lab):
    from zriver.sweep import expand

    commands = expand(["sh", "-c", "sleep 0.2; echo span:{1..3} span:[a,b]"])
    ids = lab.submit_many([{"command": c, "max_parallel": 2} for c in commands])
    summaries = lab.wait(*ids)
    assert {s["state"] for s in summaries} == {"completed"}
    outputs = sorted(lab.log(i).decode().strip() for i in ids)
    assert outputs == ["1 a", "1 b", "2 a", "2 b", "3 a", "3 b"]
    spans = [(lab.task(i)["started_at"], lab.task(i)["finished_at"]) for i in ids]
    most = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert most <= 2


def test_dependencies(lab):
    bad = lab.submit(["false"])
    good = lab.submit(["true"])
    after_bad = lab.submit(["true"], after=[bad])
    any_bad = lab.submit(["true"], after_any=[bad])
    after_good = lab.submit(["true"], after=[good, bad], after_any=[])
    chain = lab.submit(["true"], after=[after_bad])
    states = {s["id"]: s["state"] for s in lab.wait(bad, good, after_bad, any_bad, after_good, chain)}
    assert states == {bad: "failed", good: "completed", after_bad: "failed",
                      any_bad: "completed", after_good: "failed", chain: "failed"}
    assert lab.task(after_bad)["detail"] == f"dependency {bad} ended failed"
    assert lab.task(chain)["detail"] == f"dependency {after_bad} ended failed"


def test_waiting_dependants_say_what_they_wait_for(lab, tmp_path):
    gate = tmp_path / "gate"
    first = lab.submit(["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done"])
    waiter = lab.submit(["true"], after=[first])
    assert lab.task(waiter)["detail"] == f"waiting for task {first}"
    gate.touch()
    assert lab.wait(waiter)[0]["state"] == "completed"


def test_unknown_dependency_is_refused(lab):
    with pytest.raises(NotFound, match="no task 999"):
        lab.submit(["true"], after=[999])


def test_time_limit_ends_in_timeout(lab):
    task_id = lab.submit(["sleep", "30"], time_limit=0.5)
    [summary] = lab.wait(task_id)
    assert summary["state"] == "timeout"
    assert "time limit" in lab.task(task_id)["detail"]


def test_retries_run_again_and_count_attempts(lab, tmp_path):
    marker = tmp_path / "tried"
    task_id = lab.submit(["sh", "-c", f"if [ -e {marker} ]; then echo second; else touch {marker}; exit 5; fi"],
                         retries=2)
    [summary] = lab.wait(task_id)
    assert summary["state"] == "completed"
    task = lab.task(task_id)
    assert task["attempt"] == 2
    events = lab.client().call("task.get", {"id": task_id})["events"]
    assert [e["state"] for e in events].count("failed") == 1
    assert any(e["detail"].startswith("retry 1 of 2") for e in events)


def test_retries_run_out(lab):
    task_id = lab.submit(["false"], retries=1)
    assert lab.wait(task_id)[0]["state"] == "failed"
    assert lab.task(task_id)["attempt"] == 2


def test_drain_keeps_new_tasks_off_and_lets_running_ones_finish(lab, tmp_path):
    gate = tmp_path / "gate"
    running = lab.submit(["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done"], target="n1")
    lab.wait_state(running, {"running"})
    client = lab.client()
    client.call("node.drain", {"name": "n1", "reason": "maintenance"})
    waiting = lab.submit(["true"], target="n1")
    assert lab.task(waiting)["detail"] == "target node n1 is drained"
    gate.touch()
    assert lab.wait(running)[0]["state"] == "completed"
    node = next(n for n in client.call("node.list")["nodes"] if n["name"] == "n1")
    assert node["drained"] == "maintenance"
    client.call("node.undrain", {"name": "n1"})
    assert lab.wait(waiting)[0]["state"] == "completed"


def test_usage_report(lab):
    lab.wait(lab.submit(["sleep", "0.1"], cores=2), lab.submit(["sleep", "0.2"], target="n3::0"))
    rows = lab.client().call("usage.report", {"since": time.time() - 60, "by": "user"})["rows"]
    assert rows[0]["user"] == "test" and rows[0]["tasks"] == 2
    assert rows[0]["core_hours"] > 0 and rows[0]["gpu_hours"] > 0


def test_vanished_gpu_degrades_the_node(lab):
    client = lab.client()
    sub = client.subscribe(["evt.node.n3"])
    runner = lab.runners["n3"]
    try:
        lab.call_soon(lambda: setattr(runner.settings, "gpus", 3))
        while True:
            assert sub.poll(5000), "no node event"
            sub.recv_multipart()
            node = next(n for n in client.call("node.list")["nodes"] if n["name"] == "n3")
            if node["state"] == "degraded":
                break
        assert "vanished" in node["degraded"]
        task_id = lab.submit(["true"], target="n3")
        assert "degraded" in lab.task(task_id)["detail"]
        lab.call_soon(lambda: setattr(runner.settings, "gpus", 4))
        assert lab.wait(task_id)[0]["state"] == "completed"
    finally:
        sub.close(linger=0)
