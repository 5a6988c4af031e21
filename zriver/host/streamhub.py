"""Byte streams from the host to targets on runners (shells, port forwards): ``host.streams``.

The host binds a ROUTER of its own (``host.endpoints["streams"]``, CURVE + ZAP like the other
sockets, made by the host's ``Wire``), never the control ROUTER: a stream's bytes cannot delay
a heartbeat, a dispatch or a reply. Each runner connects a DEALER with the identity
``s:<node>:<instance>`` and says ``HELLO`` on connect and every heartbeat; the frames and flow
control are in ``zriver.streamproto``.

Contract:

* a stream peer is accepted only if the CURVE key of its messages is the runner key of the node
  its identity names (with ``security = "none"``, what the identity says); anything else is
  ignored (and logged once);
* a ``HELLO`` from a node with another instance than the one known ends that node's streams
  ("node N restarted"), and so does a runner's goodbye (``CLOSE`` on stream 0); a node whose messages stop for ``liveness`` seconds, or whose
  connection is gone (a send finds no peer: ``ROUTER_MANDATORY``), has its streams ended with
  a sentence saying so, and ``connected(node)`` is False until it says ``HELLO`` again;
* only the host opens streams (``open``); per stream and direction at most ``WINDOW`` bytes are
  in flight, so the hub buffers at most that much per stream, and a stream whose reader does
  not read stalls only itself: ``Stream.write`` waits for credit, the runner for the hub's;
* ``close`` (host stop) ends every stream and tells the runners.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from zriver import streamproto as sp
from zriver.errors import ZriverError
from zriver.streamflow import Flow
from zriver.wire import Channel, Unreachable

if TYPE_CHECKING:
    from zriver.host.service import Host

log = structlog.get_logger("zriver.host")


class StreamError(ZriverError):
    """A stream could not be opened or was ended; ``args[0]`` is a sentence for the person."""

    code = "stream"


@dataclass(slots=True)
class Peer:
    """A runner's stream connection as the hub knows it."""

    node: str
    instance: str
    identity: bytes
    seen: float
    streams: set[int] = field(default_factory=set)


class Stream:
    """One open stream on the host. ``read`` returns one ``DATA`` frame's bytes (one datagram
    for a UDP target), ``b""`` at EOF or once the stream ended (``wait_closed`` then says how).
    Exec without a TTY: ``read`` and ``read_stderr`` share the window, so read both."""

    def __init__(self, hub: "StreamHub", peer: Peer, stream_id: int, target: dict) -> None:
        self.hub = hub
        self.node = peer.node
        self.peer = peer
        self.id = stream_id
        self.target = target
        self.flow = Flow(stream_id, self._send)
        self.flow.closed_error = self._closed_error  # type: ignore[method-assign]
        self._opened: asyncio.Future = asyncio.get_running_loop().create_future()

    @property
    def buffered(self) -> int:
        """Bytes received from the runner and not read yet (at most ``WINDOW``)."""
        return self.flow.buffered

    @property
    def closed(self) -> bool:
        return self.flow.result is not None

    async def read(self) -> bytes:
        """The next chunk of stdout/data; ``b""`` at EOF."""
        return await self.flow.read_kind(sp.DATA)

    async def read_stderr(self) -> bytes:
        """The next chunk of stderr (an exec without a TTY only); ``b""`` at EOF."""
        return await self.flow.read_kind(sp.STDERR)

    async def write(self, data: bytes) -> None:
        """Send ``data``, waiting while the runner's window is used up. ``StreamError`` once
        the stream has ended."""
        await self.flow.write_kind(sp.DATA, data)

    def write_eof(self) -> None:
        """No more bytes from this side (a TCP half-close; stdin's end for an exec)."""
        self.flow.write_eof()

    def resize(self, cols: int, rows: int) -> None:
        self._control({"resize": [int(cols), int(rows)]})

    def signal(self, name: str) -> None:
        """Send signal ``name`` ("INT", "TERM", "KILL", "HUP", ...) to an exec's process."""
        self._control({"signal": str(name).upper().removeprefix("SIG")})

    async def wait_closed(self) -> dict:
        """``{"exit": int|None, "error": str|None}`` once the stream has ended."""
        return await self.flow.wait_done()

    def close(self, error: str | None = None) -> None:
        """Abort the stream (the runner ends its side); idempotent."""
        if self.flow.result is None:
            self._send(sp.CLOSE, sp.close_body(None, error))
            self._end({"exit": None, "error": error})

    # ---- for the hub ---------------------------------------------------------------------
    def _control(self, body: dict) -> None:
        if self.flow.result is None:
            self._send(sp.CONTROL, sp.pack(body))

    def _send(self, kind: int, payload: bytes) -> None:
        self.hub._send(self.peer, self.id, kind, payload)

    def _end(self, result: dict) -> None:
        self.flow.finish(result)
        if not self._opened.done():
            self._opened.set_result(self.flow.result)
        self.hub._forget(self)

    def _on_frame(self, kind: int, payload: bytes) -> None:
        if kind == sp.OPENED:
            if not self._opened.done():
                self._opened.set_result(None)
        elif kind == sp.CLOSE:
            self._end(sp.parse_close(payload))
        elif not self.flow.on_frame(kind, payload):
            self.close(f"the runner sent an unexpected {sp.KIND_NAMES[kind]} frame")
        elif self.flow.result is not None:  # the flow ended itself (a window overrun)
            self._end(self.flow.result)

    def _closed_error(self) -> Exception:
        error = (self.flow.result or {}).get("error")
        return StreamError(error or f"the stream to node {self.node} is closed")


