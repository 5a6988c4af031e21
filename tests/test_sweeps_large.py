"""Sweeps of any size: the client sends the sweep (its template and spans), the host expands,
checks once and stores every task in one transaction, and publishes one batch event.

The big case runs ``zriver submit`` of 100,000 tasks against the in-process cluster (no
runner: the tasks stay pending) and reads them back with ``task.list`` pages (``before``).
"""

from __future__ import annotations

import itertools
import json
import re
import time

import aiohttp
import apsw
import msgpack
import pytest
from test_cli import zriver
from test_core import ALICE, ROOT, Harness
from test_web_api import ALICE as WEB_ALICE, bearer, fetch, run, token, web

from zriver.errors import InvalidArgument, TooLarge, Unavailable
from zriver.host.core import HostCore
from zriver.host.effects import Command, Publish, Refuse, Reply, TaskEvent
from zriver.host.store import _specs
from zriver.principal import USER, Principal
from zriver.spec import TaskSpec
from zriver.sweep import MAX_TASKS, expand, parse
from zriver.web.events import visible

BIG = 100_000


def reference_expand(command: list[str]) -> list[list[str]]:
    """The client-side expansion as it was before the host expanded sweeps (the order users
    know: the first span varies slowest; spans in a word replaced from the right)."""
    pattern = re.compile(r"span:(\{(-?\d+)\.\.(-?\d+)\}|\[([^\[\]]*)\])")

    def values(match):
        if match.group(2) is not None:
            low, high = int(match.group(2)), int(match.group(3))
            step = 1 if high >= low else -1
            return [str(v) for v in range(low, high + step, step)]
        return [item.strip() for item in match.group(4).split(",")]

    slots = [(i, m) for i, word in enumerate(command) for m in pattern.finditer(word)]
    if not slots:
        return [list(command)]
    result = []
    for combo in itertools.product(*[values(m) for _, m in slots]):
        words = list(command)
        for (index, match), value in sorted(zip(slots, combo),
                                            key=lambda p: (p[0][0], -p[0][1].start())):
            words[index] = words[index][:match.start()] + value + words[index][match.end():]
        result.append(words)
    return result


@pytest.mark.parametrize("command", [
    ["x"],
    ["python", "sim.py", "--seed", "span:{1..100}", "--lr", "span:[0.1,0.01]"],
    ["x", "--s=span:{3..1}/span:[p, q ]_{literal}", "span:{-2..2}"],
    ["a{0}}", "span:[x,y]", "--out=run_span:{1..3}.{json}"],
    ["true", f"span:{{1..{BIG}}}"],
])
def test_expansion_order_is_the_client_side_one(command):
    assert expand(command) == reference_expand(command)
    assert parse(command).count == len(reference_expand(command))


def test_a_sweep_is_counted_before_anything_is_expanded():
    started = time.monotonic()
    with pytest.raises(InvalidArgument, match="split it"):
        parse(["x", "span:{1..1000000000000}"])
    with pytest.raises(InvalidArgument, match=f"at most {MAX_TASKS}"):
        parse(["x", "span:{1..1001}", "span:{1..1000}"])
    assert time.monotonic() - started < 1.0


def test_stored_spec_bytes_are_exactly_what_pack_makes():
    for env in ({}, {f"K{i}": "v" for i in range(20)}):
        wire = TaskSpec(["t", "span:{1..3}"], env=env, workdir="/w").to_wire()
        commands = [["t", "1"], ["t", "2" * 70000]]
        assert list(_specs(wire, commands)) == [msgpack.packb({**wire, "command": c})
                                                for c in commands]


# ---- the host core --------------------------------------------------------------------------
@pytest.fixture
def h(tmp_path):
    harness = Harness(tmp_path)
    harness.register()
    yield harness
    harness.store.close()


def sweep_body(command, key=None, targets=None, **fields):
    body = {"sweep": {"spec": {"command": command, "workdir": "/w", **fields},
                      "targets": targets}}
    return {**body, "key": key} if key else body


def submitted(h, principal, body):
    answer, effects = h.reply(principal, "task.submit", body)
    return answer, effects


