"""The asyncssh side of ``zriver ssh``, ``connect``, ``forward`` and ``ssh-config``.

Everything goes through the host's SSH relay (``zriver/host/relay.py``): its address is the
host this client is configured for (``--host``, ``$ZRIVER_HOST``, client.toml, the local
cluster) with the port ``cluster.hello`` announces under ``relay.port``, and its host key is
the one the same hello carries (``relay.host_key``): it is pinned, so no prompt ever asks to
trust a key, and a relay that shows another key is refused.

* ``relay_of(client)`` -> ``Relay`` (address, port, key); ``Unavailable`` when the host has none.
* ``client_keys(identity)``: the private keys to log in with: ``--identity FILE``, else
  ``~/.ssh/id_ed25519`` and ``~/.ssh/id_rsa`` (those that exist); ``InvalidArgument`` naming
  them and how to make one when there is none.
* ``connect_relay(relay, user, keys)``: an ``SSHClientConnection`` to the relay as ``user``
  (``zriver``: the jump host; a task reference: sessions into that task).
* ``connect_vps(relay_conn, task_id, host_key, keys)``: through the relay to the VPS's own
  sshd at ``vps-ID:22`` as ``root``, its host key pinned under the name ``vps-ID``.
* ``known_hosts_text(relay, vpses)``: OpenSSH known_hosts lines for the relay
  (``[HOST]:PORT``) and every VPS with a reported key (``vps-ID``).

Errors come back as ``ZriverError``s saying what to do: ``Unavailable`` (nothing answers, the
host has no relay), ``SshRefused`` (the relay or the VPS said no, with its reason).
"""

from __future__ import annotations

import asyncio
import getpass
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import asyncssh

from zriver.errors import InvalidArgument, Unavailable, ZriverError

DEFAULT_IDENTITIES = ("~/.ssh/id_ed25519", "~/.ssh/id_rsa")
JUMP_USER = "zriver"
VPS_USER = "root"
CONNECT_TIMEOUT = 15.0
CIPHERS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com"]
"""AES-GCM first: with AES-NI it costs a fraction of ChaCha20's CPU per MB (relay throughput)."""
WINDOW = 8 << 20
MAX_PACKET = 256 << 10
"""Bigger channel windows and packets than asyncssh's defaults (2 MiB, 32 KiB): fewer packets
and window updates per MB through the relay."""


class SshRefused(ZriverError):
    """The relay (or a VPS's sshd) refused: a login, a channel, a destination."""

    code = "refused"


@dataclass(frozen=True)
class Relay:
    """Where the host's SSH relay listens and the host key it must show."""

    address: str
    port: int
    host_key: str

    @property
    def known_name(self) -> str:
        """The relay as OpenSSH names it in known_hosts (``[HOST]:PORT``)."""
        return f"[{self.address}]:{self.port}"


def relay_address(endpoint: str) -> str:
    """``tcp://10.0.0.5:8620`` -> ``10.0.0.5`` (a wildcard bind address -> loopback)."""
    host = endpoint.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return "127.0.0.1" if host in ("*", "0.0.0.0", "") else host


def relay_of(client: Any) -> Relay:
    """The relay of the host ``client`` talks to, from its ``cluster.hello``."""
    info = client.hello().get("relay") or {}
    port, key = info.get("port"), info.get("host_key")
    if not isinstance(port, int) or port <= 0 or not key:
        raise Unavailable(f"the host at {client.endpoint} runs no SSH relay (relay_port = -1 "
                          f"in its host.toml, or a host older than the relay)")
    return Relay(relay_address(client.endpoint), port, key)


# ---- keys ----------------------------------------------------------------------------------
def client_keys(identity: str | None = None) -> list[asyncssh.SSHKey]:
    """The private keys to offer: ``identity``, else the default ones that exist."""
    if identity:
        path = Path(identity).expanduser()
        if not path.is_file():
            raise InvalidArgument(f"no such identity file: {identity}")
        return [_load_private(path)]
    found = [Path(name).expanduser() for name in DEFAULT_IDENTITIES]
    keys = [_load_private(path) for path in found if path.is_file()]
    if not keys:
        raise InvalidArgument(
            f"no SSH private key found ({', '.join(DEFAULT_IDENTITIES)}): make one with "
            f"`ssh-keygen -t ed25519`, register it with `zriver ssh-key add`, or give "
            f"--identity FILE")
    return keys


