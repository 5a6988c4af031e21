"""The load generator (bench/loadgen.py) as a test: a real host process driven by 50 simulated
nodes (real sockets, heartbeats, registrations, update batches) through 5,000 tasks.

What must hold: every task completed, every node online at the end, no error in either
host's log, no update refused; and a heartbeat costs the host no more with 51 nodes than with
20, within a generous bound (the machine running the tests is shared). Bounded: the run
stops after 120 s.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import loadgen  # noqa: E402


def test_fifty_nodes_drive_five_thousand_tasks():
    args = loadgen.parse(["--nodes", "50", "--tasks", "5000", "--duration", "0.05",
                          "--samples", "20", "--idle-seconds", "2", "--max-seconds", "120"])
    result = loadgen.run(args)
    summary = result["summary"]
    assert summary["failures"] == [], loadgen.table(result)
    assert result["throughput"]["states"] == {"completed": 5000}
    assert result["nodes_online"] == 51  # the 50 and the registration probe
    assert result["fleet"]["started"] >= 5000 + 2 * 20
    assert not [p for p in result["problems"] if not p.startswith("update_resent")], \
        result["problems"]
    # Flat, with room for a noisy machine: a heartbeat costs no more at 51 nodes than at 20.
    assert summary["heartbeat_us_all"] < 3 * summary["heartbeat_us_small"] + 100, \
        loadgen.table(result)