def test_a_sweep_makes_one_task_per_target_and_command_in_order(h):
    answer, effects = submitted(h, ROOT, sweep_body(["x", "span:[a,b]", "span:{1..2}"],
                                                    targets=["n1", "n1:0"], name="grid"))
    assert isinstance(answer, Reply), answer
    ids = answer.body["ids"]
    assert len(ids) == 8 and ids == list(range(ids[0], ids[0] + 8))
    assert answer.body["batch_id"] == ids[0]
    rows = sorted(h.store.list_tasks(limit=100), key=lambda r: r["id"])
    assert [(r["spec"]["target"], r["spec"]["command"]) for r in rows] == [
        (target, command) for target in ("n1", "n1:0")
        for command in expand(["x", "span:[a,b]", "span:{1..2}"])]
    assert {r["name"] for r in rows} == {"grid"} and {r["batch_id"] for r in rows} == {ids[0]}
    events = [e for e in effects if isinstance(e, TaskEvent)]
    assert [e.task_id for e in events] == ids  # up to 1,000 tasks: one event each, as before
    live = h.core.tasks[ids[5]]
    assert live.spec_wire()["command"] == ["x", "a", "2"] and live.spec_wire()["target"] == "n1:0"
    assert h.store.task_events(ids[0]) == [{"state": "pending", "at": h.clock.wall,
                                            "detail": "submitted"}]


def test_a_big_sweep_is_checked_once_and_announced_by_one_batch_event(h):
    checked = []
    h.core.submit_checks.append(lambda request, spec: checked.append(spec.target))
    answer, effects = submitted(h, ALICE, sweep_body(["x", "span:{1..5000}"], name="big"))
    ids = answer.body["ids"]
    assert len(ids) == 5000 and checked == [None]
    assert not [e for e in effects if isinstance(e, TaskEvent)]
    [event] = [e for e in effects if isinstance(e, Publish)]
    assert event.topic == f"evt.batch.{ids[0]}" and event.op == "batch.state"
    assert event.body == {"batch_id": ids[0], "count": 5000, "first_id": ids[0],
                          "last_id": ids[-1], "state": "pending", "owner": "alice",
                          "name": "big", "seq": h.core.event_seq}  # numbered like task events
    assert len({id(h.core.tasks[i].spec) for i in ids}) == 1  # one spec shared by all
    starts = [e for e in h.scheduled() if isinstance(e, Command) and e.op == "task.start"]
    assert [s.body["spec"]["command"] for s in starts[:2]] == [["x", "1"], ["x", "2"]]


def test_a_list_submit_of_many_specs_announces_one_batch_too(h):
    specs = [{"command": ["x", str(i)], "workdir": "/w"} for i in range(1001)]
    answer, effects = submitted(h, ROOT, {"tasks": specs})
    assert len(answer.body["ids"]) == 1001
    assert [e.topic for e in effects if isinstance(e, Publish)] == [
        f"evt.batch.{answer.body['batch_id']}"]
    assert not [e for e in effects if isinstance(e, TaskEvent)]


@pytest.mark.parametrize("body, error, message", [
    (sweep_body(["x", "span:{1..}"]), "invalid_argument", "bad span"),
    (sweep_body(["x", "span:[a,,b]"]), "invalid_argument", "empty value"),
    (sweep_body(["x", "span:{1..1001}", "span:{1..1000}"]), "invalid_argument", "split it"),
    (sweep_body(["x", "span:{1..600000}"], targets=["n1", None]), "invalid_argument",
     "split it"),
    (sweep_body(["x", "span:{1..3}"], cores=99), "impossible", "cores"),
    (sweep_body(["x", "span:{1..3}"], targets=["n1", "nosuch"]), "not_found", "nosuch"),
    (sweep_body(["x", "span:{1..3}"], after=[424242]), "not_found", "424242"),
    (sweep_body(["x", "span:{1..3}"], targets=[]), "bad_request", "targets"),
    ({"sweep": {"spec": {"command": ["x"]}}, "tasks": [{"command": ["y"]}]}, "bad_request",
     "not both"),
    ({"tasks": [{"command": ["x"]}] * 100_001}, "invalid_argument", "send a sweep"),
])
def test_a_refused_submit_stores_nothing(h, body, error, message):
    before = h.core.next_task_id
    answer, effects = submitted(h, ROOT, body)
    assert isinstance(answer, Refuse) and answer.code == error, answer
    assert message in answer.msg
    assert effects == [answer]  # no write, no event
    assert h.store.list_tasks(limit=10) == [] and not h.core.tasks
    assert h.core.next_task_id == before
    assert h.core.scheduler.pending_count == 0


