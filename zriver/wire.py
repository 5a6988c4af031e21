"""ZeroMQ sockets: created in one place, driven by the asyncio loop without zmq.asyncio.

``Wire`` owns the one ``zmq.Context`` of a process and is the only code that creates sockets,
so that authentication is switched on here for every socket at once: given ``server_keys``
(the host), the bound sockets (ROUTER, XSUB, XPUB) are CURVE servers whose peers are checked by
the ZAP handler on the same context (``zriver.host.zap``, domain ``"zriver"``); given
``client_keys`` (a client or runner), the connecting sockets (DEALER, PUB, SUB) are CURVE
clients of that server key. Neither: plain sockets (security "none"). libzmq accepts *any*
CURVE key when no ZAP handler is bound, so a CURVE server socket is refused until
``Wire.authenticator`` is set (``zap.Authenticator.start`` sets it).

``Channel`` drives a plain socket from ``loop.add_reader(socket.FD)``. The FD is edge-triggered
and only says "events may have changed", so a channel drains with ``NOBLOCK`` until ``EVENTS``
has no ``POLLIN``, and after sends it looks again once, at the end of the tick (a send may
consume the FD's edge). Everything received in one drain is handed to ``on_message`` one frame
list at a time, then ``on_batch_end`` is called once: that is the
"tick" in which the host writes one transaction and the runner sends one update message.
``Channel(..., with_user=True)`` calls ``on_message(frames, user_id)`` instead, ``user_id``
being the ``User-Id`` of the message (the z85 public key the ZAP handler returned; "" on a
socket that is not a CURVE server); only that mode receives a frame with ``copy=False`` to
read it (about 2 us more per message on the busy 2-core machine, a Frame object and its
``get``: bench/curve_recv.py).
Sends never block: a full queue (``zmq.Again``) is kept in order and flushed when the socket is
writable again. A ``ROUTER_MANDATORY`` socket raises ``Unreachable`` for an unknown peer.
"""

from __future__ import annotations

import asyncio
import collections
from typing import TYPE_CHECKING, Any, Callable, Iterable

import zmq

from zriver.protocol import HARD_LIMIT_FACTOR

if TYPE_CHECKING:
    from zriver.keys import ClientKeys, ServerKeys

ZAP_DOMAIN = b"zriver"

_EVENTS, _POLLIN, _POLLOUT, _NOBLOCK = (int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.POLLOUT),
                                        int(zmq.NOBLOCK))  # plain ints: no enum cost per call
_MORE_NOBLOCK = int(zmq.SNDMORE) | _NOBLOCK
_RCVMORE = int(zmq.RCVMORE)
_raw_send = zmq.backend.Socket.send  # pyzmq's Python layer adds ~2 us of enum work per message
_raw_recv = zmq.backend.Socket.recv
_raw_get = zmq.backend.Socket.get


def send_frames(sock: zmq.Socket, frames: list[bytes]) -> None:
    """``send_multipart`` without pyzmq's Python layer (multipart sends are atomic: only the
    first frame can raise ``Again`` or ``EHOSTUNREACH``)."""
    last = len(frames) - 1
    for index, frame in enumerate(frames):
        _raw_send(sock, frame, _MORE_NOBLOCK if index < last else _NOBLOCK, len(frame) < 65536)


def recv_frames(sock: zmq.Socket) -> list[bytes]:
    """``recv_multipart(NOBLOCK)`` without pyzmq's Python layer."""
    frames = [_raw_recv(sock, _NOBLOCK, True)]
    while _raw_get(sock, _RCVMORE):
        frames.append(_raw_recv(sock, _NOBLOCK, True))
    return frames


def recv_frames_user(sock: zmq.Socket) -> tuple[list[bytes], str]:
    """``recv_frames`` and the message's ``User-Id``. Only a ``copy=False`` frame (a
    ``zmq.Frame``) exposes the connection's metadata, and libzmq puts the same metadata on
    every frame of a message (a ROUTER copies it onto the identity frame it prepends), so the
    first frame is read that way and the rest on the fast path (bench/curve_recv.py)."""
    frame = _raw_recv(sock, _NOBLOCK, False)
    frames = [frame.bytes]
    while _raw_get(sock, _RCVMORE):
        frames.append(_raw_recv(sock, _NOBLOCK, True))
    return frames, frame.get("User-Id")


class Unreachable(Exception):
    """The ROUTER has no connected peer with that identity."""


