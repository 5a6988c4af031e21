"""The runner's way to its host: sockets, or the in-process link of ``zriver up``.

Both kinds offer what the agent needs and nothing more:

* ``open(identity, user, on_envelope)``: connect as ``identity`` (``r:<node>:<instance>``);
  every decoded message from the host is given to ``on_envelope``;
* ``send(env)``: a request or reply (``zriver.protocol.Envelope``) to the host;
* ``publish(topic, body)``: a heartbeat or log chunk (lossy, like PUB/SUB);
* ``close()``.

``SocketUplink`` is a DEALER to the host's ROUTER and a PUB to its XSUB, on the runner's
``Wire`` (CURVE when it has client keys). ``zriver.inproc.InProcessLink`` is the other kind:
the host and the runner in one process, envelopes passed as objects.
"""

from __future__ import annotations

from typing import Callable

import structlog

from zriver.errors import ZriverError
from zriver.protocol import Envelope, decode, encode, pack
from zriver.wire import Channel, Wire, send_frames

log = structlog.get_logger("zriver.runner")


class SocketUplink:
    """The host's ROUTER and XSUB over ZeroMQ (a runner on another process or machine)."""

    def __init__(self, wire: Wire, host: str, router_port: int, xsub_port: int) -> None:
        self.wire = wire
        self.host = host
        self.router_port = router_port
        self.xsub_port = xsub_port
        self.channel: Channel | None = None
        self.pub = None
        self._on_envelope: Callable[[Envelope], None] = lambda env: None

    def open(self, identity: bytes, user: str, on_envelope: Callable[[Envelope], None]) -> None:
        """Connect (``user`` is implied by the wire's keys here)."""
        self._on_envelope = on_envelope
        dealer = self.wire.dealer(f"tcp://{self.host}:{self.router_port}", identity=identity)
        self.channel = Channel(dealer, self._on_frames)
        self.pub = self.wire.pub(f"tcp://{self.host}:{self.xsub_port}")

    def send(self, env: Envelope) -> None:
        self.channel.send([pack(env)])

    def publish(self, topic: str, body: dict) -> None:
        try:
            send_frames(self.pub, [topic.encode(), encode(topic.split(".", 1)[0], 0, body)])
        except Exception:  # PUB is lossy by design
            pass

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()

    def _on_frames(self, frames: list[bytes]) -> None:
        try:
            env = decode(frames[-1], self.wire.max_message_bytes)
        except ZriverError as exc:
            log.warning("runner.bad_message", error=str(exc))
            return
        self._on_envelope(env)