def test_a_user_may_not_sweep_as_another_account(h):
    answer, _ = submitted(h, ALICE, sweep_body(["x", "span:{1..3}"], user="root"))
    assert isinstance(answer, Refuse) and answer.code == "forbidden"


def test_a_sweep_with_dependencies_waits_for_them(h):
    first, _ = submitted(h, ROOT, {"tasks": [{"command": ["dep"], "workdir": "/w"}]})
    dep = first.body["ids"][0]
    answer, _ = submitted(h, ROOT, sweep_body(["x", "span:{1..1500}"], after=[dep]))
    ids = answer.body["ids"]
    assert h.core.deps.waiting_for(ids[-1]) == [dep]
    assert h.core.scheduler.pending_reason(ids[0]) is None  # not queued: it waits


def test_a_sweep_resent_with_its_key_answers_the_same_ids(h):
    body = sweep_body(["x", "span:{1..2000}"], key="sweep-key")
    first, _ = submitted(h, ROOT, body)
    again, effects = submitted(h, ROOT, body)
    assert again.body == first.body
    assert len(h.store.list_tasks(limit=5000)) == 2000
    assert not [e for e in effects if isinstance(e, (Publish, TaskEvent))]


def test_the_events_socket_shows_a_batch_to_its_owner_and_admins():
    admin, bob = Principal("root", "admin"), Principal("bob", USER)
    body = {"owner": "alice", "batch_id": 1}
    assert visible(ALICE, "evt.batch.1", body) and visible(admin, "evt.batch.1", body)
    assert not visible(bob, "evt.batch.1", body)


# ---- through the CLI, the wire and the store ------------------------------------------------
def subscribed(client, sub) -> None:
    """Wait until ``sub`` receives events (a SUB's subscription reaches the host's XPUB a
    moment after it is made): submit probe tasks until one's event arrives."""
    for _ in range(50):
        probe = client.submit([{"command": ["probe"], "workdir": "/tmp"}])["ids"][0]
        if sub.poll(200):
            while sub.poll(100):
                sub.recv_multipart()
            return
    raise AssertionError(f"no event reached the subscriber (last probe: task {probe})")


def test_a_100k_sweep_through_zriver_submit_is_accepted_and_listed_in_pages(make_cluster):
    cluster = make_cluster({})  # no runner: every task stays pending
    client = cluster.client(timeout=60)
    sub = client.subscribe(["evt.batch.", "evt.task."])
    try:
        subscribed(client, sub)
        started = time.monotonic()
        done = zriver(*cluster.cli_flags(), "submit", "--json", "--name", "big", "--workdir",
                      "/tmp", "--", "true", f"--seed=span:{{1..{BIG // 4}}}", "span:[a,b,c,d]",
                      timeout=180)
        accepted = time.monotonic() - started
        assert done.returncode == 0, done.stderr
        reply = json.loads(done.stdout)
        ids = reply["ids"]
        assert len(ids) == BIG and ids == list(range(ids[0], ids[0] + BIG))
        assert reply["batch_id"] == ids[0] and accepted < 120
        marker = client.submit([{"command": ["marker"], "workdir": "/tmp"}])["ids"][0]
        events = []
        deadline = time.monotonic() + 30
        while not any(topic == f"evt.task.{marker}".encode() for topic, _ in events):
            assert time.monotonic() < deadline, events
            if sub.poll(1000):
                events.append(tuple(sub.recv_multipart()))
    finally:
        sub.close(linger=0)
    assert [topic for topic, _ in events] == [f"evt.batch.{ids[0]}".encode(),
                                              f"evt.task.{marker}".encode()]
    batch = msgpack.unpackb(events[0][1])["body"]
    assert (batch["count"], batch["first_id"], batch["last_id"], batch["name"]) == (
        BIG, ids[0], ids[-1], "big")
    seen, before = [], marker
    for _ in range(1000):  # pages of at most 10,000, newest first
        page = client.call("task.list", {"batch": ids[0], "before": before, "limit": 10_000},
                           timeout=60)["tasks"]
        if not page:
            break
        seen.extend(page)
        before = page[-1]["id"]
    assert [t["id"] for t in seen] == ids[::-1]
    expected = reference_expand(["true", f"--seed=span:{{1..{BIG // 4}}}", "span:[a,b,c,d]"])
    assert all(t["command"] == expected[t["id"] - ids[0]] for t in seen[::997])
    assert {t["state"] for t in seen} == {"pending"} and {t["name"] for t in seen} == {"big"}
    status = client.call("task.get", {"id": ids[12345]})
    assert status["task"]["command"] == expected[12345]
    assert [e["detail"] for e in status["events"]] == ["submitted"]


