"""The runner's lease on its work: how recently the host is known to have heard from it (pure).

Every reply of the host proves that the host was alive and had this runner's request in hand
*after* the request left. So the lease starts at the send time (``time.monotonic``, one clock
for every process of the machine) of the newest request that got a reply, and lasts ``length``
seconds (the host's ``heartbeat_interval * heartbeat_misses``). The host, for its part, waits
at least that long after its last message to the runner before it requeues the runner's
unstarted work, so a runner that launches only while its lease is fresh never launches a task
the host has meanwhile given to another node.

``fence_at`` is when the runner's tasks end by themselves if no reply comes (self-fencing):
early enough that the kill (``fence_grace``) is over one lease before the host's ``grace`` runs
out and it marks them lost (and may retry them elsewhere).
"""

from __future__ import annotations


class Lease:
    """Renewed by replies; asked whether it is fresh. Unknown until the first registration."""

    def __init__(self, kill_grace: float) -> None:
        self.kill_grace = kill_grace
        self.length = 0.0
        self.grace = 0.0
        self.start: float | None = None
        self.told: float | None = None
        """The ``start`` last passed on to the keeper."""

    def configure(self, length: float, grace: float) -> None:
        """The host's lease length and unreachable grace (from its registration reply)."""
        self.length, self.grace = float(length), float(grace)

    def renew(self, sent_at: float) -> None:
        """A reply arrived to a request that left at ``sent_at``."""
        if self.start is None or sent_at > self.start:
            self.start = sent_at

    def fresh(self, now: float) -> bool:
        return self.start is not None and self.length > 0 and now < self.start + self.length

    @property
    def provisional_until(self) -> float:
        return (self.start or 0.0) + self.length

    @property
    def fence_grace(self) -> float:
        """The SIGTERM-to-SIGKILL time of a fence: ``kill_grace``, shortened so the fence is
        over one lease before the host's grace ends (the host allows a grace of two leases
        or more)."""
        return max(0.0, min(self.kill_grace, self.grace - 2 * self.length))

    @property
    def fence_at(self) -> float:
        return (self.start or 0.0) + self.grace - self.length - self.fence_grace

    def worth_telling(self) -> bool:
        """Whether the keeper's copy is a quarter lease or more behind (or it has none). Its
        copy may lag: an older lease is always a safe one."""
        if self.start is None or self.length <= 0:
            return False
        return self.told is None or self.start - self.told >= self.length / 4