def _load_private(path: Path) -> asyncssh.SSHKey:
    """One private key file; asks for its passphrase on a terminal when it is encrypted."""
    try:
        return asyncssh.read_private_key(path)
    except asyncssh.KeyImportError as exc:
        if "assphrase" not in str(exc):
            raise InvalidArgument(f"{path} is not an SSH private key: {exc}") from None
    if not sys.stdin.isatty():
        raise InvalidArgument(f"{path} is encrypted and there is no terminal to ask for its "
                              f"passphrase: give --identity with an unencrypted key")
    try:
        return asyncssh.read_private_key(path, getpass.getpass(f"Passphrase for {path}: "))
    except asyncssh.KeyImportError as exc:
        raise InvalidArgument(f"cannot open {path}: {exc}") from None


def fingerprints(keys: Iterable[asyncssh.SSHKey]) -> str:
    return ", ".join(key.get_fingerprint("sha256") for key in keys)


# ---- pinned host keys -------------------------------------------------------------------
def vps_name(task_id: int) -> str:
    return f"vps-{task_id}"


def known_hosts_text(relay: Relay, vpses: Iterable[dict[str, Any]] = ()) -> str:
    """known_hosts lines: the relay under ``[HOST]:PORT``, each VPS with a key as ``vps-ID``."""
    lines = [f"{relay.known_name} {relay.host_key.strip()}"]
    lines += [f"{vps_name(v['id'])} {v['host_key'].strip()}" for v in vpses if v.get("host_key")]
    return "\n".join(lines) + "\n"


def _pinned(name: str, key: str) -> asyncssh.SSHKnownHosts:
    return asyncssh.import_known_hosts(f"{name} {key.strip()}\n")


# ---- connections -------------------------------------------------------------------------
async def connect_relay(relay: Relay, user: str,
                        keys: list[asyncssh.SSHKey]) -> asyncssh.SSHClientConnection:
    """Log in to the relay as ``user`` with ``keys`` (its host key pinned)."""
    where = f"the SSH relay at {relay.address}:{relay.port}"
    try:
        return await asyncssh.connect(
            relay.address, relay.port, username=user, client_keys=keys,
            known_hosts=_pinned(relay.known_name, relay.host_key), config=None,
            agent_path=None, password_auth=False, kbdint_auth=False,
            login_timeout=CONNECT_TIMEOUT, connect_timeout=CONNECT_TIMEOUT,
            encryption_algs=CIPHERS, window=WINDOW, max_pktsize=MAX_PACKET)
    except asyncssh.PermissionDenied:
        raise SshRefused(f"{where} refused your SSH key ({fingerprints(keys)}): register it with "
                         f"`zriver ssh-key add` (the .pub file), or give --identity") from None
    except asyncssh.HostKeyNotVerifiable:
        raise SshRefused(f"{where} showed a host key other than the one the host announced: "
                         f"not connecting (is something else listening on that port?)") from None
    except (OSError, asyncio.TimeoutError) as exc:
        raise Unavailable(f"cannot reach {where}: {exc or type(exc).__name__}") from None
    except asyncssh.Error as exc:
        raise SshRefused(f"{where}: {exc.reason}") from None


async def connect_vps(relay_conn: asyncssh.SSHClientConnection, task_id: int, host_key: str,
                      keys: list[asyncssh.SSHKey]) -> asyncssh.SSHClientConnection:
    """Through ``relay_conn`` (as ``zriver``) to the sshd of VPS ``task_id`` as root."""
    name = vps_name(task_id)
    try:
        return await asyncssh.connect(
            name, 22, tunnel=relay_conn, username=VPS_USER, client_keys=keys,
            known_hosts=_pinned(name, host_key), config=None, agent_path=None,
            password_auth=False, kbdint_auth=False, login_timeout=CONNECT_TIMEOUT)
    except asyncssh.ChannelOpenError as exc:
        raise SshRefused(f"the relay refused to reach VPS {task_id}: {exc.reason}") from None
    except asyncssh.PermissionDenied:
        raise SshRefused(f"VPS {task_id}'s sshd refused your key ({fingerprints(keys)}): its "
                         f"authorized_keys holds the keys given at `zriver vps create`") from None
    except asyncssh.HostKeyNotVerifiable:
        raise SshRefused(f"VPS {task_id} showed a host key other than the one its runner "
                         f"reported: not connecting") from None
    except (OSError, asyncio.TimeoutError) as exc:
        raise Unavailable(f"cannot reach VPS {task_id}'s sshd: {exc or type(exc).__name__}"
                          ) from None
    except asyncssh.Error as exc:
        raise SshRefused(f"VPS {task_id}: {exc.reason}") from None


def refused(exc: asyncssh.Error, what: str) -> SshRefused:
    """A channel the relay would not open, as the error the person reads."""
    return SshRefused(f"the relay refused {what}: {getattr(exc, 'reason', '') or exc}")
