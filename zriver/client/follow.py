"""``zriver logs -f``: print a task's output as it is produced, with no gaps and no repeats.

Subscribe first (``log.<id>``, ``evt.task.<id>``), then read what is already in the file, then
apply chunks by byte offset: a chunk at our position is written, one past it means we missed
something (PUB/SUB is lossy, and a fresh subscriber misses the first messages), so the gap is
re-read from the file through ``task.logs``. The task's end (event, or the ``final`` flag of a
read when the event was lost) triggers one last read, then ``follow`` returns.
"""

from __future__ import annotations

from typing import BinaryIO

import zmq

from zriver.client.api import Client
from zriver import lifecycle as lc
from zriver.protocol import decode

IDLE_CHECK = 2.0


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
    """Stream ``outs`` (``{"stdout": ..., "stderr": ...}``) of ``task_id`` until it ends."""
    sub = client.subscribe([f"log.{task_id}", f"evt.task.{task_id}"])
    try:
        positions = {s: _Position(client, task_id, s, out) for s, out in outs.items()}
        final = all([p.catch_up() for p in positions.values()])
        while not final:
            if not sub.poll(int(IDLE_CHECK * 1000), zmq.POLLIN):
                final = all([p.catch_up() for p in positions.values()])
                continue
            topic, frame = sub.recv_multipart()
            body = decode(frame).body
            if body.get("id") != task_id:
                continue  # a prefix match: log.17 also matches log.170
            if topic.startswith(b"log."):
                position = positions.get(body.get("stream"))
                if position is not None:
                    position.apply(body["offset"], body["data"])
            elif body.get("state") in lc.FINAL:
                final = True
        for position in positions.values():
            position.catch_up()
    finally:
        sub.close(linger=0)
