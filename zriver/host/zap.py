"""The host's ZAP handler: which CURVE keys may connect, and the User-Id of their messages.

ZAP (ZeroMQ RFC 27) is asked once per connection, during the CURVE handshake, by every CURVE
server socket of the context whose ``zap_domain`` is set (``Wire`` sets ``"zriver"`` on the
host's ROUTER, XSUB and XPUB). This module answers it on the one context ``Wire`` owns:

* a CURVE key is allowed when ``allowed(z85)`` says so (``KeyTable.allowed``: known, not
  revoked); anything else (unknown keys, NULL or PLAIN peers, other domains) is refused, so
  the peer's handshake fails and nothing it sends reaches the host;
* an allowed connection's User-Id is its z85 public key (``curve_user_id``), which libzmq
  attaches to every message of that connection: ``Channel(..., with_user=True)`` hands it to
  the host, which looks the principal up per message (so a revoked key stops working at once
  on connections already open, although the connection itself stays up).

The policy is pyzmq's loop-free ``zmq.auth.Authenticator`` (the ZAP protocol, the CURVE
callback). pyzmq's own ``AsyncioAuthenticator`` polls its REP socket through a
``zmq.asyncio.Poller``, which wraps the plain socket in a new ``zmq.asyncio`` shadow socket
on every poll; the host uses a plain ``zmq.Context`` on uvloop and no ``zmq.asyncio``, so this
adapter drives the REP socket the way ``Channel`` drives the others: ``loop.add_reader`` on
its FD, then a ``NOBLOCK`` drain until ``EVENTS`` has no ``POLLIN`` (the FD is edge-triggered).

Start it before binding: libzmq lets *every* key in when no ZAP handler is bound, which is why
``Wire`` refuses a CURVE server socket until ``wire.authenticator`` is set (``start`` does).
"""

from __future__ import annotations

import asyncio
from typing import Callable

import structlog
import zmq
import zmq.auth
from zmq.utils import z85

from zriver.wire import ZAP_DOMAIN, Wire

log = structlog.get_logger("zriver")

_DENIALS_KEPT = 1024
"""Refused keys remembered, so that a peer retrying with one is logged once, not forever."""


class Authenticator(zmq.auth.Authenticator):
    """ZAP on ``wire.context``: CURVE keys ``allowed(z85)`` accepts, User-Id = the z85 key.

    ``lookups`` counts the ``allowed`` calls (one per connection handshake)."""

    def __init__(self, wire: Wire, allowed: Callable[[str], bool]) -> None:
        super().__init__(wire.context)
        self.wire = wire
        self._lookup = allowed
        self.lookups = 0
        self._address = ""
        self._denied: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd: int | None = None
        self.configure_curve_callback(ZAP_DOMAIN.decode(), self)

    # ---- the policy (pyzmq calls these) -------------------------------------------------
    def callback(self, domain: str, key: bytes) -> bool:
        """pyzmq's credentials-provider hook: whether the z85 ``key`` may connect."""
        self.lookups += 1
        text = key.decode("ascii", "replace")
        try:
            ok = bool(self._lookup(text))
        except Exception:  # a bug in the lookup refuses the peer, it never wedges ZAP
            log.exception("zap.lookup_failed", key=text)
            ok = False
        if not ok and text not in self._denied:
            if len(self._denied) >= _DENIALS_KEPT:
                self._denied.clear()
            self._denied.add(text)
            log.warning("zap.denied", key=text, address=self._address,
                        reason="unknown or revoked key")
        return ok

    def curve_user_id(self, client_public_key: bytes) -> str:
        """The User-Id of an allowed connection's messages: its z85 public key."""
        return z85.encode(client_public_key).decode("ascii")

    # ---- the loop adapter -----------------------------------------------------------------
    def start(self) -> None:
        """Bind ``inproc://zeromq.zap.01`` on the wire's context and serve it on the running
        loop; registers itself as ``wire.authenticator`` (``Wire.close`` stops it)."""
        super().start()
        self._loop = asyncio.get_running_loop()
        self._fd = self.zap_socket.getsockopt(zmq.FD)
        self._loop.add_reader(self._fd, self._wake.set)
        self._task = self._loop.create_task(self._serve())
        self._wake.set()  # requests may be queued already: the FD's edge may be gone
        self.wire.authenticator = self

    def stop(self) -> None:
        """Stop serving and close the ZAP socket (idempotent)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._loop is not None and self._fd is not None:
            try:
                self._loop.remove_reader(self._fd)
            except (ValueError, OSError, RuntimeError):
                pass
            self._fd = None
        if self.zap_socket is not None:
            self.zap_socket.close(linger=0)
        super().stop()
        if self.wire.authenticator is self:
            self.wire.authenticator = None

    async def _serve(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            sock = self.zap_socket
            while sock is not None and not sock.closed and sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                try:
                    request = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._address = request[3].decode("utf-8", "replace") if len(request) > 3 else ""
                try:
                    await self.handle_zap_message(request)  # replies before the next recv
                except Exception:  # a bug here must not leave the REP socket mid-request
                    log.exception("zap.failed", address=self._address)
                    if len(request) > 1:
                        self._send_zap_reply(request[1], b"500", b"internal error")
