"""Typed settings for each role, parsed once at the CLI edge and passed down whole.

A config file is TOML with the role's keys at the top level (``zriver init config`` writes a
commented one). Unknown keys and wrong types are refused with the file and key named, so a typo
never silently falls back to a default. ``ZRIVER_HOME`` moves the data dir and the default
config files (``host.toml``, ``runner.toml``) of every role.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from zriver.errors import InvalidArgument
from zriver.protocol import DEFAULT_MAX_MESSAGE_BYTES
from zriver.sizes import parse_duration, parse_size

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

DEFAULT_ROUTER_PORT = 8620
DEFAULT_XSUB_PORT = 8621
DEFAULT_XPUB_PORT = 8622
DEFAULT_STREAM_PORT = 8623
DEFAULT_RELAY_PORT = 2222
DEFAULT_WEB_PORT = 8624
SECURITY_MODES = ("curve", "none")
PLACEMENTS = ("pack", "spread")
DEFAULT_RETENTION = "180d"
RETENTION_RANGE = (3600.0, 100 * 365 * 86400.0)
"""The shortest and longest retention accepted (1 hour, 100 years), in seconds."""


def zriver_home() -> Path:
    """The data and config directory: ``$ZRIVER_HOME`` or ``~/.zriver``."""
    return Path(os.environ.get("ZRIVER_HOME") or Path.home() / ".zriver").expanduser()


@dataclass(slots=True)
class HostSettings:
    """What ``zriver host`` needs. Ports of 0 bind ephemeral ports (tests)."""

    data_dir: str = ""
    """Where the host keeps its database and the endpoints file clients read; empty:
    ``$ZRIVER_HOME`` (else ``~/.zriver``)."""
    bind_address: str = "127.0.0.1"
    """The address every port binds: ``127.0.0.1`` keeps the cluster on this machine; this
    machine's LAN address (or ``0.0.0.0``) lets runners on other machines reach it."""
    router_port: int = DEFAULT_ROUTER_PORT
    """Requests, replies and host-to-runner commands (a ZeroMQ ROUTER)."""
    xsub_port: int = DEFAULT_XSUB_PORT
    """Runners publish heartbeats and log chunks here."""
    xpub_port: int = DEFAULT_XPUB_PORT
    """Clients subscribe to events and live logs here."""
    stream_port: int = DEFAULT_STREAM_PORT
    """Byte streams to runners (shells, forwards): runners dial it, the host opens streams."""
    relay_port: int = DEFAULT_RELAY_PORT
    """The SSH relay (jump host, ``zriver ssh/connect/forward``); -1 turns it off."""
    web_port: int = DEFAULT_WEB_PORT
    """The dashboard and the HTTP API (always behind a login); -1 turns it off."""
    heartbeat_interval: float = 2.0
    """Seconds between a runner's heartbeats (runners learn it when they register)."""
    heartbeat_misses: int = 3
    """A node silent for ``heartbeat_interval`` x ``heartbeat_misses`` (its lease) is
    ``unreachable``: its tasks wait for it, its unstarted work goes back to the queue."""
    shared_dir: str = ""
    """A directory every node mounts at the same path (NFS, ...): task logs are written there
    when set, and committed env versions are archived under ``<shared_dir>/envs`` (else
    ``<data_dir>/envs``)."""
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    """Bytes: a larger message gets a ``too_large`` error."""
    default_container: str = ""
    """The Docker environment a task runs in when it names none (``zriver env list``); empty:
    native."""
    env_keep_versions: int = 5
    """Committed versions kept per env; older ones are pruned unless a live task needs them."""
    env_image_prefix: str = "zriver-env"
    """Env images are tagged ``<prefix>/<env>:<version>`` in the host's Docker."""
    docker_host: str = ""
    """The host's Docker daemon for envs (``unix:///...``); empty: ``$DOCKER_HOST`` or default."""
    placement: str = "spread"
    """Where tasks go: ``spread`` (the node with the most free cores) or ``pack`` (fill a node
    first)."""
    gpu_placement: str = "pack"
    """The same for GPU tasks (``pack`` keeps whole nodes free for large GPU jobs)."""
    prefetch: bool = True
    """Chained starts: the next task of the same shape waits on the runner behind a running
    one and starts the moment it ends, with no round trip to the host."""
    unreachable_grace: float = 600.0
    """Seconds a silent node's tasks stay ``unreachable`` before they are ``lost`` (and
    retried); its runner ends them by itself before that (self-fencing). At least twice
    ``heartbeat_interval`` x ``heartbeat_misses``."""
    security: str = "curve"
    """``curve``: every socket is CURVE-encrypted and only known keys connect (``zriver
    keys``); ``none``: no encryption, no authentication (a trusted network only)."""
    retention: str = DEFAULT_RETENTION
    """How long finished tasks and their events are kept (``180d``, ``12h``, ...; at least 1h,
    at most 36500d; ``0`` or ``forever``: kept for ever). Older ones are pruned in the
    background; ``zriver usage`` keeps their sums (``zriver.host.retention``)."""

    def check(self) -> None:
        """Refuse values out of range, naming the key (``from_mapping`` adds the file)."""
        check_ranges(self, HOST_RANGES)
        retention_seconds(self.retention)
        check_choices(self, HOST_CHOICES)
        lease = self.heartbeat_interval * self.heartbeat_misses
        if self.unreachable_grace < 2 * lease:
            raise InvalidArgument(
                f"unreachable_grace ({self.unreachable_grace:g} s) must be at least twice "
                f"heartbeat_interval x heartbeat_misses ({lease:g} s): a cut-off runner "
                f"needs that long to end its tasks before the host gives them up")

    @property
    def retention_seconds(self) -> float | None:
        """``retention`` in seconds; ``None`` when finished tasks are kept for ever."""
        return retention_seconds(self.retention)

    def resolved(self) -> "HostSettings":
        self.check()
        return replace(self, data_dir=self.data_dir or str(zriver_home()))


