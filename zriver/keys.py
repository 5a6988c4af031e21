"""CURVE key files: where each role's pair lives, how it is made, loaded and checked.

A pair is two ZPL certificate files made by pyzmq (``zmq.auth.create_certificates``):
``NAME.key`` holds the public key, ``NAME.key_secret`` the public and the secret key. Keys are
z85 text (40 characters for 32 bytes).

Where they live:

* the host's pair: ``<host data_dir>/keys/host.key[_secret]``;
* a person's client pair: ``$ZRIVER_HOME/keys/client.key[_secret]``;
* a node's runner pair: ``$ZRIVER_HOME/keys/runner.key[_secret]``;
* ``<host data_dir>/keys/admin.key``: the public key of the admin ``zriver init keys`` made,
  with its name in the certificate's metadata; the host trusts it as an admin at start.

Secret files are created ``0600`` in a ``0700`` directory, never readable by anyone else for
a moment (they are written in a private temporary directory and renamed into place), and a
secret file that is group or world readable is refused when loaded. Secret keys are never
logged, printed, nor put on a command line: the ``repr`` of the dataclasses hides them.

Whether a peer (a client or a runner) speaks CURVE is decided in one place,
``resolve_client_keys``: plain only when it has neither a host key nor a key file.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.auth
from zmq.utils import z85

from zriver.config import ClientSettings, load, zriver_home
from zriver.errors import InvalidArgument, NotFound

KEYS_DIR = "keys"
HOST = "host"
CLIENT = "client"
RUNNER = "runner"
NO_KEY = "none"
"""``key = "none"``: connect without CURVE even when key files exist (security = "none")."""
ADMIN_FILE = "admin.key"
"""Under the host's keys dir: the public key ``zriver init keys`` made for the local admin."""

_Z85 = re.compile(r"^[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}$")
NAME = re.compile(r"^[A-Za-z0-9_.@+-]{1,64}$")
"""What a key's name may be (a runner key's name is its node name)."""


# ---- the material ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ServerKeys:
    """The host's pair, z85. ``secret`` never appears in a ``repr``."""

    public: str
    secret: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class ClientKeys:
    """What a client or runner socket needs: its own pair and the host's public key (z85)."""

    public: str
    secret: str = field(repr=False)
    server: str


# ---- paths -------------------------------------------------------------------------------
def public_path(secret: Path) -> Path:
    """``x/client.key_secret`` -> ``x/client.key``."""
    text = str(secret)
    if not text.endswith(".key_secret"):
        raise InvalidArgument(f"{secret}: a secret key file's name ends in .key_secret")
    return Path(text[: -len("_secret")])


def host_keys_dir(data_dir: str | Path) -> Path:
    return Path(data_dir) / KEYS_DIR


def host_secret_file(data_dir: str | Path) -> Path:
    return host_keys_dir(data_dir) / f"{HOST}.key_secret"


def host_public_file(data_dir: str | Path) -> Path:
    return host_keys_dir(data_dir) / f"{HOST}.key"


def admin_public_file(data_dir: str | Path) -> Path:
    return host_keys_dir(data_dir) / ADMIN_FILE


def client_secret_file() -> Path:
    """A person's default secret key file: ``$ZRIVER_HOME/keys/client.key_secret``."""
    return zriver_home() / KEYS_DIR / f"{CLIENT}.key_secret"


def runner_secret_file() -> Path:
    """A node's default secret key file: ``$ZRIVER_HOME/keys/runner.key_secret``."""
    return zriver_home() / KEYS_DIR / f"{RUNNER}.key_secret"


def client_key_file(flag: str | None = None) -> Path:
    """Where this machine's client reads its secret key: ``--key`` (``flag``),
    ``$ZRIVER_KEY``, ``key`` in ``$ZRIVER_HOME/client.toml``, then the default."""
    settings = load(None, ClientSettings, "client.toml")
    return Path(choose(flag, "ZRIVER_KEY", settings.key) or client_secret_file()).expanduser()


# ---- checks ------------------------------------------------------------------------------
def is_z85_key(text: object) -> bool:
    """Whether ``text`` is a z85 CURVE key (40 characters of the z85 alphabet)."""
    if not isinstance(text, str) or not _Z85.match(text):
        return False
    try:
        z85.decode(text)  # a 5-character group over 2**32 is not a key
    except (ValueError, struct.error):
        return False
    return True


def check_public_key(text: object, what: str = "public key") -> str:
    """``text`` when it is a z85 key, else ``InvalidArgument`` saying what one looks like."""
    if not is_z85_key(text):
        shown = text if isinstance(text, str) and len(text) <= 80 else type(text).__name__
        raise InvalidArgument(
            f"{what} must be a z85 CURVE key (40 characters, as `zriver keys new` prints), "
            f"got {shown!r}")
    return text  # type: ignore[return-value]


def check_name(name: object) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise InvalidArgument(
            f"a key name is 1-64 letters, digits or _.@+- (a runner key's name is its node "
            f"name), got {name!r}")
    return name


