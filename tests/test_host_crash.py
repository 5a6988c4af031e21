"""The host SIGKILLed in the middle of a burst of submits, restarted on the same data dir and
ports (real processes: ``zriver host`` and two ``zriver runner``s).

A client thread submits 300 tasks in batches of 10; each task appends its own id to one shared
file. Once half of them are acknowledged the host is killed with -9 and restarted at once. The
client keeps going (a batch whose reply never came is counted unacknowledged and not resent: it
may or may not have been stored). Then:

* every acknowledged submit exists;
* every stored task reaches a final state within a bound, ``completed`` with exit code 0;
* nothing ran twice: the file holds each id at most once, and exactly once for a completed task.

The figures (submitted / acknowledged / stored / completed / lost / run twice / stuck, and the
recovery time from the restart to all final) are printed (``pytest -s``) and recorded in
``docs/reliability.md``.
"""

from __future__ import annotations

import collections
import threading
import time
from pathlib import Path

import pytest

from procs import Cluster, wait_until
from zriver.errors import Unavailable

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

TOTAL, BATCH = 300, 10
KILL_AT = TOTAL // 2
HOST_SETTINGS = {"heartbeat_interval": 0.2, "heartbeat_misses": 5}
RUNNER_SETTINGS = {"cores": 2, "request_timeout": 1.0, "kill_grace": 1.0}
FINAL = {"completed", "failed", "killed", "killed_oom", "lost"}
#: Seconds from the restart until every stored task must be final.
RECOVERY_BOUND = 45.0


class Submitter(threading.Thread):
    """Submits ``TOTAL`` tasks in batches; remembers which were acknowledged."""

    def __init__(self, cluster: Cluster, command: list[str]) -> None:
        super().__init__(daemon=True)
        self.cluster, self.command = cluster, command
        self.acked: list[int] = []
        self.unacked_batches = 0
        self.submitted = 0
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.halfway = threading.Event()  # set once KILL_AT submits are acknowledged

    def run(self) -> None:
        endpoint = self.cluster.endpoint  # the same ports after the restart
        spec = {"command": self.command, "cores": 1, "workdir": str(self.cluster.base),
                "owner": "burst", "user": "root"}  # root: it writes into the root-only tmp dir
        client = self.cluster.connect(endpoint, timeout=1.5)
        try:
            for _ in range(TOTAL // BATCH):
                self.submitted += BATCH
                try:
                    ids = client.call("task.submit", {"tasks": [spec] * BATCH})["ids"]
                except Unavailable:
                    self.unacked_batches += 1
                    client.close()  # a fresh socket: drop whatever the dead host's pipe held
                    client = self.cluster.connect(endpoint, timeout=1.5)
                    self._wait_for_host(endpoint)
                    continue
                with self.lock:
                    self.acked += ids
                    if len(self.acked) >= KILL_AT:
                        self.halfway.set()
        except Exception as exc:  # reported by the test, never swallowed
            self.errors.append(repr(exc))
        finally:
            self.halfway.set()
            client.close()

    def _wait_for_host(self, endpoint: str) -> None:
        def answers() -> bool:
            with self.cluster.connect(endpoint, timeout=0.5) as probe:
                return bool(probe.call("cluster.hello"))
        wait_until(answers, 30, "the restarted host to answer")

    def acknowledged(self) -> int:
        with self.lock:
            return len(self.acked)


def all_tasks(cluster: Cluster) -> dict[int, dict]:
    with cluster.host.client(timeout=5) as client:
        rows = client.call("task.list", {"limit": 100_000})["tasks"]
    return {row["id"]: row for row in rows}


def test_host_kill9_during_a_burst_of_submits(tmp_path: Path) -> None:
    ran = tmp_path / "ran.txt"
    ran.touch()
    command = ["sh", "-c", f'echo "$ZRIVER_TASK_ID" >> "{ran}"']
    with Cluster(tmp_path) as cluster:
        cluster.start_host(**HOST_SETTINGS)
        for name in ("n1", "n2"):
            cluster.start_runner(name, wait=False, **RUNNER_SETTINGS)
        for name in ("n1", "n2"):
            cluster.wait_node_state(name, "online")

        submitter = Submitter(cluster, command)
        submitter.start()
        assert submitter.halfway.wait(20), f"{KILL_AT} submits were not acknowledged in 20 s"
        acked_before_kill = submitter.acknowledged()
        cluster.host.kill9()
        ran_at_kill = len(ran.read_text().split())
        restart_at = time.monotonic()
        cluster.restart_host()
        ready_at = time.monotonic()
        submitter.join(timeout=60)
        assert not submitter.is_alive(), "the submitting client hung"
        assert not submitter.errors, submitter.errors

        # Everything stored ends, within a bound: nothing is stuck.
        seen: dict[int, dict] = {}

        def all_final() -> bool:
            seen.clear()
            seen.update(all_tasks(cluster))
            return all(task["state"] in FINAL for task in seen.values())

        try:
            cluster.wait_for(all_final, RECOVERY_BOUND, "every stored task to be final")
        except AssertionError as exc:
            stuck = {i: t["state"] for i, t in seen.items() if t["state"] not in FINAL}
            raise AssertionError(f"{exc}\nstuck ({len(stuck)}): {stuck}") from None
        recovered_at = time.monotonic()

        tasks = seen
        acked = set(submitter.acked)
        runs = collections.Counter(int(line) for line in ran.read_text().split())
        states = collections.Counter(task["state"] for task in tasks.values())
        missing = sorted(acked - set(tasks))
        twice = sorted(i for i, count in runs.items() if count > 1)
        not_ours = sorted(set(runs) - set(tasks))
        bad = {i: (t["state"], t["exit_code"], t["detail"]) for i, t in tasks.items()
               if (t["state"], t["exit_code"]) != ("completed", 0)}
        completed_not_once = sorted(i for i, t in tasks.items()
                                    if t["state"] == "completed" and runs[i] != 1)
        figures = {
            "submitted": submitter.submitted,
            "acked": len(acked),
            "acked before the kill": acked_before_kill,
            "ran before the kill": ran_at_kill,
            "unacked batches": submitter.unacked_batches,
            "stored": len(tasks),
            "stored but unacked": len(set(tasks) - acked),
            "completed": states["completed"],
            "lost (state)": states["lost"],
            "acked but missing": len(missing),
            "run twice": len(twice),
            "stuck": 0,
            "host restart to ready (s)": round(ready_at - restart_at, 2),
            "restart to all final (s)": round(recovered_at - restart_at, 2),
        }
        print("\nhost SIGKILL during a burst:", figures)

        assert acked_before_kill < TOTAL, "the burst was over before the kill: proves nothing"
        assert not missing, f"acknowledged submits missing after the restart: {missing}"
        assert not not_ours, f"ids in the file that are no task: {not_ours}"
        assert not twice, f"tasks that ran twice: {twice}"
        assert not bad, f"tasks not completed with exit 0: {bad}"
        assert not completed_not_once, f"completed tasks not run exactly once: " \
                                       f"{completed_not_once}"
        for name in ("n1", "n2"):
            assert cluster.nodes()[name]["state"] == "online"
