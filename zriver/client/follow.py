"""``zriver logs -f``: print a task's output as it is produced, with no gaps and no repeats.

Subscribe first (``log.<id>`` or, with authentication, ``task.follow``; ``evt.task.<id>``),
then read what is already in the file, then
apply chunks by byte offset: a chunk at our position is written, one past it means we missed
something (PUB/SUB is lossy, and a fresh subscriber misses the first messages), so the gap is
re-read from the file through ``task.logs``. The task's end (event, or the ``final`` flag of a
read when the event was lost) triggers one last read, then ``follow`` returns.

Every chunk is written and flushed as it arrives (nothing is buffered here); chunks pushed
over the DEALER while a ``task.logs`` or ``task.follow`` call waits for its reply are kept by
the client (``Client.pushed``) and applied right after. On the way out, ``task.unfollow``
tells the host at once, so the runner stops tailing the task (else the follow lapses after its
TTL).
"""

from __future__ import annotations

import time
from typing import BinaryIO

import zmq

from zriver.client.api import Client
from zriver import lifecycle as lc
from zriver.errors import ZriverError
from zriver.protocol import decode

IDLE_CHECK = 2.0
UNFOLLOW_TIMEOUT = 1.0


class _Position:
    def __init__(self, client: Client, task_id: int, stream: str, out: BinaryIO) -> None:
        self.client, self.task_id, self.stream, self.out = client, task_id, stream, out
        self.offset = 0

    def catch_up(self) -> bool:
        """Read from the file up to its end; return whether the task was final by then."""
        while True:
            reply = self.client.call("task.logs", {"id": self.task_id, "stream": self.stream,
                                                   "offset": self.offset})
            data = reply["data"]
            self._write(data)
            if not data or self.offset >= reply["size"]:
                return reply["final"]

    def apply(self, offset: int, data: bytes) -> None:
        if offset > self.offset:
            self.catch_up()
        elif offset + len(data) > self.offset:
            self._write(data[self.offset - offset:])

    def _write(self, data: bytes) -> None:
        if data:
            self.out.write(data)
            self.out.flush()
            self.offset += len(data)


def follow(client: Client, task_id: int, outs: dict[str, BinaryIO]) -> None:
    """Stream ``outs`` (``{"stdout": ..., "stderr": ...}``) of ``task_id`` until it ends.

    With authentication on, chunks come over the client's own DEALER after ``task.follow``
    (asked again every third of its TTL): the XPUB carries no log bytes then. Without it,
    they come on the SUB socket with the task's events."""
    secure = client.secure
    sub = client.subscribe([f"evt.task.{task_id}"] + ([] if secure else [f"log.{task_id}"]))
    poller = zmq.Poller()
    poller.register(sub, zmq.POLLIN)
    if secure:
        poller.register(client.sock, zmq.POLLIN)
    renew_at = 0.0
    if secure:
        client.pushed = []
    try:
        positions = {s: _Position(client, task_id, s, out) for s, out in outs.items()}
        if secure:
            renew_at = ask_follow(client, task_id)
        final = all([p.catch_up() for p in positions.values()])
        while not final:
            if secure:
                if time.monotonic() > renew_at:
                    renew_at = ask_follow(client, task_id)
                _apply_pushed(client, task_id, positions)
            ready = dict(poller.poll(int(IDLE_CHECK * 1000)))
            if not ready:
                final = all([p.catch_up() for p in positions.values()])
                continue
            if client.sock in ready:
                env = decode(client.sock.recv())
                if env.op == "log" and env.body.get("id") == task_id:
                    _apply(positions, env.body)
            if sub in ready:
                topic, frame = sub.recv_multipart()
                body = decode(frame).body
                if body.get("id") != task_id:
                    continue  # a prefix match: log.17 also matches log.170
                if topic.startswith(b"log."):
                    _apply(positions, body)
                elif body.get("state") in lc.FINAL:
                    final = True
        for position in positions.values():
            position.catch_up()
    finally:
        sub.close(linger=0)
        if secure:
            client.pushed = None
            unfollow(client, task_id)


def ask_follow(client: Client, task_id: int) -> float:
    """Ask the host for the task's live chunks over this client's DEALER (``task.follow``,
    its owner and admins only); returns when to ask again."""
    ttl = client.call("task.follow", {"id": task_id})["ttl"]
    return time.monotonic() + ttl / 3


def unfollow(client: Client, task_id: int) -> None:
    """``task.unfollow``: the host stops sending (and the runner tailing) at once. Best
    effort: a host that is gone, or older, lets the follow lapse after its TTL."""
    try:
        client.call("task.unfollow", {"id": task_id}, timeout=UNFOLLOW_TIMEOUT)
    except ZriverError:
        pass


def _apply_pushed(client: Client, task_id: int, positions: dict[str, _Position]) -> None:
    """The chunks a call kept while it waited (applying one may call again: those wait for
    the next turn)."""
    pushed, client.pushed = client.pushed or [], []
    for env in pushed:
        if env.op == "log" and env.body.get("id") == task_id:
            _apply(positions, env.body)


def _apply(positions: dict[str, _Position], body: dict) -> None:
    position = positions.get(body.get("stream"))
    if position is not None:
        position.apply(body["offset"], body["data"])
