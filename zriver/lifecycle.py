"""Task states and the transitions allowed between them (pure; no I/O).

    pending -> assigned -> running -> completed | failed | killed | killed_oom | lost | timeout
                                  <-> paused
    running | paused <-> unreachable (its node is silent; not final) -> lost past the grace
    pending | assigned -> killed | lost | failed (start refused, failed dependency)
    assigned | running | paused | unreachable -> pending (a start that never ran, or that the
        runner revoked because the host had not recorded it: it runs again, same attempt)

A task with retries left does not enter a final state when it fails: it goes back to
``pending`` with its attempt count raised (``dispatch.retry``), and the failed attempt is
recorded in its history.

Final states are final: ``transition`` refuses to leave them, which is what makes applying a
runner's update twice harmless.
"""

from __future__ import annotations

PENDING = "pending"
ASSIGNED = "assigned"
RUNNING = "running"
PAUSED = "paused"
COMPLETED = "completed"
FAILED = "failed"
KILLED = "killed"
KILLED_OOM = "killed_oom"
LOST = "lost"
TIMEOUT = "timeout"
UNREACHABLE = "unreachable"

FINAL = frozenset({COMPLETED, FAILED, KILLED, KILLED_OOM, LOST, TIMEOUT})
RETRYABLE = frozenset({FAILED, KILLED_OOM, LOST, TIMEOUT})
"""Ends that ``--retries`` retries (a kill on request is never retried)."""
ACTIVE = frozenset({ASSIGNED, RUNNING, PAUSED, UNREACHABLE})
ALL_STATES = (PENDING, ASSIGNED, RUNNING, PAUSED, UNREACHABLE, COMPLETED, FAILED, KILLED,
              KILLED_OOM, LOST, TIMEOUT)

_ALLOWED: dict[str, frozenset[str]] = {
    PENDING: frozenset({ASSIGNED, KILLED, LOST, FAILED}),
    ASSIGNED: frozenset({PENDING, RUNNING, PAUSED} | FINAL),
    RUNNING: frozenset({PAUSED, UNREACHABLE, PENDING} | FINAL),
    PAUSED: frozenset({RUNNING, UNREACHABLE, PENDING} | FINAL),
    UNREACHABLE: frozenset({RUNNING, PAUSED, PENDING} | FINAL),
}


def can_move(current: str, new: str) -> bool:
    """True when ``current -> new`` is a legal, state-changing transition."""
    return new in _ALLOWED.get(current, frozenset())


def is_final(state: str) -> bool:
    return state in FINAL