@dataclass(slots=True)
class RunnerSettings:
    """What ``zriver runner`` needs. ``cores``/``memory`` of 0 mean "detect"."""

    host: str = "127.0.0.1"
    """The host's name or IP address (``zriver runner --connect`` overrides it)."""
    router_port: int = DEFAULT_ROUTER_PORT
    """The host's ``router_port``."""
    xsub_port: int = DEFAULT_XSUB_PORT
    """The host's ``xsub_port``."""
    name: str = ""
    """This node's name in the cluster (``--name`` overrides it); empty: the hostname."""
    data_dir: str = ""
    """Local data (task logs, the update outbox); empty: ``$ZRIVER_HOME/runner``."""
    shared_dir: str = ""
    """The same shared directory as the host's, when there is one."""
    labels: dict[str, str] = field(default_factory=dict)
    """Free-form labels shown in ``zriver nodes`` (``{ rack = "a" }``)."""
    cores: int = 0
    """Cores to offer; 0: every core this process may use."""
    memory: str = ""
    """Memory to offer, a size (``512M``, ``8G``); empty: all of it."""
    numa_zones: str = ""
    """NUMA zones as core lists (``0-3;4-7`` declares two); empty: detected."""
    gpus: int = -1
    """-1: detect GPUs (NVML); a number declares that many GPUs instead (reported as
    ``declared``, given to tasks through ``CUDA_VISIBLE_DEVICES``; for tests and dev machines)."""
    kill_grace: float = 10.0
    """Seconds between SIGTERM and SIGKILL when a task is killed."""
    log_poll_interval: float = 0.005
    """Seconds: how often a followed task's log files are read where inotify cannot watch them (no
    inotify, or the file does not exist yet); watched files are read when written to."""
    request_timeout: float = 5.0
    """Seconds the runner waits for the host's reply to a request (a batch of task updates is
    sent again after it; the host applies resends once)."""
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    """Bytes: the largest message the runner accepts."""
    docker_host: str = ""
    """This node's Docker daemon (``unix:///...``); empty: ``$DOCKER_HOST`` or the default."""
    image_prefix: str = "zriver-env"
    """Env images are loaded here as ``<prefix>/<env>:<version>``."""
    env_keep_versions: int = 3
    """Local versions kept per env (unused older ones are removed after a load)."""
    allow_privileged: bool = False
    """Let tasks ask for ``--privileged`` containers."""
    additional_mounts: list[str] = field(default_factory=list)
    """``HOST:CONTAINER[:ro]`` bind mounts added to every container task."""
    local_temp_dir: str = ""
    """Mounted at ``/local_temp`` in every container; default ``<data_dir>/local_temp``."""
    docker_probe_interval: float = 5.0
    """Seconds between checks that the Docker daemon answers (reported in heartbeats)."""
    key: str = ""
    """This node's secret key file; default ``$ZRIVER_HOME/keys/runner.key_secret``."""
    host_key: str = ""
    """The host's z85 public key (``zriver keys host`` on the host prints it)."""
    task_user: str = "nobody"
    """The Unix account of native tasks that name none (``--user``) and whose owner has no
    non-root account of that name on this node. Only a runner running as root switches."""
    allowed_mounts: list[str] = field(default_factory=list)
    """Directories users may bind-mount from (and below), e.g. ``/data``; the host enforces it
    at submit."""

    def check(self) -> None:
        """Refuse values out of range, naming the key (``from_mapping`` adds the file)."""
        check_ranges(self, RUNNER_RANGES)
        if self.memory:
            try:
                parse_size(self.memory)
            except InvalidArgument as exc:
                raise InvalidArgument(f"memory: {exc}") from None

    def resolved(self) -> "RunnerSettings":
        self.check()
        return replace(
            self,
            name=self.name or socket.gethostname(),
            data_dir=self.data_dir or str(zriver_home() / "runner"),
        )


