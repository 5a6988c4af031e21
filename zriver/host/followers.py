"""Who follows which task's live log over the ROUTER (``task.follow``), for a while.

A follower is a client link (its ROUTER identity) and a task id, held for ``TTL`` seconds
from its last ``task.follow``; the client asks again before then. Links that cannot be
reached are dropped. Pure bookkeeping: the times are passed in.
"""

from __future__ import annotations

TTL = 30.0


class Followers:
    def __init__(self) -> None:
        self._by_topic: dict[bytes, dict[bytes, float]] = {}

    def add(self, task_id: int, link: bytes, now: float) -> float:
        """Follow ``task_id`` from ``link`` until ``now + TTL``; returns the TTL."""
        self._by_topic.setdefault(f"log.{task_id}".encode(), {})[link] = now + TTL
        return TTL

    def of(self, topic: bytes, now: float) -> list[bytes]:
        """The live followers of ``topic`` (``log.<id>``)."""
        links = self._by_topic.get(topic)
        if not links:
            return []
        return [link for link, until in links.items() if until > now]

    def drop(self, link: bytes) -> None:
        for links in self._by_topic.values():
            links.pop(link, None)

    def expire(self, now: float) -> None:
        for topic in list(self._by_topic):
            links = {k: v for k, v in self._by_topic[topic].items() if v > now}
            if links:
                self._by_topic[topic] = links
            else:
                del self._by_topic[topic]
