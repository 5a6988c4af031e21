"""``zriver forward``: a local port that reaches a port inside a container, through the relay.

Both kinds run over one SSH connection to the relay as the jump user ``zriver``:

* **TCP** (``forward_tcp``): asyncssh's ``forward_local_port`` on ``127.0.0.1:LOCAL``; each
  accepted connection is its own ``direct-tcpip`` channel to ``task-ID:PORT`` (its own stream
  on the host, with its own back-pressure).
* **UDP** (``forward_udp``): a local UDP socket on ``127.0.0.1:LOCAL``; each client address
  gets one ``direct-tcpip`` channel to ``udp-ID:PORT``, on which every datagram travels as a
  2-byte big-endian length and the datagram, both ways (the relay's framing). Empty datagrams
  are dropped (the relay drops them too).

Both print where they listen and serve until ``stop`` is set (the verb sets it on Ctrl-C).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from typing import Callable

import asyncssh

from zriver.client.sshclient import refused

LOOPBACK = "127.0.0.1"
MAX_DATAGRAM = 65507


def destination(ref: str, udp: bool = False) -> str:
    """The relay's name for task ``ref`` (an id or a task name): ``task-ID``/``NAME``, and
    ``udp-ID``/``udp-NAME`` for UDP."""
    if udp:
        return f"udp-{ref}"
    return f"task-{ref}" if ref.isdigit() else ref


async def forward_tcp(conn: asyncssh.SSHClientConnection, ref: str, port: int, local: int,
                      say: Callable[[str], None], stop: asyncio.Event) -> int:
    """Serve ``127.0.0.1:local`` -> ``task-ID:port`` until ``stop``; returns 0."""
    await _probe(conn, destination(ref), port, say)
    listener = await conn.forward_local_port(LOOPBACK, local, destination(ref), port)
    try:
        say(f"forwarding {LOOPBACK}:{listener.get_port()} -> task {ref} port {port} "
            f"(TCP); Ctrl-C stops")
        await stop.wait()
    finally:
        listener.close()
    return 0


async def _probe(conn: asyncssh.SSHClientConnection, host: str, port: int,
                 say: Callable[[str], None]) -> None:
    """Open and close one channel first: a refusal (no such task, not running, not yours) is
    said at once and ends the forward; nothing listening there yet is only a warning (the
    service may come up later)."""
    try:
        _, writer = await conn.open_connection(host, port)
    except asyncssh.ChannelOpenError as exc:
        if exc.code != asyncssh.OPEN_CONNECT_FAILED:
            raise refused(exc, f"a forward to {host} port {port}") from None
        say(f"warning: nothing answers on {host} port {port} yet ({exc.reason}); "
            f"forwarding anyway")
        return
    writer.close()


class UdpForward(asyncio.DatagramProtocol):
    """The local UDP socket: one framed channel per client address."""

    def __init__(self, conn: asyncssh.SSHClientConnection, host: str, port: int,
                 say: Callable[[str], None]) -> None:
        self.conn, self.host, self.port, self.say = conn, host, port, say
        self.transport: asyncio.DatagramTransport | None = None
        self.peers: dict[tuple, asyncio.Queue] = {}
        self.tasks: set[asyncio.Task] = set()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        queue = self.peers.get(addr)
        if queue is None:
            queue = self.peers[addr] = asyncio.Queue(maxsize=1024)
            task = asyncio.ensure_future(self._peer(addr, queue))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        if data and not queue.full():  # UDP may drop: a flooding client loses its own
            # datagrams; an empty one is dropped (on the host's stream it would read as EOF)
            queue.put_nowait(data)

    async def _peer(self, addr, queue: asyncio.Queue) -> None:
        try:
            reader, writer = await self.conn.open_connection(self.host, self.port,
                                                             encoding=None)
        except asyncssh.ChannelOpenError as exc:
            self.say(str(refused(exc, f"UDP to {self.host} port {self.port}")))
            self.peers.pop(addr, None)
            return
        back = asyncio.ensure_future(self._back(reader, addr))
        try:
            while True:
                data = await queue.get()
                writer.write(struct.pack(">H", len(data)) + data)
                await writer.drain()
        finally:
            back.cancel()
            writer.close()
            self.peers.pop(addr, None)

    async def _back(self, reader: asyncssh.SSHReader, addr) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, asyncssh.Error):
            while True:
                (length,) = struct.unpack(">H", await reader.readexactly(2))
                data = await reader.readexactly(length) if length else b""
                if self.transport is not None:
                    self.transport.sendto(data, addr)

    def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self.transport is not None:
            self.transport.close()


async def forward_udp(conn: asyncssh.SSHClientConnection, ref: str, port: int, local: int,
                      say: Callable[[str], None], stop: asyncio.Event) -> int:
    """Serve UDP ``127.0.0.1:local`` -> ``udp-ID:port`` until ``stop``; returns 0."""
    host = destination(ref, udp=True)
    await _probe(conn, host, port, say)
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: UdpForward(conn, host, port, say), local_addr=(LOOPBACK, local))
    try:
        bound = transport.get_extra_info("sockname")[1]
        say(f"forwarding {LOOPBACK}:{bound} -> task {ref} port {port} (UDP); Ctrl-C stops")
        await stop.wait()
    finally:
        protocol.close()
    return 0