class Wire:
    """The process's ZeroMQ context and socket factory. ``close`` closes every socket (and
    stops the ZAP handler, when one is running on this context).

    ``server_keys``: the bound sockets are CURVE servers (the host); ``client_keys``: the
    connecting ones are CURVE clients (clients, runners); a process that is both (``zriver
    up``) gives both. Neither: plain sockets."""

    def __init__(self, max_message_bytes: int, server_keys: "ServerKeys | None" = None,
                 client_keys: "ClientKeys | None" = None) -> None:
        self.context = OwnedContext()
        self.max_message_bytes = max_message_bytes
        self.server_keys = server_keys
        self.client_keys = client_keys
        self.authenticator: Any = None
        """The ZAP handler on ``context`` (``zriver.host.zap.Authenticator`` sets itself
        here when it starts; ``close`` stops it)."""
        self._sockets: list[zmq.Socket] = []
        self.context.owned = self._sockets

    @property
    def secure(self) -> bool:
        """Whether this wire's sockets speak CURVE (as a server, a client or both)."""
        return self.server_keys is not None or self.client_keys is not None

    def _socket(self, kind: int) -> zmq.Socket:
        sock = self.context.socket(kind)
        sock.linger = 0
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes * HARD_LIMIT_FACTOR)
        self._sockets[:] = [s for s in self._sockets if not s.closed]  # (the context's list too)
        self._sockets.append(sock)
        return sock

    def _server(self, kind: int) -> zmq.Socket:
        """A socket that will be bound: a CURVE server when this wire has server keys."""
        keys = self.server_keys
        if keys is not None and self.authenticator is None:
            raise RuntimeError(
                "start the ZAP handler (zriver.host.zap) before binding CURVE sockets: "
                "without one libzmq lets every key in")
        sock = self._socket(kind)
        if keys is not None:
            sock.setsockopt(zmq.CURVE_SERVER, 1)
            sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret.encode("ascii"))
            sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
        return sock

    def _client(self, kind: int) -> zmq.Socket:
        """A socket that will connect: a CURVE client when this wire has client keys."""
        sock = self._socket(kind)
        keys = self.client_keys
        if keys is not None:
            sock.setsockopt(zmq.CURVE_SERVERKEY, keys.server.encode("ascii"))
            sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public.encode("ascii"))
            sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret.encode("ascii"))
        return sock

    def router(self, endpoint: str) -> tuple[zmq.Socket, str]:
        """A bound ROUTER (mandatory routing, identity handover); returns it and its
        endpoint. Handover lets a runner whose connection failed take its identity back at
        once (without it, a reconnection is refused while the host still holds the dead
        connection, and commands go into it). A runner's identity carries a 64-bit secret
        per life, never shown to other peers, and the host checks each message's key
        against it (``host/service.py``): another key cannot claim it."""
        sock = self._server(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        sock.bind(endpoint)
        return sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def dealer(self, endpoint: str, identity: bytes | None = None) -> zmq.Socket:
        sock = self._client(zmq.DEALER)
        if identity:
            sock.setsockopt(zmq.ROUTING_ID, identity)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.connect(endpoint)
        return sock

    def xsub(self, endpoint: str, topics: Iterable[bytes] = (b"hb.",)) -> tuple[zmq.Socket, str]:
        """Bound XSUB for what runners publish, subscribed to ``topics`` (heartbeats); the
        host subscribes ``log.<id>`` on it while a task is followed (``host/followers.py``)."""
        sock = self._server(zmq.XSUB)
        sock.bind(endpoint)
        for topic in topics:
            sock.send(b"\x01" + topic)
        return sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def xpub(self, endpoint: str) -> tuple[zmq.Socket, str]:
        sock = self._server(zmq.XPUB)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.bind(endpoint)
        return sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def pub(self, endpoint: str) -> zmq.Socket:
        sock = self._client(zmq.PUB)
        sock.setsockopt(zmq.SNDHWM, 10_000)
        sock.connect(endpoint)
        return sock

    def publisher(self, endpoint: str) -> zmq.Socket:
        """A connecting XPUB: a PUB that also reads its subscriber's (the host's XSUB)
        subscriptions, ``\\x01<prefix>`` / ``\\x00<prefix>`` (a runner tails only the logs
        the host subscribed to). Non-verbose: each prefix is told once until it is dropped."""
        sock = self._client(zmq.XPUB)
        sock.setsockopt(zmq.SNDHWM, 10_000)
        sock.connect(endpoint)
        return sock

    def sub(self, endpoint: str, topics: Iterable[str]) -> zmq.Socket:
        sock = self._client(zmq.SUB)
        for topic in topics:
            sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
        sock.connect(endpoint)
        return sock

    def monitor(self, sock: zmq.Socket, events: int) -> zmq.Socket:
        """A PAIR socket receiving ``sock``'s monitor ``events`` (closed by ``close``)."""
        mon = sock.get_monitor_socket(events)
        mon.linger = 0
        self._sockets.append(mon)
        return mon

    def close(self) -> None:
        for sock in self._sockets:
            if not sock.closed:
                sock.close(linger=0)
        self._sockets.clear()
        if self.authenticator is not None:
            self.authenticator.stop()
            self.authenticator = None
        self.context.term()


class OwnedContext(zmq.Context):
    """A ``zmq.Context`` that knows the sockets its ``Wire`` made (``owned``, strong
    references). A ``Wire`` dropped without ``close`` inside a reference cycle has its context
    collected with pyzmq's own list of the sockets (weak references) already cleared, so
    pyzmq's ``__del__`` closed nothing and its ``term`` waited for ever (the collector hung
    the process); this one closes them first."""

    owned: list | None = None  # (a class attribute: pyzmq takes unknown ones for options)

    def __del__(self) -> None:
        for sock in self.owned or ():
            if not sock.closed:
                sock.close(linger=0)
        super().__del__()


class Channel:
    """One socket driven by the loop; see the module docstring for the contract."""

    def __init__(
        self,
        sock: zmq.Socket,
        on_message: Callable[..., None],
        on_batch_end: Callable[[], None] | None = None,
        *,
        lossy: bool = False,
        with_user: bool = False,
    ) -> None:
        self.sock = sock
        self._recv: Callable[[zmq.Socket], list[bytes]] = recv_frames
        self._on_message = on_message
        if with_user:
            if sock.getsockopt(zmq.CURVE_SERVER):  # (frames, user) in, on_message(frames, user)
                self._recv = recv_frames_user  # type: ignore[assignment]
                self._on_message = lambda received: on_message(*received)
            else:  # no ZAP, no User-Id: the plain drain, with "" for every message
                self._on_message = lambda frames: on_message(frames, "")
        self._on_batch_end = on_batch_end
        self._lossy = lossy
        self._backlog: collections.deque[list[bytes]] = collections.deque()
        self._loop = asyncio.get_running_loop()
        self._fd = sock.getsockopt(zmq.FD)
        self._drain_scheduled = False
        self._retry: asyncio.TimerHandle | None = None
        self._loop.add_reader(self._fd, self._on_readable)
        self._schedule_drain()

    def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
        try:
            self._loop.remove_reader(self._fd)
        except (ValueError, OSError):
            pass

    def send(self, frames: list[bytes]) -> None:
        """Queue-free send when possible; keeps order; ``Unreachable`` for unknown peers."""
        if self._backlog:
            if not self._lossy:
                self._backlog.append(frames)
            return
        try:
            send_frames(self.sock, frames)
        except zmq.Again:
            if not self._lossy:
                self._backlog.append(frames)
                self._arm_retry()
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                raise Unreachable(frames[0]) from None
            raise
        self._schedule_drain()  # the send may have eaten the FD's edge: look once, after the tick

    def _schedule_drain(self) -> None:
        if not self._drain_scheduled:
            self._drain_scheduled = True
            self._loop.call_soon(self._on_readable)

    def _arm_retry(self) -> None:
        if self._retry is None:
            self._retry = self._loop.call_later(0.005, self._retry_backlog)

    def _retry_backlog(self) -> None:
        self._retry = None
        self._flush_backlog()

    def _flush_backlog(self) -> None:
        while self._backlog:
            frames = self._backlog[0]
            try:
                send_frames(self.sock, frames)
            except zmq.Again:
                self._arm_retry()
                return
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EHOSTUNREACH:
                    raise
            self._backlog.popleft()

    def drain(self) -> None:
        """Receive everything waiting now (as a readable FD would)."""
        self._on_readable()

    def _on_readable(self) -> None:
        self._drain_scheduled = False
        if self.sock.closed:
            return
        received = False
        while True:
            events = self.sock.getsockopt(_EVENTS)
            if self._backlog and events & _POLLOUT:
                self._flush_backlog()
            if not events & _POLLIN:
                break
            try:
                received_now = self._recv(self.sock)
            except zmq.Again:
                break
            received = True
            self._on_message(received_now)
            if self.sock.closed:
                return
        if received and self._on_batch_end is not None:
            self._on_batch_end()