def _check_private(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise InvalidArgument(
            f"secret key file {path} is readable by other users (mode {mode:04o}): run "
            f"`chmod 600 {path}`")


# ---- loading -----------------------------------------------------------------------------
def load_pair(secret_file: str | Path) -> tuple[str, str]:
    """(public, secret) z85 from a secret key file; refused when others may read it."""
    path = Path(secret_file).expanduser()
    if not path.is_file():
        raise NotFound(f"no secret key file at {path}")
    _check_private(path)
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"{path} is not a ZeroMQ certificate: {exc}") from None
    if not secret:
        raise InvalidArgument(f"{path} holds no secret key (is it the public .key file?)")
    public_text, secret_text = public.decode("ascii"), secret.decode("ascii")
    if not (is_z85_key(public_text) and is_z85_key(secret_text)):
        raise InvalidArgument(f"{path} does not hold z85 CURVE keys")
    return public_text, secret_text


def load_public(public_file: str | Path) -> str:
    """The z85 public key of a certificate file (public or secret)."""
    path = Path(public_file).expanduser()
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"{path} is not a ZeroMQ certificate: {exc}") from None
    return check_public_key(public.decode("ascii", "replace"), f"the key in {path}")


def read_metadata(cert_file: str | Path) -> dict[str, str]:
    """The ``metadata`` section of a ZPL certificate (``name = alice`` lines)."""
    values: dict[str, str] = {}
    section = ""
    for raw in Path(cert_file).read_text(encoding="utf-8").splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        if not raw[:1].isspace():
            section = raw.strip()
            continue
        if section == "metadata" and "=" in raw:
            key, value = raw.split("=", 1)
            values[key.strip()] = value.strip().strip("'\"")
    return values


def server_keys(data_dir: str | Path) -> ServerKeys:
    """The host's pair from ``<data_dir>/keys/host.key_secret`` (``NotFound`` if missing)."""
    public, secret = load_pair(host_secret_file(data_dir))
    return ServerKeys(public, secret)


# ---- creating ----------------------------------------------------------------------------
def _private_dir(path: Path) -> None:
    """Make ``path`` (and parents); a directory this creates is ``0700``."""
    if not path.is_dir():
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask


def create_pair(secret_file: str | Path, metadata: dict[str, str] | None = None,
                force: bool = False) -> tuple[str, bool]:
    """Make the pair ``NAME.key`` / ``NAME.key_secret`` unless a usable one is there.

    Returns (public key, created). Idempotent: an existing secret file is loaded (and checked:
    a pair others may read is refused, never silently replaced) unless ``force``. The files
    are written by pyzmq in a ``0700`` temporary directory beside them, the secret one made
    ``0600``, then renamed into place, so no one else can read the secret for a moment.
    """
    secret = Path(secret_file).expanduser()
    public = public_path(secret)
    if secret.exists() and not force:
        key, _ = load_pair(secret)
        if not public.exists():
            write_public(public, key)
        return key, False
    _private_dir(secret.parent)
    name = secret.name[: -len(".key_secret")]
    staging = Path(tempfile.mkdtemp(prefix=".new-", dir=secret.parent))  # mkdtemp: 0700
    try:
        made_public, made_secret = zmq.auth.create_certificates(staging, name, metadata)
        os.chmod(made_secret, 0o600)
        os.chmod(made_public, 0o644)
        os.replace(made_secret, secret)
        os.replace(made_public, public)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    key, _ = load_pair(secret)
    return key, True


