"""The runner's end of the byte streams (``zriver.host.streamhub`` is the host's).

``StreamEndpoint`` connects a DEALER of the runner's ``Wire`` (CURVE with the runner's key),
identity ``s:<node>:<instance>``, to ``tcp://{host}:{stream_port}`` once the host's register
reply gave the port, and says ``HELLO`` on connect and at every heartbeat (``hello``), so a
restarted host learns it at once. The frames and the flow control are in
``zriver.streamproto``.

Contract:

* only the host opens streams: on ``OPEN`` the target's handler (``targets[kind]``) runs in an
  asyncio task of its own: ``async def handler(target: dict, pipe: Pipe) -> dict``, returning
  the ``CLOSE`` body ``{"exit", "error"}``, or raising ``StreamRefused("sentence")`` to refuse.
  A handler's other exceptions close the stream with a sentence (and are logged);
* a ``CLOSE`` from the host cancels the handler (its ``finally`` blocks clean up); a ``HELLO``
  answer from another host incarnation, a changed stream port and ``close`` (runner stop) end
  every stream, the host being told where it can still hear it;
* the pipe is flow-controlled both ways: ``write`` waits for the host's credit, and the host
  may send at most ``WINDOW`` bytes the handler has not read.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

import structlog
import zmq

from zriver import streamproto as sp
from zriver.streamflow import Flow
from zriver.wire import Channel, Wire

log = structlog.get_logger("zriver.runner")

CLOSE_LINGER_MS = 200
"""How long a closing endpoint's last ``CLOSE`` frames may take to leave."""


class StreamRefused(Exception):
    """A target handler refuses a stream; ``args[0]`` is the sentence the person sees."""


class StreamClosed(ConnectionResetError):
    """A write on a stream the host has ended."""


Handler = Callable[[dict, "Pipe"], Awaitable[dict]]


class Pipe:
    """What a target handler sees of its stream. ``read`` returns the host's next chunk
    (``b""`` at its EOF or once the stream ended); ``write``/``write_stderr`` wait for credit
    and raise ``StreamClosed`` once the stream has ended; ``controls`` receives the host's
    ``CONTROL`` maps (``{"resize": [cols, rows]}``, ``{"signal": "INT"}``). The first read,
    write or ``opened()`` tells the host the target accepted (``OPENED``)."""

    def __init__(self, endpoint: "StreamEndpoint", stream_id: int, target: dict) -> None:
        self.id = stream_id
        self.target = target
        self.controls: asyncio.Queue[dict] = asyncio.Queue()
        self.flow = Flow(stream_id, lambda kind, payload: endpoint._send(stream_id, kind, payload))
        self.flow.closed_error = self._closed_error  # type: ignore[method-assign]
        self._endpoint = endpoint
        self._opened = False

    def opened(self) -> None:
        """Accept the stream (once; the first read or write does it too)."""
        if not self._opened and self.flow.result is None:
            self._opened = True
            self._endpoint._send(self.id, sp.OPENED, b"")

    async def read(self) -> bytes:
        self.opened()
        return await self.flow.read_kind(sp.DATA)

    async def write(self, data: bytes) -> None:
        self.opened()
        await self.flow.write_kind(sp.DATA, data)

    async def write_stderr(self, data: bytes) -> None:
        self.opened()
        await self.flow.write_kind(sp.STDERR, data)

    def write_eof(self) -> None:
        self.opened()
        self.flow.write_eof()

    def _closed_error(self) -> Exception:
        return StreamClosed((self.flow.result or {}).get("error") or "the stream is closed")


