"""The byte-stream protocol between the host and its runners (pure: no sockets, no loop).

A stream carries bytes between something on the host (the SSH relay) and a target on a runner
(a TCP or UDP port in a container, a ``docker exec``). It runs on its own ZeroMQ socket pair,
never on the control channel: the host binds a ROUTER, each runner connects a DEALER whose
identity is ``s:<node>:<instance>`` (``identity``). Only the host opens streams.

A message is two frames ``[header, payload]``; the header is ``HEADER`` (``>QB``: stream id,
kind). Stream id 0 is the peer itself (``HELLO``). Kinds:

- ``HELLO`` (id 0): runner -> host on connect and every heartbeat, payload msgpack
  ``{"node", "instance"}``; the host answers ``HELLO`` with ``{"host": incarnation}``;
- ``OPEN``: host -> runner, payload the msgpack target (``{"kind": "tcp", ...}``);
- ``OPENED``: runner -> host, empty: the target accepted, bytes may flow;
- ``DATA`` / ``STDERR``: a chunk of at most ``CHUNK`` bytes (``STDERR`` only from an exec
  without a TTY); one ``DATA`` frame is one datagram for a UDP target;
- ``CREDIT``: payload ``CREDIT_BODY`` (``>Q``): that many more bytes may be sent;
- ``EOF``: the sender sends no more bytes (both ``DATA`` and ``STDERR``);
- ``CONTROL``: host -> runner, msgpack ``{"resize": [cols, rows]}`` or ``{"signal": "INT"}``;
- ``CLOSE``: either way, msgpack ``{"exit": int|None, "error": str|None}``; the stream is gone
  for its sender. A frame for a stream the receiver does not know is answered with a
  ``CLOSE`` (except a ``CLOSE``), so both ends forget it. ``CLOSE`` on stream id 0 (runner ->
  host): this runner life is leaving (its streams are closed already).

Flow control: per stream and direction the receiver grants ``WINDOW`` bytes at the start and
gives credit back only once its consumer took bytes. ``DATA`` and ``STDERR`` share the window,
so a consumer of an exec without a TTY reads both. A sender never splits below ``CHUNK``: it
waits until the credit covers the next piece, so a receiver holds at most ``WINDOW`` bytes.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

HEADER = struct.Struct(">QB")
CREDIT_BODY = struct.Struct(">Q")
WINDOW = 1 << 20
"""Bytes a receiver grants per stream and direction."""
CHUNK = 256 << 10
"""The largest ``DATA``/``STDERR`` payload."""
CREDIT_BATCH = CHUNK
"""A receiver returns credit once this much was consumed, or when its buffer ran empty."""

HELLO, OPEN, OPENED, DATA, STDERR, CREDIT, EOF, CONTROL, CLOSE = range(1, 10)
KIND_NAMES = {HELLO: "HELLO", OPEN: "OPEN", OPENED: "OPENED", DATA: "DATA", STDERR: "STDERR",
              CREDIT: "CREDIT", EOF: "EOF", CONTROL: "CONTROL", CLOSE: "CLOSE"}
PREFIX = b"s:"


class ProtocolError(ValueError):
    """A message that is not a well-formed stream frame."""


def identity(node: str, instance: str) -> bytes:
    """A runner's stream DEALER identity."""
    return f"s:{node}:{instance}".encode()


def parse_identity(ident: bytes) -> tuple[str, str] | None:
    """``(node, instance)`` of ``s:<node>:<instance>``; ``None`` for anything else."""
    if not ident.startswith(PREFIX):
        return None
    node, sep, instance = ident[len(PREFIX):].decode(errors="replace").rpartition(":")
    return (node, instance) if sep and node and instance else None


def frames(stream_id: int, kind: int, payload: bytes = b"") -> list[bytes]:
    """The two frames of one message."""
    return [HEADER.pack(stream_id, kind), payload]


def parse(parts: list[bytes]) -> tuple[int, int, bytes]:
    """``(stream id, kind, payload)`` of ``[header, payload]``; ``ProtocolError`` otherwise."""
    if len(parts) != 2 or len(parts[0]) != HEADER.size:
        raise ProtocolError(f"a stream message is [header, payload], got {len(parts)} frames")
    stream_id, kind = HEADER.unpack(parts[0])
    if kind not in KIND_NAMES:
        raise ProtocolError(f"unknown stream frame kind {kind}")
    if kind in (DATA, STDERR) and len(parts[1]) > CHUNK:
        raise ProtocolError(f"a chunk of {len(parts[1])} bytes is over {CHUNK}")
    return stream_id, kind, parts[1]


def pack(body: Any) -> bytes:
    return msgpack.packb(body, use_bin_type=True)


def unpack_map(payload: bytes) -> dict:
    """A msgpack map payload (``OPEN``, ``CONTROL``, ``CLOSE``, ``HELLO``)."""
    try:
        body = msgpack.unpackb(payload, raw=False) if payload else {}
    except Exception as exc:
        raise ProtocolError(f"bad msgpack payload: {exc}") from None
    if not isinstance(body, dict):
        raise ProtocolError("the payload is not a map")
    return body


def credit(count: int) -> bytes:
    return CREDIT_BODY.pack(count)


def parse_credit(payload: bytes) -> int:
    if len(payload) != CREDIT_BODY.size:
        raise ProtocolError("a CREDIT payload is 8 bytes")
    return CREDIT_BODY.unpack(payload)[0]


def close_body(exit_code: int | None = None, error: str | None = None) -> bytes:
    return pack({"exit": exit_code, "error": error})


def parse_close(payload: bytes) -> dict:
    """``{"exit": int|None, "error": str|None}`` of a ``CLOSE`` (a bad one reads as an error)."""
    try:
        body = unpack_map(payload)
    except ProtocolError as exc:
        return {"exit": None, "error": f"the peer closed the stream with a bad message ({exc})"}
    exit_code, error = body.get("exit"), body.get("error")
    return {"exit": exit_code if isinstance(exit_code, int) else None,
            "error": str(error) if error is not None else None}


def pieces(data: bytes) -> list:
    """``data`` cut into chunks of at most ``CHUNK`` bytes (none for empty data)."""
    if len(data) <= CHUNK:
        return [data] if data else []
    view = memoryview(data)
    return [view[i:i + CHUNK] for i in range(0, len(view), CHUNK)]


class Credit:
    """The receive side of one direction's window: what was consumed and not yet returned.

    ``take(n)`` after the consumer took ``n`` bytes returns the credit to send now (0: not
    yet): at least ``CREDIT_BATCH`` bytes, or everything once nothing is buffered."""

    def __init__(self) -> None:
        self.pending = 0

    def take(self, count: int, buffered: int) -> int:
        self.pending += count
        if self.pending >= CREDIT_BATCH or (buffered == 0 and self.pending):
            count, self.pending = self.pending, 0
            return count
        return 0
