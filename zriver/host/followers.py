"""Who follows which task's live log, and so which logs the runners are asked to publish.

Two kinds of followers:

* a client link (its ROUTER identity) that asked ``task.follow`` for a task, held for ``TTL``
  seconds from its last ask (the client asks again before then) or until ``task.unfollow``;
  links that cannot be reached are dropped;
* with ``security = "none"``, a subscription to a ``log.`` topic on the XPUB
  (``subscription``): the XPUB tells the first subscription of a prefix and the end of the
  last one, so a prefix is either subscribed or not.

``changes`` turns that into the host's XSUB subscriptions: ``\\x01log.<id>`` while anyone
follows the task, ``\\x00log.<id>`` once nobody does. ZeroMQ carries them to every runner's
publishing socket (and replays them after a reconnection); a runner tails only the tasks
subscribed (``zriver.runner.logtail``) and its socket drops the other topics. An XPUB prefix
that covers every log (``""``, ``"log."``) is passed on as it is: every task is tailed then.
Pure bookkeeping: the times are passed in.
"""

from __future__ import annotations

TTL = 30.0
TOPIC = b"log."


class Followers:
    def __init__(self) -> None:
        self._by_topic: dict[bytes, dict[bytes, float]] = {}
        self._subscribed: set[bytes] = set()
        self._asked: set[bytes] = set()

    def add(self, task_id: int, link: bytes, now: float) -> float:
        """Follow ``task_id`` from ``link`` until ``now + TTL``; returns the TTL."""
        self._by_topic.setdefault(topic_of(task_id), {})[link] = now + TTL
        return TTL

    def remove(self, task_id: int, link: bytes) -> None:
        """``link`` no longer follows ``task_id`` (``task.unfollow``)."""
        topic = topic_of(task_id)
        links = self._by_topic.get(topic)
        if links is not None:
            links.pop(link, None)
            if not links:
                del self._by_topic[topic]

    def of(self, topic: bytes, now: float) -> list[bytes]:
        """The live followers of ``topic`` (``log.<id>``) over the ROUTER."""
        links = self._by_topic.get(topic)
        if not links:
            return []
        return [link for link, until in links.items() if until > now]

    def drop(self, link: bytes) -> None:
        for topic in list(self._by_topic):
            links = self._by_topic[topic]
            links.pop(link, None)
            if not links:
                del self._by_topic[topic]

    def expire(self, now: float) -> None:
        for topic in list(self._by_topic):
            links = {k: v for k, v in self._by_topic[topic].items() if v > now}
            if links:
                self._by_topic[topic] = links
            else:
                del self._by_topic[topic]

    def subscription(self, message: bytes) -> None:
        """An XPUB (un)subscription, ``\\x01<prefix>`` or ``\\x00<prefix>`` (security off);
        only prefixes that match log topics count."""
        if not message or message[0] not in (0, 1):
            return
        prefix = message[1:]
        if not (prefix.startswith(TOPIC) or TOPIC.startswith(prefix)):
            return
        if message[0] == 1:
            self._subscribed.add(prefix)
        else:
            self._subscribed.discard(prefix)

    def followed(self) -> set[bytes]:
        """The log topics (or prefixes) someone follows now."""
        return set(self._by_topic) | self._subscribed

    def asked(self) -> set[bytes]:
        """The log topics (or prefixes) the runners were asked for by ``changes``."""
        return set(self._asked)

    def changes(self) -> list[bytes]:
        """The XSUB (un)subscriptions that make the runners publish what is followed now and
        nothing else, since the last call (each prefix subscribed once)."""
        wanted = self.followed()
        out = [b"\x00" + topic for topic in sorted(self._asked - wanted)]
        out += [b"\x01" + topic for topic in sorted(wanted - self._asked)]
        self._asked = wanted
        return out


def topic_of(task_id: int) -> bytes:
    return b"log.%d" % task_id