class StreamEndpoint:
    """A runner's stream connection to the host; see the module docstring."""

    def __init__(self, node: str, instance: str, wire: Wire | None = None,
                 targets: dict[str, Handler] | None = None) -> None:
        self.node = node
        self.instance = instance
        self.wire = wire
        """The runner's ``Wire`` (set before ``connect``)."""
        self.targets: dict[str, Handler] = dict(targets or {})
        self.address = ""
        self.host_incarnation: str | None = None
        self.channel: Channel | None = None
        self._pipes: dict[int, tuple[Pipe, asyncio.Task]] = {}

    @property
    def streams(self) -> int:
        """How many streams are open."""
        return len(self._pipes)

    # ---- connection ----------------------------------------------------------------------
    def connect(self, host: str, port: int) -> None:
        """Connect to the host's stream port (again only when the address changed) and say
        ``HELLO``. Streams of a previous address are ended."""
        address = f"tcp://{host}:{port}"
        if address != self.address:
            self._disconnect(f"the host's stream port changed (now {port})")
            sock = self.wire.dealer(address, identity=sp.identity(self.node, self.instance))
            self.channel, self.address = Channel(sock, self._on_message), address
            log.info("streams.connected", node=self.node, address=address)
        self.hello()

    def hello(self) -> None:
        """Tell the host who this runner is (cheap; every heartbeat)."""
        self._send(0, sp.HELLO, sp.pack({"node": self.node, "instance": self.instance}))

    async def close(self, reason: str) -> None:
        """End every stream with ``reason`` (the host is told) and close the socket."""
        tasks = self._end_all(reason, tell=True)
        self._send(0, sp.CLOSE, sp.close_body(None, reason))  # this life is leaving
        await asyncio.gather(*tasks, return_exceptions=True)
        self._close_socket()

    def _disconnect(self, reason: str) -> None:
        self._end_all(reason, tell=True)
        self._close_socket()

    def _close_socket(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel.sock.close(linger=CLOSE_LINGER_MS)
            self.channel, self.address = None, ""

    def _end_all(self, reason: str, tell: bool) -> list[asyncio.Task]:
        tasks = []
        for stream_id in list(self._pipes):
            tasks.append(self._end(stream_id, {"exit": None, "error": reason}, tell))
        return tasks

    def _end(self, stream_id: int, result: dict, tell: bool, cancel: bool = True) -> asyncio.Task:
        """Forget a stream, cancel its handler (``cancel``), and (``tell``) send its
        ``CLOSE``."""
        pipe, task = self._pipes.pop(stream_id)
        if tell and pipe.flow.result is None:
            self._send(stream_id, sp.CLOSE, sp.close_body(result.get("exit"), result.get("error")))
        pipe.flow.finish(result)
        if cancel:
            task.cancel()
        return task

    # ---- receiving -----------------------------------------------------------------------
    def _on_message(self, frames: list[bytes]) -> None:
        try:
            stream_id, kind, payload = sp.parse(frames)
        except sp.ProtocolError as exc:
            log.warning("streams.bad_frame", error=str(exc))
            return
        if kind == sp.HELLO:
            self._on_hello(payload)
        elif kind == sp.OPEN:
            self._open(stream_id, payload)
        elif stream_id not in self._pipes:
            if kind != sp.CLOSE:  # the host forgot it (or never knew): tell it to forget too
                self._send(stream_id, sp.CLOSE, sp.close_body(None, "the runner has no such stream"))
        elif kind == sp.CLOSE:
            self._end(stream_id, sp.parse_close(payload), tell=False)
        elif kind == sp.CONTROL:
            self._control(stream_id, payload)
        else:
            pipe = self._pipes[stream_id][0]
            if not pipe.flow.on_frame(kind, payload) or pipe.flow.result is not None:
                self._end(stream_id, {"exit": None, "error": f"the host sent a bad "
                                      f"{sp.KIND_NAMES[kind]} frame"}, tell=True)

    def _on_hello(self, payload: bytes) -> None:
        try:
            incarnation = sp.unpack_map(payload).get("host")
        except sp.ProtocolError:
            return
        if self.host_incarnation not in (None, incarnation):
            self._end_all("the host restarted", tell=False)
        self.host_incarnation = incarnation

    def _control(self, stream_id: int, payload: bytes) -> None:
        try:
            self._pipes[stream_id][0].controls.put_nowait(sp.unpack_map(payload))
        except sp.ProtocolError as exc:
            log.warning("streams.bad_control", error=str(exc))

    def _open(self, stream_id: int, payload: bytes) -> None:
        if stream_id in self._pipes:
            return  # a repeated OPEN: the stream is already being served
        try:
            target = sp.unpack_map(payload)
        except sp.ProtocolError as exc:
            self._send(stream_id, sp.CLOSE, sp.close_body(None, f"a bad stream target ({exc})"))
            return
        pipe = Pipe(self, stream_id, target)
        task = asyncio.ensure_future(self._serve(pipe))
        self._pipes[stream_id] = (pipe, task)

    async def _serve(self, pipe: Pipe) -> None:
        """Run the target's handler; send its ``CLOSE`` unless the stream was ended already."""
        kind = str(pipe.target.get("kind"))
        try:
            handler = self.targets.get(kind)
            if handler is None:
                raise StreamRefused(f"node {self.node} offers no {kind!r} streams")
            result = await handler(pipe.target, pipe)
        except StreamRefused as exc:
            result = {"exit": None, "error": str(exc)}
        except StreamClosed:
            return
        except Exception as exc:
            log.exception("streams.handler_failed", kind=kind)
            result = {"exit": None, "error": f"the {kind} stream failed on node {self.node}: "
                                             f"{exc}"}
        if self._pipes.get(pipe.id, (None,))[0] is pipe:
            self._end(pipe.id, result or {}, tell=True, cancel=False)

    # ---- sending -------------------------------------------------------------------------
    def _send(self, stream_id: int, kind: int, payload: bytes) -> None:
        if self.channel is None:
            return
        try:
            self.channel.send(sp.frames(stream_id, kind, payload))
        except zmq.ZMQError as exc:
            log.warning("streams.send_failed", error=str(exc))
