"""``zriver backup FILE``: a consistent copy of a running host's store, restorable.

The backup is taken with the real CLI (a ``python -m zriver backup`` process) against the
in-process cluster while a thread submits tasks and the runner completes them. The copy is
then restored into a fresh data directory (with the host's keys, as an operator replacing
``host.db`` keeps them), a host is started on it, and every task whose submit was answered
before the backup began is there, with the events it had: at least those it had when the
backup began, at most those it had when the backup ended, in the same order.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import apsw
import pytest

from procs import role_environment

from zriver.errors import Forbidden

pytestmark = pytest.mark.timeout(120)

LOAD_LIMIT = 3000
"""Submits the load thread makes at most (it stops earlier when the test is done)."""
WARM = 30
"""Submits answered (and so tasks running and finishing) before the backup begins."""


def cli(cluster, *args: str, key: Path | None = None) -> subprocess.CompletedProcess:
    env = role_environment(Path(os.environ["ZRIVER_HOME"]))
    return subprocess.run([sys.executable, "-m", "zriver", *cluster.cli_flags(key), *args],
                          env=env, capture_output=True, text=True, timeout=60)


class Load(threading.Thread):
    """Submits one short task after another (each one's submit answered before the next),
    recording when each answer came, until ``stop`` is set or ``LOAD_LIMIT`` submits."""

    def __init__(self, cluster, workdir: Path) -> None:
        super().__init__(daemon=True)
        self.client = cluster.client(timeout=30)
        self.workdir = str(workdir)
        self.acked: list[tuple[float, int]] = []
        self.stop = threading.Event()
        self.warm = threading.Event()
        """Set once ``WARM`` submits were answered."""
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for n in range(LOAD_LIMIT):
                if self.stop.is_set():
                    return
                command = ["true"] if n % 3 else ["sh", "-c", "exit 3"]
                spec = {"command": command, "workdir": self.workdir, "user": "root"}
                ids = self.client.call("task.submit", {"tasks": [spec]})["ids"]
                self.acked.append((time.monotonic(), ids[0]))
                if len(self.acked) == WARM:
                    self.warm.set()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def acked_before(self, moment: float) -> list[int]:
        return [task_id for at, task_id in list(self.acked) if at < moment]


def events_of(client, task_ids: list[int]) -> dict[int, list[tuple[str, str]]]:
    replies = {t: client.call("task.get", {"id": t}) for t in task_ids}
    return {t: [(e["state"], e["detail"]) for e in reply["events"]]
            for t, reply in replies.items()}


def test_a_backup_under_load_restores_every_task_acknowledged_before_it(
        cluster, make_cluster, tmp_path: Path) -> None:
    client = cluster.client(timeout=30)
    # some history to copy: a sweep of 5,000 that fails with the task it depends on
    first = cluster.submit(["sh", "-c", "exit 1"])
    client.call("task.submit", {"sweep": {"spec": {
        "command": ["echo", "span:{1..5000}"], "workdir": str(tmp_path), "user": "root",
        "after": [first]}}})
    load = Load(cluster, tmp_path)
    load.start()
    try:
        assert load.warm.wait(30), "the load never got going"
        client.wait([task_id for _, task_id in load.acked[:3]])  # some finished, too
        began = time.monotonic()
        before = load.acked_before(began)
        at_start = events_of(client, before)
        backup = tmp_path / "backup.db"
        ran = cli(cluster, "backup", str(backup))
        ended = time.monotonic()
        at_end = events_of(client, before)
    finally:
        load.stop.set()
        load.join(30)
    assert load.error is None, load.error
    assert ran.returncode == 0, ran.stderr
    during = len(load.acked_before(ended)) - len(before)
    print(f"backup of {backup.stat().st_size:,} bytes in {ended - began:.2f} s (CLI included); "
          f"{len(before)} tasks acknowledged before it, {during} submits answered during it")
    assert during > 0, "the host answered no submit while the backup ran"
    assert f"{backup}: " in ran.stdout
    check = apsw.Connection(str(backup))
    assert [r[0] for r in check.execute("PRAGMA integrity_check")] == ["ok"]
    check.close()
    assert not list(backup.parent.glob(".backup.db.part-*")), "the temporary file stayed"
    assert not list((Path(cluster.host_settings.data_dir) / "backups").iterdir()), \
        "the host kept its copy after the client had it"

    restored = tmp_path / "restored"
    restored.mkdir()
    shutil.copytree(Path(cluster.host_settings.data_dir) / "keys", restored / "keys")
    shutil.copy(backup, restored / "host.db")
    again = make_cluster(runners={}, host={"data_dir": str(restored)})
    after = events_of(again.client(timeout=30), before)
    for task_id in before:
        low, high, got = at_start[task_id], at_end[task_id], after[task_id]
        assert high[:len(got)] == got and len(low) <= len(got), (task_id, low, got, high)
    finished = [t for t in before if at_start[t][-1][0] in ("completed", "failed")]
    assert finished, "no task had finished before the backup: not under load"
    counts = again.client().call("task.counts", {})["counts"]
    assert counts.get("failed", 0) >= 5001, counts


def test_backup_refuses_an_existing_file_and_keeps_it(cluster, tmp_path: Path) -> None:
    existing = tmp_path / "kept.db"
    existing.write_text("precious")
    ran = cli(cluster, "backup", str(existing))
    assert ran.returncode != 0
    assert "exists; use --force to overwrite it" in ran.stderr, ran.stderr
    assert existing.read_text() == "precious"
    forced = cli(cluster, "backup", "--force", str(existing))
    assert forced.returncode == 0, forced.stderr
    check = apsw.Connection(str(existing))
    assert check.execute("SELECT count(*) FROM tasks").fetchall()[0][0] == 0
    check.close()


def test_backup_is_for_admins_only(cluster, tmp_path: Path) -> None:
    user = cluster.key_for("ann", "user")
    with pytest.raises(Forbidden, match="backup.start needs the role admin"):
        cluster.client(key=user).call("backup.start", {})
    ran = cli(cluster, "backup", str(tmp_path / "b.db"), key=user)
    assert ran.returncode != 0 and "needs the role admin" in ran.stderr, ran.stderr
    assert not (tmp_path / "b.db").exists()
    assert not (Path(cluster.host_settings.data_dir) / "backups").exists()
