"""The host's store (migrations, refusal of newer schemas), restarts on the same data, runner
version mismatch, and logs kept under a shared directory."""

from __future__ import annotations

import asyncio

import apsw
import pytest

from zriver.config import RunnerSettings
from zriver.errors import Internal
from zriver.host.store import CORE_MIGRATIONS as MIGRATIONS, Store

NEWEST = max(m.number for m in MIGRATIONS)
from zriver.roles import runner_for


def test_fresh_store_is_at_the_newest_schema(tmp_path):
    store = Store(tmp_path / "host.db")
    assert store.schema_version == NEWEST
    assert store.conn.execute("PRAGMA journal_mode").fetchall()[0][0] == "wal"
    store.close()


def test_a_newer_database_is_refused(tmp_path):
    conn = apsw.Connection(str(tmp_path / "host.db"))
    conn.execute(f"PRAGMA user_version={NEWEST + 1}")
    conn.close()
    with pytest.raises(Internal, match="newer than this zriver"):
        Store(tmp_path / "host.db")


def test_reopening_keeps_everything(tmp_path):
    store = Store(tmp_path / "host.db")
    with store.batch():
        task_id = store.insert_task({"name": "a", "owner": "o", "state": "pending",
                                     "spec": {"command": ["true"]}, "submitted_at": 1.0})
        store.add_event(task_id, "pending", 1.0, "submitted")
    store.close()
    again = Store(tmp_path / "host.db")
    assert again.get_task(task_id)["spec"] == {"command": ["true"]}
    assert again.task_events(task_id) == [{"state": "pending", "at": 1.0, "detail": "submitted"}]
    again.close()


def test_ids_are_not_given_again_after_an_older_backup_is_restored(tmp_path):
    """Replacing host.db by an older copy (a restore) keeps the ids given since: a new task
    would otherwise take an id, and the log files, of a task that ran after the backup."""
    import shutil

    def add(store: Store, count: int) -> int:
        with store.batch():
            store.insert_tasks(store.last_task_id() + 1, [({"command": ["true"]}, "t", "o",
                                                           None)] * count, 1.0, None)
        return store.last_task_id()

    store = Store(tmp_path / "host.db")
    assert add(store, 3) == 3
    store.close()
    shutil.copy(tmp_path / "host.db", tmp_path / "backup.db")  # taken with three tasks
    store = Store(tmp_path / "host.db")
    assert add(store, 4) == 7
    with store.batch():
        single = store.insert_task({"name": "b", "owner": "o", "state": "pending",
                                    "spec": {"command": ["true"]}, "submitted_at": 1.0})
    assert single == 8
    store.close()
    (tmp_path / "host.db").unlink()
    shutil.copy(tmp_path / "backup.db", tmp_path / "host.db")  # restored
    restored = Store(tmp_path / "host.db")
    assert len(restored.list_tasks(limit=100)) == 3 and restored.last_task_id() == 8
    restored.close()
    (tmp_path / "host.db.ids").write_text("torn\x00")  # a mark a crash left unreadable
    floor = Store(tmp_path / "host.db")
    assert floor.last_task_id() == 3  # the database is the floor
    floor.close()


def test_host_restart_keeps_history_and_continues_ids(make_cluster):
    cluster = make_cluster({"n1": {"cores": 2}})
    first = cluster.submit(["true"])
    cluster.wait(first)
    cluster.stop_runner("n1")
    cluster.run(cluster.host.stop)
    cluster.run(cluster._start_host)
    cluster.start_runner("n1", cores=2)
    assert cluster.task(first)["state"] == "completed"
    second = cluster.submit(["true"])
    assert second == first + 1
    assert cluster.wait(second)[0]["state"] == "completed"


def test_runner_of_another_protocol_version_is_told_clearly(cluster, monkeypatch):
    import msgpack

    def old_pack(env):
        return msgpack.packb({"v": 999, "op": env.op, "rid": env.rid, "body": env.body or {}})

    monkeypatch.setattr("zriver.runner.uplink.pack", old_pack)
    runner = runner_for(cluster.host, RunnerSettings(
        name="old", data_dir=str(cluster.root / "old"), request_timeout=1.0,
        key=str(cluster.key_for("old", "runner")), host_key=cluster.server_keys.public))

    async def attempt():
        await runner.start()
        await asyncio.wait_for(runner.failed.wait(), 10)
        await runner.stop()

    cluster.run(attempt)
    assert "protocol version 999 is not supported" in runner.fatal
    assert "same zriver release" in runner.fatal
    assert [n["name"] for n in cluster.client().call("node.list")["nodes"]] == ["n1"]


def test_logs_live_in_the_shared_dir_and_the_host_reads_them(make_cluster, tmp_path):
    shared = tmp_path / "shared"
    cluster = make_cluster({"n1": {"shared_dir": str(shared)}}, host={"shared_dir": str(shared)})
    task_id = cluster.submit(["sh", "-c", "echo shared"])
    cluster.wait(task_id)
    assert (shared / "logs" / f"{task_id}.out").read_bytes() == b"shared\n"
    cluster.stop_runner("n1")  # the host still serves the log with the runner gone
    assert cluster.log(task_id) == b"shared\n"


def test_unreachable_node_comes_back_online(make_cluster):
    cluster = make_cluster({"n1": {}})
    cluster.stop_runner("n1", kill_tasks=True)
    client = cluster.client()
    sub = client.subscribe(["evt.node.n1"])
    try:
        while client.call("node.list")["nodes"][0]["state"] != "unreachable":
            assert sub.poll(5000), "node never went unreachable"
            sub.recv_multipart()
        cluster.start_runner("n1")
        assert client.call("node.list")["nodes"][0]["state"] == "online"
    finally:
        sub.close(linger=0)


def test_a_task_unreachable_when_the_host_stops_is_loaded_again(make_cluster):
    """A task whose node was silent when the host stopped is still the host's after a restart:
    its runner comes back and the task runs on (not stopped as unknown, not stranded)."""
    cluster = make_cluster({"n1": {"cores": 1}})
    task_id = cluster.submit(["sleep", "60"])
    cluster.wait_state(task_id, {"running"})
    cluster.stop_runner("n1", kill_tasks=False)  # the task runs on under the keeper
    cluster.wait_state(task_id, {"unreachable"})
    cluster.run(cluster.host.stop)
    cluster.run(cluster._start_host)
    cluster.start_runner("n1", cores=1)
    cluster.wait_state(task_id, {"running"})
    cluster.client().call("task.kill", {"id": task_id})
    assert cluster.wait(task_id)[0]["state"] == "killed"