@dataclass(slots=True)
class ClientSettings:
    """``$ZRIVER_HOME/client.toml``: how a person's client reaches a host (flags and the
    environment override each key)."""

    host: str = ""
    """``tcp://HOST:PORT`` or ``HOST[:PORT]`` (``--host``, ``$ZRIVER_HOST``)."""
    host_key: str = ""
    """The host's z85 public key (``--host-key``, ``$ZRIVER_HOST_KEY``)."""
    key: str = ""
    """Your secret key file (``--key``, ``$ZRIVER_KEY``); default
    ``$ZRIVER_HOME/keys/client.key_secret``."""


PORT = (0, 65535)
"""A port to bind or dial (0: any free one, where the role binds it)."""
PORT_OR_OFF = (-1, 65535)
"""A port, or -1 for "off"."""
POSITIVE = ("more than 0", None)
"""Strictly more than 0 (an interval, a timeout)."""
HOST_RANGES: dict[str, tuple] = {
    "router_port": PORT, "xsub_port": PORT, "xpub_port": PORT, "stream_port": PORT,
    "relay_port": PORT_OR_OFF, "web_port": PORT_OR_OFF,
    "heartbeat_interval": POSITIVE, "heartbeat_misses": (1, None),
    "unreachable_grace": POSITIVE, "max_message_bytes": (1024, None),
    "env_keep_versions": (1, None),
}
"""Each numeric host setting's inclusive (low, high) bounds (``POSITIVE``: low excluded)."""
RUNNER_RANGES: dict[str, tuple] = {
    "router_port": PORT, "xsub_port": PORT, "cores": (0, None), "gpus": (-1, None),
    "kill_grace": (0.0, None), "log_poll_interval": POSITIVE, "request_timeout": POSITIVE,
    "max_message_bytes": (1024, None), "env_keep_versions": (1, None),
    "docker_probe_interval": POSITIVE,
}
"""The runner's, as ``HOST_RANGES``."""
HOST_CHOICES: dict[str, tuple[str, ...]] = {
    "security": SECURITY_MODES, "placement": PLACEMENTS, "gpu_placement": PLACEMENTS,
}
"""Each host setting that takes one of a few words, and those words."""


def check_choices(settings: Any, choices: dict[str, tuple[str, ...]]) -> None:
    """``InvalidArgument`` naming the first key of ``choices`` whose value is none of its
    words (``security must be 'curve' or 'none', got 'x'``)."""
    for key, words in choices.items():
        value = getattr(settings, key)
        if value not in words:
            allowed = " or ".join(f"'{word}'" for word in words)
            raise InvalidArgument(f"{key} must be {allowed}, got {value!r}")


def check_ranges(settings: Any, ranges: dict[str, tuple]) -> None:
    """``InvalidArgument`` naming the first key of ``ranges`` whose value is out of bounds
    (ports are ``PORT``: 99999 is refused, never replaced by a random port)."""
    for key, bounds in ranges.items():
        value = getattr(settings, key)
        low, high = bounds
        if bounds == POSITIVE:
            if not value > 0:
                raise InvalidArgument(f"{key} must be more than 0, got {value!r}")
        elif value < low or (high is not None and value > high):
            span = f"from {low} to {high}" if high is not None else f"at least {low}"
            what = ("a port " if bounds in (PORT, PORT_OR_OFF) else "")
            off = " (-1: off)" if bounds is PORT_OR_OFF else ""
            raise InvalidArgument(f"{key} must be {what}{span}{off}, got {value!r}")


