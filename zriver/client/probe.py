"""Knowing fast that there is no zriver host at an address, and why (before the first call).

A client that only sent requests would wait its whole timeout (10 s) for every kind of
failure and then say "no answer". ``check`` tells three causes apart in well under a second:

* the endpoints file is stale: ``$ZRIVER_HOME/endpoints.json`` (where the address came from)
  names a host process that is gone (``os.kill(pid, 0)``), so nothing it says is true;
* nothing listens there: a plain TCP connect to the router port is refused;
* what listens is not a zriver host: it does not answer the ZeroMQ (ZMTP 3) greeting, whose
  first ten bytes every ZeroMQ peer sends at once, within ``GREETING_TIMEOUT``.

Each raises ``NoHost`` (an ``Unavailable``) with what to do. A connect that neither succeeds
nor is refused within ``CONNECT_TIMEOUT`` (a firewall dropping packets, a slow link) is left
to the normal call and its timeout: silence is not proof. The probe's own connection is closed
at once; the host sees a peer that went away during its handshake.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from urllib.parse import urlsplit

from zriver.errors import Unavailable

CONNECT_TIMEOUT = 0.3
"""Seconds the TCP connect may take before the probe gives up (and lets the call decide)."""
GREETING_TIMEOUT = 0.6
"""Seconds a listener has to send the ZMTP signature before it is called "not a zriver host"."""
SIGNATURE = b"\xff" + b"\x00" * 8 + b"\x7f"
"""The ZMTP 3 signature: 0xFF, an 8-byte length, 0x7F (the peer's first ten bytes)."""
START = "start one with `zriver up -d` (this machine) or `zriver host`"


class NoHost(Unavailable):
    """No zriver host can be at this address (retrying the same request will not help)."""


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (one of another account counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_endpoints_file(path: str, data: dict) -> None:
    """``NoHost`` when the endpoints file ``data`` (read from ``path``) names a dead host."""
    pid = data.get("pid")
    if isinstance(pid, int) and pid > 0 and not process_alive(pid):
        raise NoHost(
            f"stale endpoints file {path}: the host that wrote it (pid {pid}, "
            f"{data.get('router', '?')}) is no longer running (killed, or its machine "
            f"restarted); {START}, or delete the file")


def check_listener(endpoint: str) -> None:
    """``NoHost`` when nothing listens at ``endpoint`` (``tcp://HOST:PORT``) or what listens
    does not speak ZeroMQ; returns when it greets like a ZeroMQ peer, and when the connect
    is merely slow (undecided). Other transports are not probed."""
    parts = urlsplit(endpoint)
    if parts.scheme != "tcp" or not parts.hostname or parts.port is None:
        return
    try:
        sock = socket.create_connection((parts.hostname, parts.port), CONNECT_TIMEOUT)
    except ConnectionRefusedError:
        raise NoHost(f"nothing listens at {endpoint} (connection refused): is the host "
                     f"running, and is this address right (--host, $ZRIVER_HOST, "
                     f"client.toml)? {START[0].upper()}{START[1:]}") from None
    except socket.gaierror as exc:
        raise NoHost(f"cannot resolve the host name in {endpoint}: {exc.strerror}; check "
                     f"--host, $ZRIVER_HOST or client.toml") from None
    except (TimeoutError, socket.timeout):
        return
    except OSError as exc:
        if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            raise NoHost(f"cannot reach {endpoint}: {exc.strerror}; check the address and "
                         f"the network") from None
        return
    with sock:
        greeting = _greeting(sock)
    if len(greeting) < len(SIGNATURE) or greeting[0] != 0xFF or greeting[9] != 0x7F:
        seen = (f"it sent {greeting[:40]!r}" if greeting else
                f"it sent nothing within {GREETING_TIMEOUT:g} s")
        raise NoHost(f"what listens at {endpoint} is not a zriver host: it does not speak "
                     f"ZeroMQ ({seen}); is the port right? A host's router port is "
                     f"router_port in its host.toml (8620 by default)")


def _greeting(sock: socket.socket) -> bytes:
    """Send our signature and read the listener's first ten bytes (fewer when it closes or
    stays silent until ``GREETING_TIMEOUT``)."""
    deadline = time.monotonic() + GREETING_TIMEOUT
    data = b""
    try:
        sock.sendall(SIGNATURE)
        while len(data) < len(SIGNATURE):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            chunk = sock.recv(len(SIGNATURE) - len(data))
            if not chunk:
                break
            data += chunk
    except (TimeoutError, socket.timeout, OSError):
        pass
    return data