class StreamHub:
    """The host's end of the byte streams; see the module docstring."""

    def __init__(self, host: "Host") -> None:
        self.host = host
        self.channel: Channel | None = None
        self.endpoint = ""
        self.liveness = host.settings.heartbeat_interval * (max(3, host.settings.heartbeat_misses) + 1)
        """Seconds without a word after which a stream peer counts as gone."""
        self.peers: dict[str, Peer] = {}
        """The stream connection of each node whose runner said ``HELLO`` (read only)."""
        self._streams: dict[int, Stream] = {}
        self._next_id = secrets.randbits(48) + 1  # never the ids a previous host life used
        self.ignored: set[bytes] = set()
        """Identities of stream peers ignored for a key that is not their node's runner key."""
        self._watch: asyncio.Task | None = None
        self._hello_seen = asyncio.Event()  # set (and replaced) at every new peer

    # ---- lifecycle -----------------------------------------------------------------------
    def start(self) -> str:
        """Bind the ROUTER (on the host's ``Wire``); returns its endpoint."""
        settings = self.host.settings
        sock, self.endpoint = self.host.wire.router(
            f"tcp://{settings.bind_address}:{settings.stream_port}")
        self.channel = Channel(sock, self._on_message, with_user=self.host.secure)
        self._watch = asyncio.ensure_future(self._watch_peers())
        return self.endpoint

    async def close(self) -> None:
        """End every stream (the runners are told) and stop receiving."""
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        for stream in list(self._streams.values()):
            stream.close("the host is stopping")
        if self.channel is not None:
            self.channel.close()
            self.channel = None

    # ---- the API -------------------------------------------------------------------------
    def connected(self, node: str) -> bool:
        """Whether ``node``'s runner is connected for streams now."""
        peer = self.peers.get(node)
        return peer is not None and time.monotonic() - peer.seen < self.liveness

    async def wait_connected(self, node: str, timeout: float, instance: str | None = None) -> bool:
        """Wait up to ``timeout`` seconds for ``node`` to be connected (with ``instance``: that
        runner life); returns whether it is."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout

        def ready() -> bool:
            return self.connected(node) and instance in (None, self.peers[node].instance)
        while not ready() and loop.time() < deadline:
            try:
                await asyncio.wait_for(self._hello_seen.wait(), deadline - loop.time())
            except asyncio.TimeoutError:
                break
        return ready()

    def streams_of(self, node: str) -> list[Stream]:
        peer = self.peers.get(node)
        return [self._streams[i] for i in sorted(peer.streams)] if peer is not None else []

    async def open(self, node: str, target: dict, timeout: float = 15.0) -> Stream:
        """Open a stream to ``target`` on ``node`` (the runner's targets: ``tcp``, ``udp``,
        ``exec``, ...). Raises ``StreamError`` with a sentence: the node is not connected,
        it did not answer within ``timeout``, or its refusal."""
        if self.channel is None or not self.connected(node):
            raise StreamError(f"node {node} is not connected for streams")
        peer = self.peers[node]
        stream = Stream(self, peer, self._next_id, target)
        self._next_id += 1
        self._streams[stream.id] = stream
        peer.streams.add(stream.id)
        self._send(peer, stream.id, sp.OPEN, sp.pack(target))
        try:
            refused = await asyncio.wait_for(asyncio.shield(stream._opened), timeout)
        except asyncio.TimeoutError:
            stream.close("the host gave up waiting for the runner")
            raise StreamError(f"node {node} did not answer the stream request within "
                              f"{timeout:g} s") from None
        except asyncio.CancelledError:
            stream.close("the host gave up the stream")
            raise
        if refused is not None:
            raise StreamError(refused.get("error") or f"node {node} refused the stream")
        return stream

    # ---- receiving -----------------------------------------------------------------------
    def _on_message(self, frames: list[bytes], user: str = "") -> None:
        who = self._verified(frames[0], user)
        if who is None:
            return
        try:
            stream_id, kind, payload = sp.parse(frames[1:])
        except sp.ProtocolError as exc:
            log.warning("streams.bad_frame", node=who[0], error=str(exc))
            return
        if kind == sp.HELLO:
            self._hello(frames[0], *who)
            return
        peer = self.peers.get(who[0])
        if peer is not None and peer.identity == frames[0]:
            peer.seen = time.monotonic()
            if stream_id == 0 and kind == sp.CLOSE:  # this runner life is leaving
                self._end_node(peer.node, sp.parse_close(payload)["error"] or
                               f"the runner of node {peer.node} stopped", tell=False)
                return
        stream = self._streams.get(stream_id)
        if stream is None or stream.peer.identity != frames[0]:
            if kind != sp.CLOSE:  # a stream this host does not know: the runner forgets it
                self._send_raw(frames[0], stream_id, sp.CLOSE,
                               sp.close_body(None, "the host has no such stream"))
            return
        stream._on_frame(kind, payload)

    def _verified(self, identity: bytes, user: str) -> tuple[str, str] | None:
        """``(node, instance)`` of a stream peer whose key is that node's runner key."""
        who = sp.parse_identity(identity)
        if who is not None and self.host.secure:
            principal = self.host.keys.table.principal(user or "")
            if principal is None or principal.node != who[0]:
                who = None
        if who is None and identity not in self.ignored and len(self.ignored) < 1000:
            self.ignored.add(identity)
            log.warning("streams.peer_ignored", identity=identity[:80].decode(errors="replace"),
                        reason="not the runner key of the node its identity names")
        return who

    def _hello(self, identity: bytes, node: str, instance: str) -> None:
        peer = self.peers.get(node)
        if peer is not None and peer.instance != instance:
            self._end_node(node, f"node {node} restarted: its streams ended", tell=True)
            peer = None
        if peer is None:
            peer = self.peers[node] = Peer(node, instance, identity, time.monotonic())
            log.info("streams.peer", node=node)
            self._hello_seen.set()
            self._hello_seen = asyncio.Event()
        peer.seen = time.monotonic()
        self._send(peer, 0, sp.HELLO, sp.pack({"host": self.host.incarnation}))

    # ---- sending -------------------------------------------------------------------------
    def _send(self, peer: Peer, stream_id: int, kind: int, payload: bytes) -> None:
        """Send to ``peer``; a peer that is gone has all its streams ended."""
        if self.peers.get(peer.node) is not peer:
            return  # a peer already replaced or gone: its streams are ended
        if not self._send_raw(peer.identity, stream_id, kind, payload):
            self._end_node(peer.node, f"node {peer.node} went away (its stream connection "
                                      f"is gone)", tell=False)

    def _send_raw(self, identity: bytes, stream_id: int, kind: int, payload: bytes) -> bool:
        if self.channel is None:
            return False
        try:
            self.channel.send([identity, *sp.frames(stream_id, kind, payload)])
        except Unreachable:
            return False
        return True

    # ---- ends ----------------------------------------------------------------------------
    def _forget(self, stream: Stream) -> None:
        self._streams.pop(stream.id, None)
        stream.peer.streams.discard(stream.id)

    def _end_node(self, node: str, error: str, tell: bool) -> None:
        """End every stream of ``node`` with ``error`` and forget its peer (``tell``: send
        each stream's ``CLOSE`` to the old connection first)."""
        peer = self.peers.get(node)
        if peer is None:
            return
        if not tell:
            del self.peers[node]
        for stream_id in sorted(peer.streams):
            stream = self._streams.get(stream_id)
            if stream is not None:
                if tell:
                    self._send_raw(peer.identity, stream_id, sp.CLOSE, sp.close_body(None, error))
                stream._end({"exit": None, "error": error})
        self.peers.pop(node, None)
        if peer.streams or tell:
            log.info("streams.node_ended", node=node, error=error)

    async def _watch_peers(self) -> None:
        """End the streams of peers that stopped saying anything."""
        while True:
            await asyncio.sleep(self.host.settings.heartbeat_interval)
            now = time.monotonic()
            for peer in list(self.peers.values()):
                if now - peer.seen >= self.liveness:
                    self._end_node(peer.node, f"node {peer.node} stopped answering (nothing "
                                              f"for {now - peer.seen:.3g} s)", tell=False)