def load(path: str | Path | None, cls: type, default_name: str) -> Any:
    """Settings of ``cls`` from ``path`` (or ``$ZRIVER_HOME/<default_name>`` when it exists)."""
    if path is None:
        candidate = zriver_home() / default_name
        if not candidate.exists():
            return cls()
        path = candidate
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidArgument(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"config file {path} is not valid TOML: {exc}") from None
    return from_mapping(data, cls, str(path))


def retention_seconds(text: str) -> float | None:
    """Seconds in a ``retention`` value (``None``: for ever); ``InvalidArgument`` naming the
    key when it is not a duration in ``RETENTION_RANGE``."""
    if text.strip().lower() in ("0", "forever"):
        return None
    try:
        seconds = parse_duration(text)
    except InvalidArgument as exc:
        raise InvalidArgument(f"retention: {exc} (or \"forever\")") from None
    low, high = RETENTION_RANGE
    if not low <= seconds <= high:
        raise InvalidArgument(f"retention: {text!r} is out of range: keep finished tasks at "
                              f"least 1h and at most 36500d (or \"forever\")")
    return seconds


def from_mapping(data: dict[str, Any], cls: type, origin: str = "config") -> Any:
    """Build ``cls`` from a mapping, refusing unknown keys, wrong types and (through the
    class's ``check``, when it has one) values out of range, with ``origin`` named."""
    known = {f.name: f for f in fields(cls)}
    values = {}
    for key, value in data.items():
        if key not in known:
            raise InvalidArgument(
                f"{origin}: unknown setting {key!r} (known: {', '.join(sorted(known))})"
            )
        values[key] = _coerce(value, known[key].type, f"{origin}: {key}")
    settings = cls(**values)
    check = getattr(settings, "check", None)
    if check is not None:
        try:
            check()
        except InvalidArgument as exc:
            raise InvalidArgument(f"{origin}: {exc}") from None
    return settings


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    text = str(annotation)
    if text.startswith("dict"):
        if not isinstance(value, dict):
            raise InvalidArgument(f"{where} must be a table")
        return {str(k): str(v) for k, v in value.items()}
    if text.startswith("list"):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidArgument(f"{where} must be a list of strings")
        return list(value)
    if text == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    expected = {"int": int, "str": str, "bool": bool}.get(text)
    if expected is None or not isinstance(value, expected) or (
        expected is int and isinstance(value, bool)
    ):
        raise InvalidArgument(f"{where} must be of type {text}, got {value!r}")
    return value


HOST_TEMPLATE = f"""\
# zriver host configuration (TOML). Every key is optional; shown values are the defaults.

# Where the host keeps its database and the endpoints file clients read. Default: $ZRIVER_HOME or ~/.zriver
# data_dir = "/var/lib/zriver"

# Address to bind. 127.0.0.1 keeps the cluster on this machine; use this machine's LAN address
# (or 0.0.0.0) so runners on other machines can reach it.
bind_address = "127.0.0.1"
router_port = {DEFAULT_ROUTER_PORT}   # requests, replies and host->runner commands (ROUTER)
xsub_port = {DEFAULT_XSUB_PORT}     # runners publish heartbeats and log chunks here
xpub_port = {DEFAULT_XPUB_PORT}     # clients subscribe to events and live logs here
stream_port = {DEFAULT_STREAM_PORT}   # runners dial it for byte streams (shells, port forwards)
web_port = {DEFAULT_WEB_PORT}      # the dashboard and HTTP API, behind a login (-1: off)
relay_port = {DEFAULT_RELAY_PORT}    # the SSH relay: ssh -J zriver@HOST:{DEFAULT_RELAY_PORT}, zriver ssh/connect/forward (-1: off)

# A node silent for heartbeat_interval x heartbeat_misses (its lease) is "unreachable": its
# tasks wait for it, and its unstarted work goes back to the queue.
heartbeat_interval = 2.0
heartbeat_misses = 3

# Seconds an unreachable node's tasks wait before they are "lost" (and retried); its runner
# ends them by itself before that. At least twice the lease.
unreachable_grace = 600.0

# A directory every node mounts at the same path (NFS, ...). Task logs are written there when set.
# shared_dir = "/mnt/cluster"

# Messages larger than this get a "too_large" error.
max_message_bytes = {DEFAULT_MAX_MESSAGE_BYTES}

# Where tasks go: "spread" (the node with the most free cores) or "pack" (fill a node first).
# GPU tasks follow gpu_placement (pack keeps whole nodes free for large GPU jobs).
placement = "spread"
gpu_placement = "pack"

# Chained starts: the next task of the same shape waits on the runner behind a running one and
# starts the moment it ends, with no round trip to the host (fast for many short tasks).
prefetch = true

# The Docker environment a task runs in when it names none (`zriver env list`); empty: native.
default_container = ""

# Docker environments (`zriver env ...`, docs/environments.md): committed versions are archived
# under shared_dir/envs (else data_dir/envs); this many are kept per env (never one that a
# pending or running task needs).
env_keep_versions = 5
# env_image_prefix = "zriver-env"   # images are tagged <prefix>/<env>:<version>
# docker_host = ""                  # default: $DOCKER_HOST, else the local socket

# "curve": every connection is encrypted and only keys the host knows may connect
# (`zriver init keys`, `zriver keys add`; docs/security.md). "none" turns encryption and
# authentication off: anyone who can reach the ports can do anything. Use it only on a
# network you trust completely.
security = "curve"

# Finished tasks and their events older than this are pruned in the background (after their
# core- and GPU-hours are rolled up, so `zriver usage` keeps its sums). A duration (12h, 30d,
# 180d), or "forever" (also "0") to keep everything.
retention = "{DEFAULT_RETENTION}"
"""

