"""The SSH relay: one SSH port on the host through which people reach their container tasks.

An asyncssh server (``Relay``, reachable as ``host.relay``) on
``{bind_address}:{relay_port}``, started and stopped with the host (``relay_port = -1``: off).
Every channel becomes a byte stream to the task's runner (``host.streams``, bridged by
``zriver.host.sshbridge``), so runners need no open port and may sit behind NAT. Bytes pass
untouched: the server has no encoding and no line editor.

Host key: ed25519, generated once at ``<data_dir>/relay/ssh_host_ed25519_key`` (0600, in a
0700 directory) and kept; its public half is in ``cluster.hello`` (``"relay": {"port",
"host_key"}``) and endpoints.json (``"relay_host_key"``) so clients pin it and never prompt.

Authentication: public keys only. A key is the principal it is registered to
(``host.ssh_keys``, ``zriver ssh-key add``), with that principal's role from the key table
(``host.keys.table``): a principal whose CURVE key is revoked, or a runner, is refused. With
``security = "none"`` every registered key is an admin (as every client is). The principal is
looked up again at each channel, so a revocation also stops new channels of open connections.

User names:

* ``zriver``: a jump host (``ssh -J zriver@HOST:2222 root@vps-42``): ``direct-tcpip`` only.
  A destination host is a task reference -> a TCP stream to that port in its container;
  ``udp-REF`` -> a UDP stream (datagrams framed with a 2-byte length on the channel).
* anything else is a task reference (``ssh 42@HOST -p 2222``): session channels run a shell
  or a command in the container (``docker exec`` on the runner, PTY, resize, signals, exit
  status); ``direct-tcpip`` too, where ``localhost`` (or ``udp-localhost``) means that task.

A task reference is ``vps-ID``, ``task-ID``, ``ID``, or the name of one of the principal's
live tasks (unique among them; an admin's name falls back to everyone's live tasks).

Who may reach a task: its owner, or an admin; it must be a container task (backend docker)
and running. Otherwise the channel is refused with the reason: ``direct-tcpip`` with
``OPEN_ADMINISTRATIVELY_PROHIBITED`` (``OPEN_CONNECT_FAILED`` when the runner cannot open
it), a session with the reason on stderr and exit status 1. One channel's failure never
touches another.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Any

import asyncssh
import structlog

from zriver.errors import Conflict, Forbidden, NotFound, Unavailable, ZriverError
from zriver.host.handlers import check_owner
from zriver.host.model import LiveTask
from zriver.host.sshbridge import SessionBridge, TcpBridge, Traffic, UdpBridge
from zriver.principal import ADMIN, PEOPLE, Principal

log = structlog.get_logger("zriver.relay")

JUMP_USER = "zriver"
"""The user name of the jump host (``direct-tcpip`` only)."""
KEY_FILE = "ssh_host_ed25519_key"
REFERENCE = re.compile(r"(?:vps-|task-)?([0-9]+)")
LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0", ""})
"""``direct-tcpip`` destinations that mean "the task of my user name"."""
UDP_PREFIX = "udp-"
FAST_CIPHERS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes256-ctr"]
"""AES-GCM first and no ChaCha20: with AES-NI it costs the relay a fraction of the CPU per MB,
and OpenSSH clients pick the first cipher of theirs the server offers."""
WINDOW = 8 << 20
MAX_PACKET = 256 << 10
CONTAINER_BACKEND = "docker"
STOP_WAIT = 5.0
"""Seconds ``stop`` waits for the SSH connections it closed to be gone."""


def ensure_host_key(data_dir: Path) -> asyncssh.SSHKey:
    """The relay's host key at ``<data_dir>/relay/ssh_host_ed25519_key``, made on first use
    (0600, directory 0700) and read back ever after."""
    folder = Path(data_dir) / "relay"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    path = folder / KEY_FILE
    if not path.exists():
        key = asyncssh.generate_private_key("ssh-ed25519")
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(key.export_private_key())
        tmp.replace(path)
    return asyncssh.read_private_key(str(path))


def public_line(key: asyncssh.SSHKey) -> str:
    """``ssh-ed25519 AAAA...`` (no comment): what clients pin."""
    return " ".join(key.export_public_key("openssh").decode().split()[:2])


class Relay:
    """The relay of one host (see the module docstring). ``start`` binds, ``stop`` closes
    the listener, every SSH connection and every bridged stream."""

    def __init__(self, host: Any) -> None:
        self.host = host
        self.key: asyncssh.SSHKey | None = None
        self.host_key = ""
        """The public host key, ``ssh-ed25519 AAAA...``."""
        self.port = 0
        self.connections: set["RelayConnection"] = set()
        self.traffic = Traffic()
        """Streams and bytes its bridges moved (``zriver.host.sshbridge.Traffic``)."""
        self._server: Any = None

    async def start(self, address: str, port: int) -> str:
        """Listen on ``address:port`` (0: any free port); returns ``ADDR:PORT``."""
        self.key = ensure_host_key(self.host.data_dir)
        self.host_key = public_line(self.key)
        listen = "" if address in ("*", "0.0.0.0") else address
        self._server = await asyncssh.create_server(
            lambda: RelayConnection(self), listen, port, server_host_keys=[self.key],
            encoding=None, line_editor=False, agent_forwarding=False, x11_forwarding=False,
            keepalive_interval=30, login_timeout=30,
            encryption_algs=FAST_CIPHERS, window=WINDOW, max_pktsize=MAX_PACKET)
        self.port = self._server.get_port()
        return f"{address}:{self.port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        connections, self.connections = list(self.connections), set()
        for connection in connections:
            connection.close()
        closing = [asyncio.ensure_future(c.conn.wait_closed()) for c in connections
                   if c.conn is not None]
        if closing:
            await asyncio.wait(closing, timeout=STOP_WAIT)

    @property
    def info(self) -> dict[str, Any]:
        """What ``cluster.hello`` says about the relay."""
        return {"port": self.port, "host_key": self.host_key}

    # ---- who -----------------------------------------------------------------------------
    def principal_for(self, fingerprint: str) -> Principal | None:
        """The principal an SSH key (its SHA256 fingerprint) acts as now; ``None`` when the
        key is not registered, or its principal is revoked, unknown or not a person."""
        name = self.host.ssh_keys.principal_of(fingerprint)
        if name is None:
            return None
        if not self.host.secure:
            return Principal(name, ADMIN)
        entry = self.host.keys.table.entry(name)
        if entry is None or not entry.live or entry.role not in PEOPLE:
            return None
        return Principal(entry.name, entry.role, entry.public_key)

    # ---- which task ----------------------------------------------------------------------
    def find_task(self, principal: Principal, reference: str) -> LiveTask:
        """The running container task ``reference`` names that ``principal`` may reach;
        else ``NotFound``, ``Forbidden`` or ``Conflict`` with the reason."""
        match = REFERENCE.fullmatch(reference)
        task = (self._by_id(principal, int(match[1])) if match
                else self._by_name(principal, reference))
        check_owner(principal, task.spec.owner, task.id, "reach")
        if task.spec.backend != CONTAINER_BACKEND:
            raise Conflict(f"task {task.id} is not a container task (backend "
                           f"{task.spec.backend}): the relay reaches container tasks only")
        if task.state != "running" or task.node is None:
            raise Conflict(f"task {task.id} is {task.state}, not running")
        return task

    def _by_id(self, principal: Principal, task_id: int) -> LiveTask:
        task = self.host.tasks.get(task_id)
        if task is not None:
            return task
        row = self.host.store.get_task(task_id)
        if row is None:
            raise NotFound(f"no task {task_id}")
        check_owner(principal, row["owner"], task_id, "reach")
        raise Conflict(f"task {task_id} has ended ({row['state']})")

    def _by_name(self, principal: Principal, name: str) -> LiveTask:
        live = [t for t in self.host.tasks.values() if t.spec.name == name]
        mine = [t for t in live if t.spec.owner == principal.name]
        found = mine or (live if principal.is_admin else [])
        if not found:
            raise NotFound(f"no live task of yours is named {name!r} (give its id: "
                           f"ssh ID@HOST, or vps-ID)")
        if len(found) > 1:
            ids = ", ".join(str(t.id) for t in sorted(found, key=lambda t: t.id))
            raise Conflict(f"{len(found)} live tasks are named {name!r} ({ids}): give the id")
        return found[0]

    async def open_stream(self, task: LiveTask, target: dict[str, Any]) -> Any:
        """A stream to ``target`` on ``task``'s runner; ``Unavailable`` with the reason when
        the runner cannot open it."""
        streams = getattr(self.host, "streams", None)
        if streams is None:
            raise Unavailable("this host has no byte streams to its runners")
        try:
            return await streams.open(task.node, target)
        except ZriverError as exc:
            raise Unavailable(str(exc)) from None


class RelayConnection(asyncssh.SSHServer):
    """One SSH connection: its login (user name, key, principal) and its channels."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.conn: Any = None
        self.username = ""
        self.fingerprint: str | None = None
        self._offered: str | None = None
        self.bridges: set = set()
        self.lost = False

    # ---- the connection -------------------------------------------------------------------
    def connection_made(self, conn: Any) -> None:
        self.conn = conn
        self.relay.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.relay.connections.discard(self)
        for bridge in list(self.bridges):
            bridge.close("the SSH connection was lost")

    def close(self) -> None:
        for bridge in list(self.bridges):
            bridge.close("the relay is stopping")
        if self.conn is not None:
            self.conn.close()

    # ---- authentication ------------------------------------------------------------------
    def begin_auth(self, username: str) -> bool:
        self.username = username
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        """Called for the client's probe and again for its signed request: remember the key;
        the login is decided once authentication completes (``auth_completed``)."""
        fingerprint = key.get_fingerprint("sha256")
        if self.relay.principal_for(fingerprint) is None:
            return False
        self._offered = fingerprint
        return True

    def auth_completed(self) -> None:
        """The last key validated is the one whose signature was verified."""
        self.fingerprint = self._offered
        principal = self.principal()
        log.info("relay.login", user=self.username, fingerprint=self.fingerprint,
                 principal=principal.name if principal else None,
                 peer=self.conn.get_extra_info("peername") if self.conn else None)

    def principal(self) -> Principal:
        """Who this connection acts as now; ``Forbidden`` once its key or principal is
        revoked or removed."""
        principal = (self.relay.principal_for(self.fingerprint)
                     if self.fingerprint is not None else None)
        if principal is None:
            raise Forbidden("this SSH key is no longer authorised on this host (removed, or "
                            "its principal's key was revoked)")
        return principal

    # ---- channels ------------------------------------------------------------------------
    def session_requested(self) -> Any:
        if self.username == JUMP_USER:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                f"user {JUMP_USER!r} is the jump host: it only forwards connections (ssh -J "
                f"{JUMP_USER}@HOST:PORT root@vps-ID); for a shell in task ID use ssh ID@HOST")
        return SessionBridge(self.relay, self.bridges, self._open_session)

    async def _open_session(self, bridge: SessionBridge) -> None:
        try:
            task = self.relay.find_task(self.principal(), self.username)
            stream = await self.relay.open_stream(task, bridge.target(task.id))
        except ZriverError as exc:
            log.info("relay.refused", user=self.username, channel="session", reason=str(exc))
            bridge.refuse(str(exc))
            return
        bridge.begin(task.id, stream)

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str,
                             orig_port: int) -> Any:
        return self._open_forward(dest_host, dest_port)

    async def _open_forward(self, dest_host: str, dest_port: int) -> Any:
        """A ``direct-tcpip`` channel to ``dest_host:dest_port`` (see the module docstring),
        or ``ChannelOpenError`` with the reason."""
        kind, reference = self._destination(dest_host)
        try:
            task = self.relay.find_task(self.principal(), reference)
        except ZriverError as exc:
            self._refused(dest_host, dest_port, exc)
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                                            str(exc)) from None
        try:
            stream = await self.relay.open_stream(task, {"kind": kind, "task": task.id,
                                                         "port": dest_port})
        except ZriverError as exc:
            self._refused(dest_host, dest_port, exc)
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, str(exc)) from None
        if self.lost:  # the client went while the stream was opening
            stream.close("the SSH connection was lost")
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "connection lost")
        bridge = (UdpBridge if kind == "udp" else TcpBridge)(self.relay, self.bridges)
        bridge.begin(task.id, stream)
        return bridge

    def _destination(self, dest_host: str) -> tuple[str, str]:
        """``(tcp|udp, task reference)`` of a ``direct-tcpip`` destination host."""
        kind, reference = "tcp", dest_host
        if dest_host.startswith(UDP_PREFIX):
            kind, reference = "udp", dest_host[len(UDP_PREFIX):]
        if reference in LOCAL_NAMES and self.username != JUMP_USER:
            reference = self.username
        return kind, reference

    def _refused(self, dest_host: str, dest_port: int, exc: ZriverError) -> None:
        log.info("relay.refused", user=self.username, channel="direct-tcpip",
                 destination=f"{dest_host}:{dest_port}", reason=str(exc))
