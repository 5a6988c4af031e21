"""A small synchronous client of the host: request/reply over DEALER, events over SUB.

``Client.call`` sends one envelope and waits for the reply with the same request id, ignoring
stale replies of earlier timed-out calls. Silence turns into ``Unavailable`` naming the address,
never a hang. ``resolve_endpoint`` finds the host: ``--host``/``$ZRIVER_HOST``, then ``host`` in
``$ZRIVER_HOME/client.toml``, then the endpoints file a host on this machine writes into
``$ZRIVER_HOME``, then the default port.

Sockets come from a ``Wire`` (one per client) and speak CURVE when the client has keys
(``zriver.keys.resolve_client_keys``): the key file from ``--key``/``$ZRIVER_KEY``/``key`` in
client.toml/``$ZRIVER_HOME/keys/client.key_secret``, the host key from
``--host-key``/``$ZRIVER_HOST_KEY``/``host_key`` in client.toml/``host_key`` in endpoints.json
(only when that file describes the host being called). A monitor on the DEALER turns a refused
handshake into an immediate ``Unavailable`` that says so, instead of a timeout.
"""

from __future__ import annotations

import itertools
import json
import os
import time
import uuid
from typing import Any, Iterable

import zmq
from zmq.utils.monitor import parse_monitor_message

from zriver import config as cfg
from zriver import sweep
from zriver.client import probe
from zriver.config import DEFAULT_ROUTER_PORT, ClientSettings, zriver_home
from zriver.errors import InvalidArgument, Unavailable, error_from_reply
from zriver.keys import ClientKeys, choose, client_secret_file, resolve_client_keys
from zriver.protocol import DEFAULT_MAX_MESSAGE_BYTES, decode, encode
from zriver.wire import Wire

DEFAULT_TIMEOUT = 10.0
SUBMIT_TRY = 2.0
"""Seconds one attempt of ``Client.submit`` waits before the request is sent again."""
SWEEP_SECONDS_PER_TASK = 100e-6
"""What ``Client.submit_sweep`` adds to its waits per task of the sweep (a host expands and
stores 50,000-100,000 tasks a second: a 1,000,000-task sweep may take 20 s on a busy host)."""


_HANDSHAKE_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                     | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


def _normalise(given: str) -> str:
    if "://" not in given:
        given = f"tcp://{given}" if ":" in given else f"tcp://{given}:{DEFAULT_ROUTER_PORT}"
    return given


