"""One stream's buffers and windows, the same at both ends (``zriver.streamproto``'s rules).

``Flow`` is the part of a stream the host's ``Stream`` and the runner's pipe share: what the
peer sent and the consumer has not read (at most ``WINDOW`` bytes: the peer may send only what
it was granted), the credit this end may still spend, the two EOFs, and the end result. It does
no I/O of its own: ``send(kind, payload)`` puts one message on the end's socket, and the end
feeds received ``DATA``/``STDERR``/``CREDIT``/``EOF`` frames to ``on_frame``. Everything runs on
the loop thread.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Callable

from zriver import streamproto as sp


class Flow:
    """Flow-controlled byte queues of one stream. ``finish(result)`` ends it: readers get the
    bytes already buffered, then ``b""``; writers get ``closed_error()``."""

    def __init__(self, stream_id: int, send: Callable[[int, bytes], None]) -> None:
        self.id = stream_id
        self._send = send
        self._boxes: dict[int, collections.deque[bytes]] = {
            sp.DATA: collections.deque(), sp.STDERR: collections.deque()}
        self.buffered = 0
        """Bytes received and not yet read (never over ``WINDOW``)."""
        self.credit = sp.WINDOW
        """Bytes this end may still send."""
        self._granted = sp.WINDOW  # bytes the peer may still send
        self._returning = sp.Credit()
        self.eof_received = False
        self.eof_sent = False
        self.result: dict | None = None
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._done = asyncio.Event()

    # ---- receiving -----------------------------------------------------------------------
    def on_frame(self, kind: int, payload: bytes) -> bool:
        """Take a ``DATA``/``STDERR``/``CREDIT``/``EOF`` frame; False for other kinds. A peer
        that sends past its window ends the stream with an error."""
        if kind in (sp.DATA, sp.STDERR):
            self._granted -= len(payload)
            if self._granted < 0:
                self.abort("the peer sent more bytes than its window allows")
                return True
            if payload:
                self._boxes[kind].append(payload)
                self.buffered += len(payload)
        elif kind == sp.CREDIT:
            self.credit += sp.parse_credit(payload)
        elif kind == sp.EOF:
            self.eof_received = True
        else:
            return False
        self._wake()
        return True

    async def read_kind(self, kind: int) -> bytes:
        """The next chunk of ``kind`` (one frame's payload); ``b""`` at EOF or once ended."""
        box = self._boxes[kind]
        while not box:
            if self.eof_received or self.result is not None:
                return b""
            self._readable.clear()
            await self._readable.wait()
        data = box.popleft()
        self.buffered -= len(data)
        returned = self._returning.take(len(data), self.buffered)
        if returned and self.result is None:
            self._granted += returned
            self._send(sp.CREDIT, sp.credit(returned))
        return data

    # ---- sending -------------------------------------------------------------------------
    async def write_kind(self, kind: int, data: bytes) -> None:
        """Send ``data`` as ``kind`` frames of at most ``CHUNK`` bytes, each once the credit
        covers it (back-pressure). Raises ``closed_error()`` once the stream has ended or
        after ``EOF`` was sent."""
        for piece in sp.pieces(data):
            while self.credit < len(piece) and self.result is None:
                self._writable.clear()
                await self._writable.wait()
            if self.result is not None or self.eof_sent:
                raise self.closed_error()
            self.credit -= len(piece)
            self._send(kind, bytes(piece))

    def write_eof(self) -> None:
        """Say that this end sends no more bytes (once; nothing after the stream ended)."""
        if not self.eof_sent and self.result is None:
            self.eof_sent = True
            self._send(sp.EOF, b"")

    # ---- the end -------------------------------------------------------------------------
    def finish(self, result: dict) -> bool:
        """Record the end (the first result stands); wakes every reader and writer. Returns
        whether this call ended it."""
        if self.result is not None:
            return False
        self.result = {"exit": result.get("exit"), "error": result.get("error")}
        self._wake()
        self._done.set()
        return True

    def abort(self, error: str) -> None:
        """End the stream here and tell the peer (``CLOSE`` with ``error``)."""
        if self.result is None:
            self._send(sp.CLOSE, sp.close_body(None, error))
            self.finish({"exit": None, "error": error})

    async def wait_done(self) -> dict:
        await self._done.wait()
        return dict(self.result)

    def closed_error(self) -> Exception:
        """What a write on an ended stream raises (the ends override it)."""
        error = (self.result or {}).get("error")
        return ConnectionResetError(error or "the stream is closed")

    def _wake(self) -> None:
        self._readable.set()
        self._writable.set()
