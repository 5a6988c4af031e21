"""The runner's way to its host: sockets, or the in-process link of ``zriver up``.

Both kinds offer what the agent needs and nothing more:

* ``open(identity, user, on_envelope)``: connect as ``identity`` (``r:<node>:<instance>``);
  every decoded message from the host is given to ``on_envelope``;
* ``send(env)``: a request or reply (``zriver.protocol.Envelope``) to the host;
* ``publish(topic, body)``: a heartbeat or log chunk (lossy, like PUB/SUB);
* ``on_subscription(message)`` (set by the agent before ``open``): what the host subscribed
  to, ``\x01<prefix>`` / ``\x00<prefix>``: which task logs are followed
  (``zriver.runner.logtail``);
* ``renew_publisher()``: the host may have restarted: have its subscriptions told afresh;
* ``close()``.

``SocketUplink`` is a DEALER to the host's ROUTER and an XPUB (a PUB that reads its
subscriptions) to its XSUB, on the runner's ``Wire`` (CURVE when it has client keys). A
connecting XPUB keeps what was subscribed across reconnections, so ``renew_publisher`` makes a
new one: only a new connection hears a restarted host's subscriptions and none of the old
host's. ``zriver.inproc.InProcessLink`` is the other kind:
the host and the runner in one process, envelopes passed as objects.
"""

from __future__ import annotations

from typing import Callable

import structlog

from zriver.errors import ZriverError
from zriver.protocol import Envelope, decode, encode, pack
from zriver.wire import Channel, Wire

log = structlog.get_logger("zriver.runner")


class SocketUplink:
    """The host's ROUTER and XSUB over ZeroMQ (a runner on another process or machine)."""

    def __init__(self, wire: Wire, host: str, router_port: int, xsub_port: int) -> None:
        self.wire = wire
        self.host = host
        self.router_port = router_port
        self.xsub_port = xsub_port
        self.channel: Channel | None = None
        self.pub: Channel | None = None
        self._on_envelope: Callable[[Envelope], None] = lambda env: None
        self.on_subscription: Callable[[bytes], None] = lambda message: None

    def open(self, identity: bytes, user: str, on_envelope: Callable[[Envelope], None],
             on_turn_end: Callable[[], None] | None = None) -> None:
        """Connect (``user`` is implied by the wire's keys here)."""
        self._on_envelope = on_envelope
        dealer = self.wire.dealer(f"tcp://{self.host}:{self.router_port}", identity=identity)
        self.channel = Channel(dealer, self._on_frames)
        self._open_publisher()

    def _open_publisher(self) -> None:
        sock = self.wire.publisher(f"tcp://{self.host}:{self.xsub_port}")
        self.pub = Channel(sock, lambda frames: self.on_subscription(frames[0]), lossy=True)

    def renew_publisher(self) -> None:
        if self.pub is not None:
            self.pub.close()
            self.pub.sock.close(linger=0)
        self._open_publisher()

    def send(self, env: Envelope) -> None:
        self.channel.send([pack(env)])

    def publish(self, topic: str, body: dict) -> None:
        try:  # (through the channel: a send may eat the FD's edge of a subscription)
            self.pub.send([topic.encode(), encode(topic.split(".", 1)[0], 0, body)])
        except Exception:  # PUB is lossy by design
            pass

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()
        if self.pub is not None:
            self.pub.close()

    def _on_frames(self, frames: list[bytes]) -> None:
        try:
            env = decode(frames[-1], self.wire.max_message_bytes)
        except ZriverError as exc:
            log.warning("runner.bad_message", error=str(exc))
            return
        self._on_envelope(env)