def local_endpoints() -> dict[str, Any]:
    """What a host on this machine wrote to ``$ZRIVER_HOME/endpoints.json`` ({} if nothing)."""
    try:
        data = json.loads((zriver_home() / "endpoints.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load_client_settings() -> ClientSettings:
    """``$ZRIVER_HOME/client.toml``, or the defaults when there is none."""
    return cfg.load(None, ClientSettings, "client.toml")


def resolve_endpoint(flag: str | None = None, settings: ClientSettings | None = None) -> str:
    """The host's ROUTER address as ``tcp://HOST:PORT``."""
    given = given_endpoint(flag, settings)
    if given:
        return _normalise(given)
    router = local_endpoints().get("router")
    if isinstance(router, str) and router:
        return router
    return f"tcp://127.0.0.1:{DEFAULT_ROUTER_PORT}"


def given_endpoint(flag: str | None, settings: ClientSettings | None) -> str:
    """The address a person gave (``--host``, ``$ZRIVER_HOST``, client.toml), or ``""``."""
    return flag or os.environ.get("ZRIVER_HOST") or (settings.host if settings else "")


def resolve_keys(endpoint: str, key: str | None = None, host_key: str | None = None,
                 settings: ClientSettings | None = None) -> ClientKeys | None:
    """The client's CURVE material for ``endpoint`` (``None``: plain); see the module doc."""
    settings = settings or ClientSettings()
    known = local_endpoints()
    local = known.get("router") == endpoint
    fallback = known.get("host_key", "") if local else ""
    host_key = choose(host_key, "ZRIVER_HOST_KEY", settings.host_key)
    if local and known.get("security") == "none" and not host_key:
        return None  # the host on this machine runs with security = "none"
    return resolve_client_keys(
        choose(key, "ZRIVER_KEY", settings.key),
        host_key,
        default_key_file=client_secret_file(),
        fallback_host_key=fallback if isinstance(fallback, str) else "")


class Client:
    """One DEALER to the host; not thread-safe (one per thread).

    ``key`` (a secret key file) and ``host_key`` (z85) are what ``--key``/``--host-key``
    gave; ``settings`` is client.toml (read from ``$ZRIVER_HOME`` when not given)."""

    def __init__(self, endpoint: str | None = None, timeout: float = DEFAULT_TIMEOUT, *,
                 key: str | None = None, host_key: str | None = None,
                 settings: ClientSettings | None = None) -> None:
        settings = settings if settings is not None else load_client_settings()
        self.endpoint = resolve_endpoint(endpoint, settings)
        self._from_file = (not given_endpoint(endpoint, settings)
                           and local_endpoints().get("router") == self.endpoint)
        self._probed = False
        self.timeout = timeout
        try:
            self.keys = resolve_keys(self.endpoint, key, host_key, settings)
        except InvalidArgument:
            self.probe()  # no host there at all says more than a missing host key
            raise
        self.wire = Wire(DEFAULT_MAX_MESSAGE_BYTES, client_keys=self.keys)
        self.sock = self.wire.dealer(self.endpoint)
        self._monitor = self.wire.monitor(self.sock, _HANDSHAKE_EVENTS)
        self._poller = zmq.Poller()
        self._poller.register(self.sock, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        self._rids = itertools.count(1)
        self._hello: dict[str, Any] | None = None
        self.pushed: list | None = None
        """When a list, ``call`` keeps here the pushed messages (``rid`` 0: the log chunks
        of ``task.follow``) that arrive while it waits for its reply, instead of dropping
        them (``zriver.client.follow``)."""

    @property
    def secure(self) -> bool:
        return self.keys is not None

    def close(self) -> None:
        self.wire.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def call(self, op: str, body: dict[str, Any] | None = None,
             timeout: float | None = None) -> dict[str, Any]:
        """Send ``op`` and return the reply body; raise the reply's error class on failure.
        The first call probes the address first (``zriver.client.probe``): ``NoHost``
        within a second when no zriver host can be there."""
        if not self._probed:
            self.probe()
        rid = next(self._rids)
        self.sock.send(encode(op, rid, body or {}))
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            wait_ms = max(0, int((deadline - time.monotonic()) * 1000))
            ready = dict(self._poller.poll(wait_ms))
            if self._monitor in ready:
                self._check_handshakes()
            if self.sock not in ready:
                if time.monotonic() < deadline:
                    continue
                raise Unavailable(self._silence())
            env = decode(self.sock.recv(), DEFAULT_MAX_MESSAGE_BYTES * 4)
            if env.rid != rid:
                if env.rid == 0 and self.pushed is not None:
                    self.pushed.append(env)
                continue  # the late reply of an earlier, abandoned call
            if env.op == "error":
                raise error_from_reply(env.code, env.msg)
            return env.body

    def probe(self) -> None:
        """``NoHost`` (saying which) when the endpoints file this address came from is stale,
        nothing listens there, or what listens is not a zriver host; else mark the address
        probed (later calls skip it)."""
        if self._from_file:
            probe.check_endpoints_file(str(zriver_home() / "endpoints.json"), local_endpoints())
        probe.check_listener(self.endpoint)
        self._probed = True

    def _check_handshakes(self) -> None:
        """Read the DEALER's handshake events; the last one failing raises ``Unavailable``
        saying why (a refused key is not worth waiting out the timeout for)."""
        last = 0
        while self._monitor.poll(0):
            last = parse_monitor_message(self._monitor.recv_multipart())["event"]
        if last == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            raise Unavailable(
                f"not authorised: the host at {self.endpoint} refused this client's key "
                f"{self.keys.public if self.keys else ''} (unknown or revoked; an admin adds "
                f"it with `zriver keys add --role user NAME -- KEY`)")
        if last in (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
            if self.keys is None:  # a mechanism mismatch (or the host hung up on one)
                raise Unavailable(
                    f"the host at {self.endpoint} uses CURVE and this client has no keys: run "
                    f"`zriver keys new`, have an admin add the key, and set host_key (in "
                    f"{zriver_home() / 'client.toml'}, --host-key or $ZRIVER_HOST_KEY)")
            raise Unavailable(
                f"the CURVE handshake with {self.endpoint} failed: is host_key the host's key "
                f"(`zriver keys host` on the host), and does the host use security = \"curve\"?")

    def _silence(self) -> str:
        hint = ("is `zriver up` or `zriver host` running there, and is this address right?")
        if self.secure:
            return f"not authorised, or the host at {self.endpoint} does not answer: {hint}"
        return f"no answer from the zriver host at {self.endpoint}: {hint}"

    def submit(self, specs: list[dict[str, Any]], key: str | None = None,
               timeout: float | None = None) -> dict[str, Any]:
        """``task.submit`` exactly once: one idempotency ``key`` (a fresh uuid4 unless given)
        for every send, and the same request resent when an attempt gets no answer, until
        ``timeout`` (the client's) has passed in all. A submit the host stored but could not
        acknowledge (it crashed) is answered from the store by a resend; it is never stored
        twice. Returns ``{ids, batch_id}``."""
        return self._submit({"tasks": specs}, key, timeout, SUBMIT_TRY)

    def submit_sweep(self, spec: dict[str, Any], targets: list[str | None] | None = None,
                     key: str | None = None, timeout: float | None = None) -> dict[str, Any]:
        """``task.submit`` of a sweep, exactly once like ``submit``: ``spec``'s command keeps
        its ``span:`` words and the host expands it (one task per target and command,
        targets outermost; ``targets`` None: the spec's own). The spans are checked here
        first (a bad one raises ``InvalidArgument`` before anything is sent), and a big
        sweep gets ``SWEEP_SECONDS_PER_TASK`` more per task, per attempt and in all."""
        count = sweep.parse(spec["command"]).count * len(targets or [None])
        extra = count * SWEEP_SECONDS_PER_TASK
        total = (self.timeout if timeout is None else timeout) + extra
        body = {"sweep": {"spec": spec, "targets": targets}}
        return self._submit(body, key, total, SUBMIT_TRY + extra)

    def _submit(self, body: dict[str, Any], key: str | None, timeout: float | None,
                attempt: float) -> dict[str, Any]:
        body = {**body, "key": key or uuid.uuid4().hex}
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            left = deadline - time.monotonic()
            try:
                return self.call("task.submit", body, timeout=max(0.05, min(left, attempt)))
            except probe.NoHost:
                raise  # resending cannot help: no host can be there
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
        return self.wire.sub(endpoint, topics)

    def wait(self, ids: list[int], poll: float = 30.0) -> list[dict[str, Any]]:
        """Block until every task in ``ids`` is final; return their summaries."""
        while True:
            reply = self.call("task.wait", {"ids": ids, "timeout": poll}, timeout=poll + 10)
            if reply["done"]:
                return reply["tasks"]
