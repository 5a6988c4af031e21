"""The host's VPS rules with no I/O: never lost, stop/restart/ownership, the idle rule.

Uses the core harness of ``test_core`` (a real store in a temp dir, effects inspected)."""

from __future__ import annotations

import pytest

from test_core import ALICE, BOB, INFO, N1, Harness
from zriver.host.effects import Command, Refuse
from zriver.host.vpscore import IDLE_CPU_PERCENT, idle_since

DOCKER_INFO = {**INFO, "backends": ["native", "docker"]}
VPS = {"command": [], "kind": "vps", "backend": "docker", "container": "dev",
       "env_version": "0123456789ab", "ssh_keys": ["ssh-ed25519 AAAA test"]}


@pytest.fixture
def h(tmp_path):
    harness = Harness(tmp_path)
    harness.register(DOCKER_INFO)
    yield harness
    harness.store.close()


def running_vps(h, spec=None) -> int:
    answer, _ = h.reply(ALICE, "task.submit", {"tasks": [spec or VPS]})
    task_id = answer.body["ids"][0]
    h.scheduled()
    h.reply(N1, "task.update", {"name": "n1", "updates": [
        {"id": task_id, "attempt": 1, "state": "running", "at": h.clock.wall}]})
    assert h.store.get_task(task_id)["state"] == "running"
    return task_id


def commands(effects, op="task.signal") -> list[dict]:
    return [e.body for e in effects if isinstance(e, Command) and e.op == op]


def test_a_vps_outlives_its_node_s_grace_unreachable_then_running_again(h):
    vps = running_vps(h)
    answer, _ = h.reply(ALICE, "task.submit", {"tasks": [{"command": ["sleep", "99"]}]})
    task = answer.body["ids"][0]
    h.scheduled()
    h.reply(N1, "task.update", {"name": "n1", "updates": [
        {"id": task, "attempt": 1, "state": "running", "at": h.clock.wall}]})
    for _ in range(30):  # 15 s of silence: past the lease (3 s) and the grace (10 s)
        h.apply(h.core.judge_liveness(h.later(0.5)))
    assert h.core.nodes["n1"].state == "offline"
    assert h.store.get_task(task)["state"] == "lost"
    assert h.store.get_task(vps)["state"] == "unreachable"
    answer, _ = h.reply(N1, "runner.register", {"name": "n1", "info": DOCKER_INFO,
                                                 "tasks": [{"id": vps, "attempt": 1}]})
    assert vps not in answer.body["stop"]
    assert h.store.get_task(vps)["state"] == "running"


def test_stop_is_a_kill_with_the_reason_in_its_history(h):
    vps = running_vps(h)
    answer, effects = h.reply(ALICE, "vps.stop", {"id": vps})
    assert commands(effects) == [{"id": vps, "action": "kill"}]
    details = [e["detail"] for e in h.store.task_events(vps)]
    assert "stopping: stopped on request" in details


def test_restart_goes_to_the_runner_and_is_recorded(h):
    vps = running_vps(h)
    _, effects = h.reply(ALICE, "vps.restart", {"id": vps})
    assert commands(effects) == [{"id": vps, "action": "restart"}]
    h.reply(N1, "vps.restarted", {"id": vps})
    details = [e["detail"] for e in h.store.task_events(vps)]
    assert "restart requested" in details and any("restarted" in d for d in details[-1:])


def test_another_user_may_not_stop_or_restart_a_vps_and_a_task_is_not_a_vps(h):
    vps = running_vps(h)
    for op in ("vps.stop", "vps.restart"):
        answer, effects = h.reply(BOB, op, {"id": vps})
        assert isinstance(answer, Refuse) and answer.code == "forbidden", answer
        assert "belongs to 'alice'" in answer.msg and not commands(effects)
    answer, _ = h.reply(ALICE, "task.submit", {"tasks": [{"command": ["true"]}]})
    answer, _ = h.reply(ALICE, "vps.stop", {"id": answer.body["ids"][0]})
    assert isinstance(answer, Refuse) and "is not a VPS" in answer.msg
    answer, _ = h.reply(ALICE, "vps.restart", {"id": 999})
    assert isinstance(answer, Refuse) and answer.code == "not_found"


def test_a_vps_spec_is_checked(h):
    for bad, message in (({"backend": "native"}, "runs in a container"),
                         ({"time_limit": 5}, "no time limit"),
                         ({"idle_stop": -1}, "idle stop must be positive"),
                         ({"ssh_keys": ["a\nb"]}, "ssh_keys")):
        answer, _ = h.reply(ALICE, "task.submit", {"tasks": [{**VPS, **bad}]})
        assert isinstance(answer, Refuse) and message in answer.msg, (bad, answer)
    answer, _ = h.reply(ALICE, "task.submit", {"tasks": [{"command": ["true"],
                                                          "idle_stop": 60}]})
    assert isinstance(answer, Refuse) and "VPS tasks only" in answer.msg


def test_the_idle_rule():
    busy_cpu = IDLE_CPU_PERCENT + 1
    assert idle_since(None, 1, 0.0, 0.0, 100.0) is None  # a session is open
    assert idle_since(50.0, 0, busy_cpu, 0.0, 100.0) is None  # it computes
    assert idle_since(None, 0, 0.5, 0.0, 100.0) == 100.0  # idle from now
    assert idle_since(40.0, 0, 0.5, 0.0, 100.0) == 40.0  # still idle since then
    assert idle_since(40.0, 0, None, 70.0, 100.0) == 70.0  # a stream closed at 70