def test_a_sweep_that_cannot_be_written_stores_and_runs_nothing(cluster):
    client = cluster.client(timeout=20)

    def full(*args, **kwargs):
        raise apsw.FullError("database or disk is full")

    cluster.call_soon(lambda: setattr(cluster.host.store, "insert_tasks", full))
    with pytest.raises(Unavailable, match="nothing was changed"):
        client.call("task.submit", {"sweep": {"spec": {"command": ["true", "span:{1..3000}"],
                                                       "workdir": "/tmp"}}})
    cluster.call_soon(lambda: delattr(cluster.host.store, "insert_tasks"))
    assert client.call("task.list", {})["tasks"] == []
    assert cluster.call_soon(lambda: len(cluster.host.tasks)) == 0
    [task_id] = client.submit([{"command": ["true"], "workdir": "/tmp", "user": "root"}])["ids"]
    assert [t["state"] for t in cluster.wait(task_id)] == ["completed"]
    assert [t["id"] for t in client.call("task.list", {})["tasks"]] == [task_id]


def test_bad_spans_and_impossible_sweeps_are_refused_by_zriver_submit(cluster):
    flags = cluster.cli_flags()
    bad = zriver(*flags, "submit", "--", "x", "span:{1..}")
    assert bad.returncode != 0 and "bad span" in bad.stderr
    big = zriver(*flags, "submit", "--", "x", "span:{1..2000000}")
    assert big.returncode != 0 and "split it" in big.stderr
    huge = zriver(*flags, "submit", "--cores", "64", "--", "x", "span:{1..3}")
    assert huge.returncode != 0 and "cores" in huge.stderr
    assert cluster.client().call("task.list", {})["tasks"] == []


def test_an_oversized_submit_is_told_to_send_spans(cluster):
    client = cluster.client(timeout=30)
    specs = [{"command": ["true", "x" * 300, str(i)], "workdir": "/tmp"} for i in range(40_000)]
    with pytest.raises(TooLarge, match=re.escape("send the sweep as spans")):
        client.call("task.submit", {"tasks": specs})


def test_the_web_api_takes_a_sweep_in_one_small_body(make_cluster):
    """``POST /api/v1/tasks`` with ``{"sweep": ...}`` (what the dashboard sends for a command
    with spans): 5,000 tasks from a body of a few hundred bytes (the API's cap is 1 MiB)."""
    cluster = make_cluster({})
    headers = bearer(token(cluster, WEB_ALICE))
    body = {"sweep": {"spec": {"command": ["true", "span:{1..5000}"], "workdir": "/tmp"}}}

    async def post():
        async with aiohttp.ClientSession() as session:
            return await fetch(session, "POST", web(cluster) + "/api/v1/tasks", json=body,
                               headers=headers)

    status, reply = run(post())
    assert status == 200, reply
    assert len(reply["ids"]) == 5000 and reply["batch_id"] == reply["ids"][0]
    last = cluster.client().call("task.get", {"id": reply["ids"][-1]})["task"]
    assert (last["command"], last["owner"]) == (["true", "5000"], "alice")


def test_a_restarted_core_shares_a_sweeps_spec_again(h):
    sweep, _ = submitted(h, ROOT, sweep_body(["x", "span:{1..3}"], targets=["n1", None]))
    mixed, _ = submitted(h, ROOT, {"tasks": [{"command": ["a"], "workdir": "/w"},
                                             {"command": ["b"], "workdir": "/w", "cores": 2}]})
    fresh = HostCore(h.settings, h.store, h.core.ops, "inc2")
    fresh.load(h.clock)
    ids = sweep.body["ids"]
    assert len({id(fresh.tasks[i].spec) for i in ids[:3]}) == 1  # target n1
    assert fresh.tasks[ids[0]].spec is not fresh.tasks[ids[3]].spec  # the other target
    assert [fresh.tasks[i].spec_wire()["command"] for i in ids] == [["x", "1"], ["x", "2"],
                                                                    ["x", "3"]] * 2
    a, b = (fresh.tasks[i] for i in mixed.body["ids"])
    assert (a.spec.cores, b.spec.cores) == (1, 2)
    assert (a.spec_wire()["command"], b.spec_wire()["command"]) == (["a"], ["b"])
