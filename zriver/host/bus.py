"""The host's in-process event bus: what the host publishes, for front ends in its process.

The ZeroMQ adapter sends every event to its XPUB socket and, when anything in the process has
subscribed, to this bus too: the same topics (``evt.task.<id>``, ``evt.node.<name>``,
``hb.<node>``, ``log.<id>``) and the same msgpack frames a SUB socket would receive. A front
end (the SSH relay, the web API) subscribes by topic prefix and must authorise what it
forwards: ``log.<id>`` frames are a task's output, for its owner and admins only.
"""

from __future__ import annotations

from typing import Callable

Listener = Callable[[bytes, bytes], None]


class EventBus:
    """Topic-prefix subscriptions; ``publish`` calls every matching listener in order."""

    def __init__(self) -> None:
        self._listeners: list[tuple[bytes, Listener]] = []

    def __bool__(self) -> bool:
        return bool(self._listeners)

    def subscribe(self, prefix: bytes, listener: Listener) -> Callable[[], None]:
        """Call ``listener(topic, frame)`` for each event whose topic starts with ``prefix``;
        returns the function that unsubscribes it."""
        entry = (prefix, listener)
        self._listeners.append(entry)

        def unsubscribe() -> None:
            if entry in self._listeners:
                self._listeners.remove(entry)

        return unsubscribe

    def publish(self, topic: bytes, frame: bytes) -> None:
        for prefix, listener in list(self._listeners):
            if topic.startswith(prefix):
                listener(topic, frame)