RUNNER_TEMPLATE = f"""\
# zriver runner configuration (TOML). Every key is optional; shown values are the defaults.

# The host's address and ports (router_port and xsub_port of the host's config).
host = "127.0.0.1"
router_port = {DEFAULT_ROUTER_PORT}
xsub_port = {DEFAULT_XSUB_PORT}

# This node's name in the cluster. Default: the hostname.
# name = "node1"

# Local data: task logs, the update outbox. Default: $ZRIVER_HOME/runner or ~/.zriver/runner
# data_dir = "/var/lib/zriver-runner"

# The same shared directory as the host's, when there is one.
# shared_dir = "/mnt/cluster"

# Free-form labels shown in `zriver nodes`.
# labels = {{ rack = "a", room = "lab2" }}

# Override detected resources (0 / "" / -1 = detect). Useful on shared or oversubscribed
# machines, and for tests: numa_zones = "0-3;4-7" declares two zones; gpus = 2 declares two
# GPUs (reported as "declared", given to tasks through CUDA_VISIBLE_DEVICES).
cores = 0
memory = ""
numa_zones = ""
gpus = -1

# Seconds between SIGTERM and SIGKILL when a task is killed.
kill_grace = 10.0

# The Unix account native tasks run as when they name none (`zriver submit --user`, admins
# only) and their owner has no account of that name on this node (root never counts). A name
# that does not exist here fails those tasks; it never falls back to root. Only a runner
# running as root switches accounts; otherwise every task runs as the runner's own account.
task_user = "nobody"

# Directories users may bind-mount into containers from (those and below), e.g. ["/data"].
# Checked by the host at submit; empty: none.
allowed_mounts = []

# Container tasks (docs/environments.md). Docker is used when its daemon answers.
# docker_host = ""                  # default: $DOCKER_HOST, else the local socket
# image_prefix = "zriver-env"       # env images are loaded as <prefix>/<env>:<version>
env_keep_versions = 3               # local versions kept per env
allow_privileged = false            # let tasks ask for --privileged containers
# Bind mounts added to every container task, HOST:CONTAINER[:ro].
# additional_mounts = ["/data:/data:ro"]
# Mounted at /local_temp in every container. Default: <data_dir>/local_temp
# local_temp_dir = "/scratch/zriver"

# CURVE (docs/security.md): this node's secret key file (`zriver keys new --runner` makes it;
# an admin adds its public key with `zriver keys add --role runner NODE -- KEY`), and the host's
# public key (`zriver keys host` on the host; $ZRIVER_HOST_KEY overrides it). With neither a
# key file nor a host key the runner connects without CURVE (a host with security = "none").
# key = "~/.zriver/keys/runner.key_secret"
# host_key = ""
"""

CLIENT_TEMPLATE = """\
# zriver client configuration (TOML), $ZRIVER_HOME/client.toml. Flags and the environment
# ($ZRIVER_HOST, $ZRIVER_HOST_KEY, $ZRIVER_KEY) override each key.

# The host: tcp://HOST:PORT or HOST[:PORT]. Default: a host on this machine, else 127.0.0.1:8620
# host = "tcp://cluster.example:8620"

# The host's public key (`zriver keys host` on the host; `zriver keys add` prints it too).
# host_key = ""

# Your secret key file (`zriver keys new` makes it). Default: $ZRIVER_HOME/keys/client.key_secret
# key = "~/.zriver/keys/client.key_secret"
"""
