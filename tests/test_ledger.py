"""The runner's outbox: rows per tick, acknowledgement by row, old rows, restart numbering."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import msgpack

from zriver.runner import agent
from zriver.runner.ledger import Ledger


def update(task_id: int, state: str) -> dict:
    return {"id": task_id, "state": state, "at": 1.0, "attempt": 1}


def on_loop_until(cluster, check, timeout: float = 5.0) -> None:
    """Wait until ``check()``, looked at on the cluster's loop (where the runner's state lives)."""

    async def until() -> None:
        while not check():
            await asyncio.sleep(0.002)

    cluster.run(until, timeout=timeout)


def test_a_tick_is_one_row_and_pending_lists_its_updates_in_order(tmp_path):
    ledger = Ledger(tmp_path / "runner.db")
    first, second = ledger.new_seq(), ledger.new_seq()
    with ledger.conn:
        ledger.append(first, [update(1, "running"), update(1, "completed")])
        ledger.append(second, [update(2, "failed")])
    assert ledger.pending() == [(first, update(1, "running")), (first, update(1, "completed")),
                                (second, update(2, "failed"))]
    with ledger.conn:
        ledger.acknowledge([first, first])
    assert ledger.pending() == [(second, update(2, "failed"))]


def test_numbering_continues_after_a_restart_and_old_single_update_rows_are_read(tmp_path):
    ledger = Ledger(tmp_path / "runner.db")
    with ledger.conn:  # a row as an older release wrote it: one update, not a list
        ledger.conn.execute("INSERT INTO outbox(seq, body) VALUES (7, ?)",
                            (msgpack.packb(update(3, "completed")),))
    ledger.close()
    reopened = Ledger(tmp_path / "runner.db")
    assert reopened.pending() == [(7, update(3, "completed"))]
    assert reopened.new_seq() == 8


def test_batches_never_split_a_row_and_every_result_arrives(make_cluster, monkeypatch):
    monkeypatch.setattr(agent, "MAX_BATCH", 1)  # each batch is cut at a row's end instead
    cluster = make_cluster({"n1": {"cores": 2}})
    ids = [cluster.submit(["true"]) for _ in range(6)]
    summaries = cluster.wait(*ids)
    assert [s["state"] for s in summaries] == ["completed"] * 6
    runner = cluster.runners["n1"]
    # the last acknowledgement is handled, then written
    on_loop_until(cluster, lambda: not (runner._persisted or runner.ledger.pending()))


def test_rows_acknowledged_before_the_write_delay_never_reach_the_ledger(make_cluster,
                                                                        monkeypatch):
    monkeypatch.setattr(agent, "WRITE_DELAY", 60.0)  # the write would come long after the ack
    appended: list[int] = []
    monkeypatch.setattr(Ledger, "append", lambda self, seq, updates: appended.append(seq))
    cluster = make_cluster({"n1": {"cores": 2}})
    ids = [cluster.submit(["true"]) for _ in range(4)]
    assert [s["state"] for s in cluster.wait(*ids)] == ["completed"] * 4
    runner = cluster.runners["n1"]
    on_loop_until(cluster, lambda: not runner._persisted)  # all acknowledged
    assert appended == []
    assert runner._unwritten == {}
    assert runner.ledger.pending() == [] and runner.ledger.started() == []


def test_what_the_host_has_not_acknowledged_is_written_within_the_delay(make_cluster):
    cluster = make_cluster({"n1": {"cores": 2}})
    runner = cluster.runners["n1"]
    task_id = cluster.submit(["sleep", "0.5"])
    cluster.wait_state(task_id, {"running"})
    on_loop_until(cluster, lambda: task_id in [row[0] for row in runner.ledger.started()])
    ports = {f"{kind}_port": int(cluster.host.endpoints[kind].rsplit(":", 1)[1])
             for kind in ("router", "xsub", "xpub")}
    cluster.run(cluster.host.stop)  # nobody acknowledges the end now
    on_loop_until(cluster, lambda: [u["state"] for _, u in runner.ledger.pending()
                                    if u["id"] == task_id][-1:] == ["completed"])
    assert runner._unwritten == {}
    cluster.host_settings = replace(cluster.host_settings, **ports)
    cluster.run(cluster._start_host)  # on the same ports: the runner reconnects and resends
    assert cluster.wait(task_id)[0]["state"] == "completed"


def test_in_process_clusters_run_on_the_loop_the_roles_run(cluster):
    """The roles run on uvloop; so does every in-process cluster (a uvloop-only crash in the
    runner's ledger timer once stranded tasks while the suite, on asyncio's loop, was green)."""
    import uvloop

    assert isinstance(cluster.loop, uvloop.Loop)
    ids = cluster.submit_many([{"command": ["true"]} for _ in range(300)])
    assert {t["state"] for t in cluster.wait(*ids)} == {"completed"}
