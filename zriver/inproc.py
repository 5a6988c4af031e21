"""The in-process link of ``zriver up``: a host and its runner on one loop, without sockets.

Split, a runner reaches its host over a DEALER to the host's ROUTER (requests, replies, the
host's commands) and a PUB to its XSUB (heartbeats, log chunks), each message encoded, CURVE-
encrypted and passed through two libzmq I/O threads. When both run in one process on one
loop, ``InProcessLink`` replaces those two sockets: what one side sends is queued as the
``Envelope`` object itself (never encoded) and handed to the other side on the next loop
turn, everything queued at once, as a drained socket would be:

* runner -> host: ``send(env)`` and ``publish(topic, body)``; the host end runs
  ``on_request(identity, env, user)`` for each request or reply and
  ``on_publication(frames, user)`` for each publication, then ``on_turn_end()`` once (the
  host's ``flush``: one transaction per turn, nothing acknowledged before its commit);
* host -> runner: ``deliver(env)``; the runner end runs ``on_envelope(env)`` for each;
  ``subscription(message)``: what the host's XSUB subscribes to (``\x01log.<id>``: a
  followed task), given to the runner's ``on_subscription`` as its XPUB would be, in order
  with the envelopes (``renew_publisher`` has the host tell them all again); after each
  batch the runner end runs ``on_turn_end()`` (the runner sends what the batch asked of its
  keeper). The host hands its commands over at once, right after its commit
  (``hand_over``), before its task events and replies to clients leave: a lone task's spawn
  request reaches the keeper without waiting for them.

Everything else is the host's and the runner's ordinary code: the host makes the runner's
principal from ``user`` (the runner's CURVE public key, or "" with ``security = "none"``)
and its identity exactly as for a ROUTER message, so the same op table, role checks,
per-tick transaction and liveness (``seen``/``sent``) apply; the runner renews its lease from
the replies as over the socket. Publications are encoded once (the host forwards them to
subscribers as frames). Byte streams (shells, port forwards) stay on their own sockets.

Ownership: an envelope and its body belong to the receiver once sent. Neither side changes
what it sent, and a receiver that keeps something it was given keeps it unchanged (the
runner's update dicts sit in its outbox until acknowledged; a start's ``spec`` is the host's
own wire form of the task).

The link is there while the runner is: ``open`` attaches the runner (the host then routes
that identity here), ``close`` detaches it (messages queued for the host are handed over
first; the host's later sends to that identity find no peer, as on a ROUTER).
"""

from __future__ import annotations

import asyncio
from typing import Callable

import structlog

from zriver.protocol import Envelope, encode

log = structlog.get_logger("zriver.runner")


class InProcessLink:
    """Host and runner ends of one in-process link; see the module docstring."""

    def __init__(self, on_request: Callable[[bytes, Envelope, str], None],
                 on_publication: Callable[[list[bytes], str], None],
                 on_turn_end: Callable[[], None],
                 attach: Callable[[bytes, "InProcessLink | None"], None]) -> None:
        """The host's callbacks; ``attach(identity, link)`` (``None``: detach) tells the
        host where that runner identity is reached."""
        self._on_request = on_request
        self._on_publication = on_publication
        self._on_turn_end = on_turn_end
        self._attach = attach
        self.identity = b""
        self.user = ""
        self._on_envelope: Callable[[Envelope], None] | None = None
        self.on_subscription: Callable[[bytes], None] = lambda message: None
        """The runner's: set before ``open``."""
        self._to_host: list[Envelope | list[bytes]] = []
        self._to_runner: list[Envelope | bytes] = []  # envelopes and subscriptions, in order
        self._runner_turn_end: Callable[[], None] = lambda: None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.sent = self.delivered = 0
        """Envelopes runner -> host and host -> runner so far (for tests and benchmarks)."""

    # ---- the runner's end --------------------------------------------------------------
    def open(self, identity: bytes, user: str, on_envelope: Callable[[Envelope], None],
             on_turn_end: Callable[[], None] | None = None) -> None:
        """Attach the runner: ``identity`` is its ROUTER identity (``r:<node>:<instance>``),
        ``user`` its CURVE public key ("" without authentication); ``on_turn_end`` runs
        after each batch handed to it."""
        self.identity, self.user, self._on_envelope = identity, user, on_envelope
        if on_turn_end is not None:
            self._runner_turn_end = on_turn_end
        self._loop = asyncio.get_running_loop()
        self._attach(identity, self)

    @property
    def is_open(self) -> bool:
        return self._on_envelope is not None

    def send(self, env: Envelope) -> None:
        """A request or reply to the host (handled on the next loop turn)."""
        if self._on_envelope is None:
            return
        self.sent += 1
        if not self._to_host:
            self._loop.call_soon(self._hand_to_host)
        self._to_host.append(env)

    def publish(self, topic: str, body: dict) -> None:
        """A heartbeat (``hb.<node>``) or log chunk (``log.<task>``) for the host."""
        if self._on_envelope is None:
            return
        if not self._to_host:
            self._loop.call_soon(self._hand_to_host)
        self._to_host.append([topic.encode(), encode(topic.split(".", 1)[0], 0, body)])

    def renew_publisher(self) -> None:
        """Have the host tell its subscriptions again (the runner forgot them)."""
        if self._on_envelope is not None:
            self._attach(self.identity, self)

    def close(self) -> None:
        """Detach the runner (what it sent is handed to the host first)."""
        if self._on_envelope is None:
            return
        self._hand_to_host()
        self._on_envelope = None
        self._to_runner.clear()
        self._attach(self.identity, None)

    # ---- the host's end ----------------------------------------------------------------
    def deliver(self, env: Envelope) -> None:
        """A command or reply for the runner (handled on the next loop turn)."""
        if self._on_envelope is None:
            return
        self.delivered += 1
        if not self._to_runner:
            self._loop.call_soon(self._hand_to_runner)
        self._to_runner.append(env)

    def subscription(self, message: bytes) -> None:
        """An (un)subscription of the host's, for the runner (on the next loop turn, in
        order with what else the host sends)."""
        if self._on_envelope is not None:
            if not self._to_runner:
                self._loop.call_soon(self._hand_to_runner)
            self._to_runner.append(message)

    def hand_over(self) -> None:
        """Hand the runner what is queued for it now instead of on the next loop turn (the
        host calls this right after its commit, once its commands are queued)."""
        self._hand_to_runner()

    def drain(self) -> None:
        """Hand over at once what the runner has sent (the host's stall check reads what
        waited before it judges liveness, as it drains its sockets)."""
        self._hand_to_host()

    # ---- the turns -----------------------------------------------------------------------
    def _hand_to_host(self) -> None:
        queued, self._to_host = self._to_host, []
        if not queued:
            return
        identity, user = self.identity, self.user
        for item in queued:
            if type(item) is list:
                self._on_publication(item, user)
            else:
                self._on_request(identity, item, user)
        self._on_turn_end()

    def _hand_to_runner(self) -> None:
        queued, self._to_runner = self._to_runner, []
        on_envelope = self._on_envelope
        if on_envelope is None or not queued:
            return
        for item in queued:
            try:  # (maybe inside the host's flush: a runner's bug must not cut its tick)
                if type(item) is bytes:
                    self.on_subscription(item)
                else:
                    on_envelope(item)
            except Exception:
                log.exception("runner.link_handler_failed")
        try:
            self._runner_turn_end()
        except Exception:
            log.exception("runner.link_handler_failed")
