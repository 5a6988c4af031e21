"""The host core with no I/O: tables of inputs -> effects, role checks for every op, and the
scheduler's invariants after each case.

The core reads through a real ``Store`` (its read port) in a temp dir; ``Harness.apply``
plays the adapter: it writes each ``Write`` effect into the store, as the ZeroMQ service
does, and keeps the rest for the test to look at.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from zriver.config import HostSettings
from zriver.host.core import HostCore
from zriver.host.effects import (ArmTimer, CallService, Command, Now, Publish, Refuse, Reply,
                                 Request, TaskEvent, Write)
from zriver.host.service import Host
from zriver.host.store import Store
from zriver.principal import ADMIN, RUNNER, USER, Principal

ALICE = Principal("alice", USER, key="A" * 40)
BOB = Principal("bob", USER, key="B" * 40)
ROOT = Principal("root", ADMIN, key="C" * 40)
N1 = Principal("n1", RUNNER, key="D" * 40)
N1_LINK = b"r:n1:abc"
INFO = {"cores": [0, 1, 2, 3], "memory": 8 << 30, "backends": ["native"], "hostname": "h"}


class Harness:
    def __init__(self, tmp: Path, **settings) -> None:
        self.settings = HostSettings(data_dir=str(tmp), heartbeat_interval=1.0,
                                     heartbeat_misses=3, unreachable_grace=10.0,
                                     **settings).resolved()
        host = Host(self.settings)  # for its op table and migrations only (nothing started)
        self.store = Store(tmp / "host.db", host.migrations)
        self.core = HostCore(self.settings, self.store, host.ops, "inc1", linked=lambda l: True)
        self.clock = Now(1000.0, 50.0)
        self.apply(self.core.load(self.clock))

    def later(self, seconds: float) -> Now:
        self.clock = Now(self.clock.wall + seconds, self.clock.mono + seconds)
        return self.clock

    def apply(self, effects: list) -> list:
        with self.store.batch():
            for effect in effects:
                if isinstance(effect, Write):
                    self.store.apply(effect.method, effect.args, effect.fields)
        self.core.scheduler.validate()
        self.core.tasks.check()  # the per-node and per-env indexes match a scan
        return [e for e in effects if not isinstance(e, Write)]

    def call(self, principal: Principal, op: str, body: dict, link: bytes | None = None):
        request = Request(principal, 7, link or (N1_LINK if principal.role == RUNNER else b"c"))
        return request, self.apply(self.core.handle(request, op, body, self.clock))

    def reply(self, principal: Principal, op: str, body: dict, link: bytes | None = None):
        request, effects = self.call(principal, op, body, link)
        answers = [e for e in effects
                   if isinstance(e, (Reply, Refuse, CallService)) and e.request is request]
        assert len(answers) == 1, effects
        return answers[0], effects

    def register(self, info: dict | None = None) -> None:
        answer, _ = self.reply(N1, "runner.register", {"name": "n1", "info": info or INFO})
        assert isinstance(answer, Reply), answer

    def scheduled(self) -> list:
        return self.apply(self.core.schedule(self.clock))


@pytest.fixture
def h(tmp_path):
    harness = Harness(tmp_path)
    yield harness
    harness.store.close()


def kinds(effects: list) -> list[str]:
    return [type(e).__name__ for e in effects]


# ---- roles: every op in the table, every role -------------------------------------------------
@pytest.mark.parametrize("principal", [ALICE, ROOT, N1], ids=lambda p: p.role)
def test_every_op_refuses_the_roles_it_does_not_name(h, principal):
    for op in h.core.ops:
        answer, effects = h.reply(principal, op.name, {})
        if principal.role in op.roles:
            assert not (isinstance(answer, Refuse) and answer.code == "forbidden"), op.name
        else:
            assert isinstance(answer, Refuse) and answer.code == "forbidden", op.name
            assert "needs the role" in answer.msg and principal.role in answer.msg
            assert effects == [answer], f"{op.name}: a refused op has no other effect"


def test_role_table_is_what_the_docs_say(h):
    ops = {op.name: op.roles for op in h.core.ops}
    assert ops["task.submit"] == {USER, ADMIN}
    assert ops["node.drain"] == ops["node.undrain"] == {ADMIN}
    assert ops["runner.register"] == ops["task.update"] == ops["env.fetch"] == {RUNNER}
    assert ops["cluster.hello"] == {RUNNER, USER, ADMIN}
    assert all(op.roles for op in h.core.ops)


def test_unknown_op_is_refused_and_changes_nothing(h):
    answer, effects = h.reply(ALICE, "task.explode", {})
    assert answer.code == "unknown_op" and effects == [answer]


# ---- tasks --------------------------------------------------------------------------------------
def test_submit_owner_is_the_principal_and_placement_follows(h):
    h.register()
    answer, effects = h.reply(ALICE, "task.submit",
                              {"tasks": [{"command": ["true"], "owner": "mallory"}]})
    assert answer.body == {"ids": [1], "batch_id": None}
    assert kinds(effects) == ["TaskEvent", "Reply"]
    assert h.store.get_task(1)["owner"] == "alice"
    effects = h.scheduled()
    assert kinds(effects) == ["TaskEvent", "Command"]
    command = effects[1]
    assert command.node == "n1" and command.op == "task.start" and command.body["id"] == 1
    assert effects[0].body["state"] == "assigned" and effects[0].body["owner"] == "alice"


def test_a_list_of_identical_specs_is_checked_once_and_stored_as_each_was_sent(h):
    h.register()
    same = {"command": ["echo", "x"], "cores": 1, "env": {"A": "1"}}
    other = {"command": ["echo", "y"], "cores": 2}
    answer, effects = h.reply(ALICE, "task.submit", {"tasks": [same, dict(same), other, same]})
    assert answer.body["ids"] == [1, 2, 3, 4]
    rows = [h.store.get_task(i) for i in (1, 2, 3, 4)]
    assert [r["spec"]["command"] for r in rows] == [["echo", "x"], ["echo", "x"], ["echo", "y"],
                                                    ["echo", "x"]]
    assert [r["spec"]["cores"] for r in rows] == [1, 1, 2, 1]
    assert all(r["spec"]["env"] == {"A": "1"} for r in rows if r["spec"]["cores"] == 1)
    assert all(r["owner"] == "alice" for r in rows)
    assert [h.core.tasks[i].spec.command for i in (1, 2, 3, 4)] == [r["spec"]["command"]
                                                                   for r in rows]
    # ``==`` would take True for 1 and 1.0 for 1: each item is still checked for its types
    for good, bad in (({**same, "retries": 1}, {**same, "retries": True}),
                      (same, {**same, "cores": 1.0})):
        refused, effects = h.reply(ALICE, "task.submit", {"tasks": [good, bad]})
        assert isinstance(refused, Refuse) and refused.code == "bad_request", refused
        assert effects == [refused]
    assert h.store.get_task(5) is None  # nothing of the refused submits was stored


def test_security_off_keeps_the_owner_the_client_names(h):
    anyone = Principal("anyone", ADMIN)  # no key: security = "none"
    answer, _ = h.reply(anyone, "task.submit", {"tasks": [{"command": ["true"], "owner": "eve"}]})
    assert h.store.get_task(answer.body["ids"][0])["owner"] == "eve"


def test_a_runner_update_completes_the_task_and_answers_its_waiter(h):
    h.register()
    h.reply(ALICE, "task.submit", {"tasks": [{"command": ["true"]}]})
    h.scheduled()
    wait_request, effects = h.call(ALICE, "task.wait", {"ids": [1], "timeout": 5})
    assert effects == [ArmTimer(("wait", 1), 5.0)]
    update = {"id": 1, "attempt": 1, "at": 1001.0}
    h.reply(N1, "task.update", {"name": "n1", "updates": [{**update, "state": "running"}]})
    answer, effects = h.reply(N1, "task.update", {"name": "n1", "updates": [
        {**update, "state": "completed", "exit_code": 0}]})
    waiter = [e for e in effects if isinstance(e, Reply) and e.request is wait_request]
    assert waiter[0].body == {"done": True, "tasks": [{"id": 1, "state": "completed",
                                                       "exit_code": 0}]}
    assert [e.body["state"] for e in effects if isinstance(e, TaskEvent)] == ["completed"]
    assert h.store.get_task(1)["exit_code"] == 0 and not h.core.tasks


def test_live_counts_follow_every_move_without_a_walk(h):
    """``task.counts`` answers unfinished states from the table's counts per state (kept by
    ``set_state``): placed, started, retried, requeued, ended and killed tasks, each one
    checked against a scan (``Harness.apply`` runs ``TaskTable.check``) and against the op."""
    h.register()
    h.reply(ALICE, "task.submit", {"tasks": [{"command": ["true"], "retries": 1}] * 3
                                   + [{"command": ["true"], "cores": 4}]})  # waits for all 4
    h.scheduled()

    def counts() -> dict:
        answer, _ = h.reply(ALICE, "task.counts", {"states": ["pending", "assigned", "running"]})
        return answer.body["counts"]

    assert counts() == {"pending": 1, "assigned": 3, "running": 0}
    update = {"attempt": 1, "at": 1001.0}
    h.reply(N1, "task.update", {"name": "n1", "updates": [
        {**update, "id": 1, "state": "running"}, {**update, "id": 2, "state": "running"}]})
    assert counts() == {"pending": 1, "assigned": 1, "running": 2}
    h.reply(N1, "task.update", {"name": "n1", "updates": [  # a retry: back to pending
        {**update, "id": 1, "state": "failed", "exit_code": 1}]})
    h.reply(N1, "task.update", {"name": "n1", "updates": [  # never started: requeued
        {**update, "id": 3, "state": "pending", "detail": "not started"}]})
    assert counts() == {"pending": 3, "assigned": 0, "running": 1}
    h.reply(ALICE, "task.kill", {"id": 4})
    h.reply(N1, "task.update", {"name": "n1", "updates": [
        {**update, "id": 2, "state": "completed", "exit_code": 0}]})
    assert counts() == {"pending": 2, "assigned": 0, "running": 0}
    assert h.core.tasks.state_counts() == {"pending": 2}


def test_a_wait_times_out_through_its_timer(h):
    h.reply(ALICE, "task.submit", {"tasks": [{"command": ["true"]}]})
    request, _ = h.call(ALICE, "task.wait", {"ids": [1], "timeout": 2})
    effects = h.apply(h.core.timer(("wait", 1), h.later(2)))
    assert effects == [Reply(request, {"done": False, "tasks": [
        {"id": 1, "state": "pending", "exit_code": None}]})]


@pytest.mark.parametrize("op", ["task.kill", "task.pause", "task.resume", "task.logs",
                                "task.follow"])
def test_a_user_may_not_act_on_anothers_task(h, op):
    h.reply(ALICE, "task.submit", {"tasks": [{"command": ["true"]}]})
    answer, effects = h.reply(BOB, op, {"id": 1})
    if op == "task.follow":  # an op of the adapter: its ownership check runs there
        assert isinstance(answer, CallService)
        return
    assert answer.code == "forbidden" and "belongs to 'alice'" in answer.msg
    assert effects == [answer]


def test_owner_and_admin_may_kill(h):
    h.register()
    h.reply(ALICE, "task.submit", {"tasks": [{"command": ["true"]}, {"command": ["true"]}]})
    h.scheduled()
    for principal, task_id in ((ALICE, 1), (ROOT, 2)):
        answer, effects = h.reply(principal, "task.kill", {"id": task_id})
        assert isinstance(answer, Reply)
        assert Command("n1", "task.signal", {"id": task_id, "action": "kill"}) in effects


def test_wait_on_anothers_task_is_forbidden(h):
    h.reply(ALICE, "task.submit", {"tasks": [{"command": ["true"]}]})
    answer, _ = h.reply(BOB, "task.wait", {"ids": [1]})
    assert answer.code == "forbidden"


def test_time_limit_arms_a_timer_and_its_firing_kills(h):
    h.register()
    h.reply(ALICE, "task.submit", {"tasks": [{"command": ["sleep", "9"], "time_limit": 3}]})
    h.scheduled()
    _, effects = h.reply(N1, "task.update", {"name": "n1", "updates": [
        {"id": 1, "attempt": 1, "state": "running", "at": h.clock.wall}]})
    assert ArmTimer(("limit", 1, 1), 3.0) in effects
    effects = h.apply(h.core.timer(("limit", 1, 1), h.later(3)))
    assert effects == [Command("n1", "task.signal", {"id": 1, "action": "kill"})]
    _, effects = h.reply(N1, "task.update", {"name": "n1", "updates": [
        {"id": 1, "attempt": 1, "state": "killed", "at": h.clock.wall}]})
    assert h.store.get_task(1)["state"] == "timeout"


def test_logs_are_read_by_the_adapter(h):
    h.register()
    h.reply(ALICE, "task.submit", {"tasks": [{"command": ["true"]}]})
    h.scheduled()
    request, effects = h.call(ALICE, "task.logs", {"id": 1})
    [read] = effects
    assert read.request is request and read.node == "n1" and read.path is None
    assert read.read == {"id": 1, "stream": "stdout", "offset": 0, "limit": 1 << 20}


# ---- what only an admin may ask of a node -------------------------------------------------------
@pytest.mark.parametrize("spec, needs", [
    ({"user": "root"}, "--user root needs the admin role"),
    ({"backend": "docker", "container": "x", "privileged": True}, "--privileged needs"),
    ({"backend": "docker", "container": "x", "mounts": ["/etc:/x"]}, "host path /etc needs"),
    ({"backend": "docker", "container": "x", "mounts": ["/data/../etc:/x"]}, "/etc needs"),
])
def test_a_user_may_not_ask_for_root_privileges_or_host_mounts(h, spec, needs):
    h.register({**INFO, "allowed_mounts": ["/data"]})
    answer, effects = h.reply(ALICE, "task.submit", {"tasks": [{"command": ["id"], **spec}]})
    assert answer.code == "forbidden" and needs in answer.msg, answer
    assert effects == [answer] and h.store.get_task(1) is None


def test_allowed_and_standard_mounts_pass_the_check(h):
    from zriver.host.submit import check_allowed
    from zriver.spec import TaskSpec

    h.register({**INFO, "allowed_mounts": ["/data"]})
    for mount in ("/data/set1:/in:ro", "/data:/data", "/shared:/s"):
        check_allowed(h.core, ALICE, TaskSpec(["x"], mounts=[mount]))
    check_allowed(h.core, ROOT, TaskSpec(["x"], mounts=["/etc:/x"], privileged=True, user="root"))


# ---- runners ------------------------------------------------------------------------------------
def test_a_runner_key_speaks_only_for_its_node(h):
    answer, effects = h.reply(N1, "runner.register", {"name": "n2", "info": INFO})
    assert answer.code == "forbidden" and "for node 'n1'" in answer.msg
    assert effects == [answer] and not h.core.nodes


def test_register_writes_the_node_and_publishes_its_state(h):
    answer, effects = h.reply(N1, "runner.register", {"name": "n1", "info": INFO})
    assert answer.body["lease"] == 3.0 and answer.body["incarnation"] == "inc1"
    assert Publish("evt.node.n1", "node.state",
                   {"name": "n1", "state": "online", "reason": "registered"}) in effects
    assert h.store.list_nodes()[0]["state"] == "online"


def test_silence_makes_a_node_unreachable_then_offline_with_its_tasks_lost(h):
    h.register()
    h.reply(ALICE, "task.submit", {"tasks": [{"command": ["sleep", "99"]}]})
    h.scheduled()
    h.reply(N1, "task.update", {"name": "n1", "updates": [
        {"id": 1, "attempt": 1, "state": "running", "at": h.clock.wall}]})
    for _ in range(7):  # judged every half interval, silent for 3.5 s > lease (3 s)
        h.apply(h.core.judge_liveness(h.later(0.5)))
    assert h.core.nodes["n1"].state == "unreachable"
    assert h.store.get_task(1)["state"] == "unreachable"
    for _ in range(14):
        h.apply(h.core.judge_liveness(h.later(0.5)))
    assert h.core.nodes["n1"].state == "offline" and h.store.get_task(1)["state"] == "lost"


def test_a_host_stall_is_not_blamed_on_the_nodes(h):
    h.register()
    h.apply(h.core.judge_liveness(h.later(0.5)))
    effects = h.apply(h.core.judge_liveness(h.later(20)))  # the host did not look for 20 s
    assert h.core.nodes["n1"].state == "online" and effects == []


def test_a_heartbeat_from_another_runner_of_the_node_is_dropped(h):
    h.register()
    before = h.core.foreign_heartbeats
    h.apply(h.core.heartbeat("n1", {"instance": "other"}, h.later(0.1)))
    assert h.core.foreign_heartbeats == before + 1


# ---- the core does no I/O -------------------------------------------------------------------------
PURE = ["core", "dispatch", "handlers", "submit", "waiting", "effects", "model", "scheduler",
        "freeindex", "deps", "ops", "followers", "bus", "vpscore", "tasktable"]


@pytest.mark.parametrize("module", PURE)
def test_the_core_imports_no_io(module):
    path = Path(__file__).parent.parent / "zriver" / "host" / f"{module}.py"
    tree = ast.parse(path.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"zmq", "asyncio", "apsw", "docker", "time", "socket", "os"}, imported