def write_public(path: str | Path, public_key: str, metadata: dict[str, str] | None = None,
                 ) -> None:
    """Write a public certificate (ZPL, as pyzmq writes them) holding ``public_key`` and
    ``metadata`` (pyzmq's own writer puts metadata in the secret file only)."""
    check_public_key(public_key)
    path = Path(path)
    for key, value in (metadata or {}).items():
        if not NAME.match(key) or "\n" in value or "\r" in value:
            raise InvalidArgument(f"metadata {key!r} = {value!r} cannot go in a certificate")
    lines = ["#   ZeroMQ CURVE Public Certificate (zriver)", "", "metadata"]
    lines += [f"    {key} = \"{value}\"" for key, value in (metadata or {}).items()]
    lines += ["curve", f"    public-key = \"{public_key}\"", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    tmp.replace(path)


def ensure_server_keys(data_dir: str | Path) -> tuple[ServerKeys, bool]:
    """The host's pair, made when missing (``zriver up``, ``zriver host``, ``init keys``).
    Returns (keys, created)."""
    _, created = create_pair(host_secret_file(data_dir), {"role": "host"})
    return server_keys(data_dir), created


def ensure_client_pair(secret_file: str | Path, name: str, role: str) -> tuple[str, bool]:
    """A client or runner pair at ``secret_file``, made when missing: (public key, created).
    ``name`` and ``role`` go in the secret certificate's metadata, for people reading it."""
    return create_pair(secret_file, {"name": name, "role": role})


def ensure_admin_import(data_dir: str | Path, public_key: str, name: str) -> bool:
    """Write ``<data_dir>/keys/admin.key`` (the host imports it as an admin at start) unless
    it already holds ``public_key`` under ``name``; True when written."""
    path = admin_public_file(data_dir)
    check_name(name)
    if path.exists():
        try:
            if load_public(path) == public_key and read_metadata(path).get("name") == name:
                return False
        except InvalidArgument:
            pass
    _private_dir(path.parent)
    write_public(path, public_key, {"name": name})
    return True


def read_admin_import(data_dir: str | Path) -> tuple[str, str] | None:
    """(name, public key) of ``<data_dir>/keys/admin.key``, or ``None`` when there is none."""
    path = admin_public_file(data_dir)
    if not path.exists():
        return None
    key = load_public(path)
    name = read_metadata(path).get("name", "")
    return check_name(name), key


# ---- who speaks CURVE --------------------------------------------------------------------
def choose(flag: str | None, env_name: str, configured: str | None) -> str:
    """The first of a command-line ``flag``, ``$env_name``, a config file's value; ""."""
    return flag or os.environ.get(env_name) or configured or ""


def resolve_client_keys(key_file: str, host_key: str, *, default_key_file: Path,
                        fallback_host_key: str = "", config: str = "client.toml",
                        ) -> ClientKeys | None:
    """The CURVE material of a client or runner, or ``None`` for a plain connection.

    ``key_file`` and ``host_key`` are what the caller was given (flag, environment, config,
    in its order); ``default_key_file`` is used when ``key_file`` is empty, and
    ``fallback_host_key`` (the ``host_key`` of ``endpoints.json``) when ``host_key`` is.

    Plain only when there is no host key and no key file: a key file with no host key, or a
    host key with no key file, is an error that says what to do (``config`` names the file
    whose ``host_key``/``key`` to set). ``key_file == "none"`` asks for plain whatever
    files exist (a host with security = "none"; ``zriver up`` without CURVE)."""
    if key_file == NO_KEY:
        if host_key:
            raise InvalidArgument(f"key = \"none\" (no CURVE) and a host key are both set: "
                                  f"drop one of them ({config}, --key, $ZRIVER_KEY)")
        return None
    path = Path(key_file).expanduser() if key_file else default_key_file
    server = host_key or fallback_host_key
    if not server and not path.exists():
        return None
    if not server:
        raise InvalidArgument(
            f"there is a key ({path}) but no host key: set host_key in {config} or "
            f"$ZRIVER_HOST_KEY to the host's public key (on the host: `zriver keys host`)")
    check_public_key(server, "the host key (host_key, --host-key, $ZRIVER_HOST_KEY)")
    if not path.exists():
        raise InvalidArgument(
            f"the host key is set but there is no key file at {path}: run `zriver keys new"
            f"{' --runner' if config == 'runner.toml' else ''}` and have an admin add it, "
            f"or point key in {config} / --key / $ZRIVER_KEY at yours")
    public, secret = load_pair(path)
    return ClientKeys(public, secret, server)


def endpoints_fields(keys: ServerKeys | None) -> dict[str, str]:
    """What the host adds to ``endpoints.json``: its public key, so that clients on the same
    machine find it with no configuration (``{}`` with security off)."""
    return {"host_key": keys.public} if keys is not None else {}


def runner_client_keys(settings) -> ClientKeys | None:
    """A runner's CURVE material from its (``RunnerSettings``) ``key`` and ``host_key``,
    which the ``zriver runner`` verb has already merged with ``--key``/``--host-key`` and
    ``$ZRIVER_KEY``/``$ZRIVER_HOST_KEY``; ``None``: plain."""
    return resolve_client_keys(settings.key, settings.host_key,
                               default_key_file=runner_secret_file(), config="runner.toml")


@dataclass(frozen=True, slots=True)
class LocalCluster:
    """The keys of a one-machine cluster (``zriver up``): the host's pair, the local admin's
    public key, the embedded runner's public key and secret file."""

    server: ServerKeys
    admin_name: str
    admin_public: str
    runner_name: str
    runner_public: str
    runner_key_file: Path

    @property
    def bootstrap(self) -> list[tuple[str, str, str]]:
        """For ``Keys(bootstrap=...)``: the admin and the runner, trusted at attach."""
        return [(self.admin_name, "admin", self.admin_public),
                (self.runner_name, RUNNER, self.runner_public)]

    def runner_client_keys(self) -> ClientKeys:
        _, secret = load_pair(self.runner_key_file)
        return ClientKeys(self.runner_public, secret, self.server.public)


def ensure_local_cluster(data_dir: str | Path, admin_name: str, admin_key_file: Path,
                         runner_name: str, runner_key_file: Path) -> LocalCluster:
    """Make what ``zriver up`` needs when missing (idempotent): the host pair under
    ``data_dir``, the admin's client pair at ``admin_key_file`` (``client_key_file()``), the
    runner's pair at ``runner_key_file`` (runner.toml's ``key`` or ``runner_secret_file()``)."""
    server, _ = ensure_server_keys(data_dir)
    admin_public, _ = ensure_client_pair(admin_key_file, check_name(admin_name), "admin")
    runner_public, _ = ensure_client_pair(runner_key_file, check_name(runner_name), RUNNER)
    return LocalCluster(server, admin_name, admin_public, runner_name, runner_public,
                        Path(runner_key_file).expanduser())
