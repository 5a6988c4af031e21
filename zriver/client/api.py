"""A small synchronous client of the host: request/reply over DEALER, events over SUB.

``Client.call`` sends one envelope and waits for the reply with the same request id, ignoring
stale replies of earlier timed-out calls. Silence turns into ``Unavailable`` naming the address,
never a hang. ``resolve_endpoint`` finds the host: ``--host``/``$ZRIVER_HOST``, then the
endpoints file a host on this machine writes into ``$ZRIVER_HOME``, then the default port.
"""

from __future__ import annotations

import itertools
import json
import os
import time
import uuid
from typing import Any, Iterable

import zmq

from zriver.config import DEFAULT_ROUTER_PORT, zriver_home
from zriver.errors import Unavailable, error_from_reply
from zriver.protocol import DEFAULT_MAX_MESSAGE_BYTES, decode, encode

DEFAULT_TIMEOUT = 10.0
SUBMIT_TRY = 2.0
"""Seconds one attempt of ``Client.submit`` waits before the request is sent again."""


def resolve_endpoint(flag: str | None = None) -> str:
    """The host's ROUTER address as ``tcp://HOST:PORT``."""
    given = flag or os.environ.get("ZRIVER_HOST")
    if given:
        if "://" not in given:
            given = f"tcp://{given}" if ":" in given else f"tcp://{given}:{DEFAULT_ROUTER_PORT}"
        return given
    try:
        endpoints = json.loads((zriver_home() / "endpoints.json").read_text())
        return endpoints["router"]
    except (OSError, ValueError, KeyError):
        return f"tcp://127.0.0.1:{DEFAULT_ROUTER_PORT}"


class Client:
    """One DEALER to the host; not thread-safe (one per thread)."""

    def __init__(self, endpoint: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.endpoint = resolve_endpoint(endpoint)
        self.timeout = timeout
        self.context = zmq.Context.instance()
        self.sock = self.context.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.connect(self.endpoint)
        self._rids = itertools.count(1)
        self._hello: dict[str, Any] | None = None

    def close(self) -> None:
        self.sock.close(linger=0)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def call(self, op: str, body: dict[str, Any] | None = None,
             timeout: float | None = None) -> dict[str, Any]:
        """Send ``op`` and return the reply body; raise the reply's error class on failure."""
        rid = next(self._rids)
        self.sock.send(encode(op, rid, body or {}))
        wait_ms = int((self.timeout if timeout is None else timeout) * 1000)
        while True:
            if not self.sock.poll(wait_ms, zmq.POLLIN):
                raise Unavailable(
                    f"no answer from the zriver host at {self.endpoint}: is `zriver up` or "
                    f"`zriver host` running there, and is this address right?"
                )
            env = decode(self.sock.recv(), DEFAULT_MAX_MESSAGE_BYTES * 4)
            if env.rid != rid:
                continue  # the late reply of an earlier, abandoned call
            if env.op == "error":
                raise error_from_reply(env.code, env.msg)
            return env.body

    def submit(self, specs: list[dict[str, Any]], key: str | None = None,
               timeout: float | None = None) -> dict[str, Any]:
        """``task.submit`` exactly once: one idempotency ``key`` (a fresh uuid4 unless given)
        for every send, and the same request resent when an attempt gets no answer, until
        ``timeout`` (the client's) has passed in all. A submit the host stored but could not
        acknowledge (it crashed) is answered from the store by a resend; it is never stored
        twice. Returns ``{ids, batch_id}``."""
        body = {"tasks": specs, "key": key or uuid.uuid4().hex}
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            left = deadline - time.monotonic()
            try:
                return self.call("task.submit", body, timeout=max(0.05, min(left, SUBMIT_TRY)))
            except Unavailable:
                if deadline - time.monotonic() <= 0:
                    raise

    def hello(self) -> dict[str, Any]:
        if self._hello is None:
            self._hello = self.call("cluster.hello")
        return self._hello

    def subscribe(self, topics: Iterable[str]) -> zmq.Socket:
        """A SUB socket on the host's event stream for ``topics`` (caller closes it)."""
        endpoint = self.hello()["endpoints"]["xpub"]
        host = self.endpoint.rsplit(":", 1)[0]
        endpoint = f"{host}:{endpoint.rsplit(':', 1)[1]}"  # the host's bind address may be *
        sub = self.context.socket(zmq.SUB)
        sub.linger = 0
        for topic in topics:
            sub.setsockopt(zmq.SUBSCRIBE, topic.encode())
        sub.connect(endpoint)
        return sub

    def wait(self, ids: list[int], poll: float = 30.0) -> list[dict[str, Any]]:
        """Block until every task in ``ids`` is final; return their summaries."""
        while True:
            reply = self.call("task.wait", {"ids": ids, "timeout": poll}, timeout=poll + 10)
            if reply["done"]:
                return reply["tasks"]
