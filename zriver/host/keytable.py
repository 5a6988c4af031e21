"""The keys extension: which CURVE public keys the host trusts, under what name and role.

* ``KeyRecords``: the ``keys`` table (migration 5); all of its SQL is here.
* ``KeyTable``: the same in memory, for the hot path: ``principal(z85)`` for every message,
  ``allowed(z85)`` for every ZAP handshake. A revoked key has no principal, so revocation
  takes effect on the next message of a connection that is already open.
* ``Keys``: the extension object the host owns (``zriver.host.extension``): the migration,
  the admin-only ops ``key.add``, ``key.list``, ``key.revoke``, and the bootstrap at attach.

Bootstrap: keys the host trusts from its own files, added at ``attach`` when their public key
is not in the table yet: the ``bootstrap`` list given to ``Keys`` (``zriver up`` gives its
local admin and its embedded runner) and ``<data_dir>/keys/admin.key`` (written by ``zriver
init keys``), imported as an admin. A bootstrap key whose name is held by another key
replaces it (whoever can write the host's files is trusted as much as the host). A revoked
key stays revoked: bootstrap never brings a known public key back.

Names: unique; a runner key's name is its node name. A name whose key was revoked may be given
a new key (``key.add``); a public key, once known, is never added again under any name.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

import structlog

from zriver import keys as keyfiles
from zriver.errors import Conflict, InvalidArgument, NotFound
from zriver.host.ops import ADMINS, SERVICE, OpTable
from zriver.host.store import Migration, Store
from zriver.principal import ADMIN, ROLES, Principal
from zriver.protocol import arg

log = structlog.get_logger("zriver")

MIGRATION = Migration(5, "keys", """
    CREATE TABLE keys(
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        public_key TEXT NOT NULL UNIQUE,
        added_at REAL NOT NULL,
        revoked_at REAL
    );
""")


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """One row of ``keys``."""

    name: str
    role: str
    public_key: str
    added_at: float
    revoked_at: float | None = None

    @property
    def live(self) -> bool:
        return self.revoked_at is None

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)


class KeyRecords:
    """The ``keys`` table over the host's ``Store`` (its connection, its transaction)."""

    _COLUMNS = "name, role, public_key, added_at, revoked_at"

    def __init__(self, store: Store) -> None:
        self.store = store

    def all(self) -> list[KeyEntry]:
        return [KeyEntry(*row) for row in self.store.conn.execute(
            f"SELECT {self._COLUMNS} FROM keys ORDER BY name")]

    def put(self, entry: KeyEntry) -> None:
        """Insert ``entry``, or replace the row of its name (a public key held by another row
        raises: the caller checks first)."""
        self.store.conn.execute(
            f"INSERT INTO keys({self._COLUMNS}) VALUES (?, ?, ?, ?, ?) ON CONFLICT(name) DO "
            "UPDATE SET role=excluded.role, public_key=excluded.public_key, "
            "added_at=excluded.added_at, revoked_at=excluded.revoked_at",
            (entry.name, entry.role, entry.public_key, entry.added_at, entry.revoked_at))

    def revoke(self, name: str, at: float) -> None:
        self.store.conn.execute("UPDATE keys SET revoked_at=? WHERE name=? AND revoked_at IS NULL",
                                (at, name))


class KeyTable:
    """The keys in memory: z85 public key -> ``Principal`` (live keys only), name -> entry."""

    def __init__(self, entries: Iterable[KeyEntry] = ()) -> None:
        self._principals: dict[str, Principal] = {}
        self._by_name: dict[str, KeyEntry] = {}
        self._by_key: dict[str, KeyEntry] = {}
        for entry in entries:
            self.put(entry)

    def principal(self, public_key: str) -> Principal | None:
        """Who holds ``public_key``; ``None`` when it is unknown or revoked."""
        return self._principals.get(public_key)

    def allowed(self, public_key: str) -> bool:
        """The ZAP question: may a peer with ``public_key`` connect."""
        return public_key in self._principals

    def entry(self, name: str) -> KeyEntry | None:
        return self._by_name.get(name)

    def holder(self, public_key: str) -> KeyEntry | None:
        """The entry with ``public_key``, live or revoked."""
        return self._by_key.get(public_key)

    def entries(self) -> list[KeyEntry]:
        return sorted(self._by_name.values(), key=lambda e: e.name)

    def live_admins(self) -> list[KeyEntry]:
        return [e for e in self._by_name.values() if e.live and e.role == ADMIN]

    def put(self, entry: KeyEntry) -> None:
        """Add ``entry``, replacing whatever its name held."""
        old = self._by_name.pop(entry.name, None)
        if old is not None:
            self._by_key.pop(old.public_key, None)
            self._principals.pop(old.public_key, None)
        self._by_name[entry.name] = entry
        self._by_key[entry.public_key] = entry
        if entry.live:
            self._principals[entry.public_key] = Principal(entry.name, entry.role,
                                                           entry.public_key)

    def __len__(self) -> int:
        return len(self._by_name)


def check_role(role: object) -> str:
    if role not in ROLES:
        raise InvalidArgument(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    return role  # type: ignore[return-value]


class Keys:
    """The keys extension. ``bootstrap``: (name, role, z85 public key) trusted at attach."""

    name = "keys"
    migrations = [MIGRATION]

    def __init__(self, bootstrap: Iterable[tuple[str, str, str]] = ()) -> None:
        self.bootstrap = [(keyfiles.check_name(name), check_role(role),
                           keyfiles.check_public_key(key)) for name, role, key in bootstrap]
        self.table = KeyTable()
        self.records: KeyRecords | None = None
        self.service: Any = None

    # ---- the Extension protocol -----------------------------------------------------------
    def register(self, ops: OpTable) -> None:
        ops.add("key.add", self.add_key, ADMINS, SERVICE)
        ops.add("key.list", self.list_keys, ADMINS, SERVICE)
        ops.add("key.revoke", self.revoke_key, ADMINS, SERVICE)

    def attach(self, service: Any) -> None:
        """Load the table, then add the bootstrap keys and ``<data_dir>/keys/admin.key``.
        Needs ``service.store`` (and ``service.data_dir`` for the admin import); writes in
        a transaction of its own, or in the one the service has open."""
        self.service = service
        self.records = KeyRecords(service.store)
        self.table = KeyTable(self.records.all())
        trusted = list(self.bootstrap)
        data_dir = getattr(service, "data_dir", None)
        if data_dir is not None:
            imported = keyfiles.read_admin_import(Path(data_dir))
            if imported is not None:
                trusted.append((imported[0], ADMIN, imported[1]))
        with service.store.batch():
            for name, role, public_key in trusted:
                self._trust(name, role, public_key)

    async def close(self) -> None:
        pass

    def _trust(self, name: str, role: str, public_key: str) -> None:
        if self.table.holder(public_key) is not None:
            return  # known (live, or revoked: revoked stays revoked)
        entry = KeyEntry(name, role, public_key, time.time())
        replaced = self.table.entry(name)
        self.records.put(entry)
        self.table.put(entry)
        log.info("key.bootstrap", name=name, role=role, key=public_key,
                 replaced=replaced.public_key if replaced else None)

    # ---- ops ------------------------------------------------------------------------------
    def add_key(self, service: Any, request: Any, body: dict[str, Any]) -> dict[str, Any]:
        """``key.add {name, role, public_key}`` -> the entry and the config its holder needs."""
        name = keyfiles.check_name(arg(body, "name", str))
        role = check_role(arg(body, "role", str))
        public_key = keyfiles.check_public_key(arg(body, "public_key", str))
        holder = self.table.holder(public_key)
        if holder is not None:
            state = "holds" if holder.live else "held (revoked)"
            raise Conflict(f"key {name!r}: {holder.name!r} {state} that public key already; "
                           f"a key is never added twice")
        existing = self.table.entry(name)
        if existing is not None and existing.live:
            raise Conflict(f"there is a key named {name!r} already ({existing.role}); revoke "
                           f"it first (`zriver keys revoke {name}`) to give the name a new key")
        entry = KeyEntry(name, role, public_key, time.time())
        service.begin()
        self.records.put(entry)
        self.table.put(entry)
        log.info("key.added", name=name, role=role, key=public_key, by=_who(request))
        return {**entry.to_wire(), "config": self.peer_config(service)}

    def list_keys(self, service: Any, request: Any, body: dict[str, Any]) -> dict[str, Any]:
        """``key.list`` -> ``{keys: [{name, role, public_key, added_at, revoked_at}]}``."""
        return {"keys": [entry.to_wire() for entry in self.table.entries()]}

    def revoke_key(self, service: Any, request: Any, body: dict[str, Any]) -> dict[str, Any]:
        """``key.revoke {name}``: the key stops working at once, also on open connections."""
        name = arg(body, "name", str)
        entry = self.table.entry(name)
        if entry is None:
            raise NotFound(f"no key named {name!r} (`zriver keys list`)")
        if not entry.live:
            return entry.to_wire()
        if entry.role == ADMIN and len(self.table.live_admins()) == 1:
            raise Conflict(f"{name!r} is the last admin key: add another admin first, or no "
                           f"one could manage keys any more")
        revoked = KeyEntry(entry.name, entry.role, entry.public_key, entry.added_at, time.time())
        service.begin()
        self.records.revoke(name, revoked.revoked_at)
        self.table.put(revoked)
        log.info("key.revoked", name=name, role=entry.role, key=entry.public_key,
                 by=_who(request))
        return revoked.to_wire()

    @staticmethod
    def peer_config(service: Any) -> dict[str, str]:
        """What a new peer needs to reach this host: ``host`` (the ROUTER endpoint),
        ``host_key`` (the host's public key, ``service.server_keys.public``; "" with
        security off) and ``xsub`` (where runners publish)."""
        server_keys = getattr(service, "server_keys", None)
        endpoints = getattr(service, "endpoints", {}) or {}
        return {"host": endpoints.get("router", ""),
                "host_key": server_keys.public if server_keys is not None else "",
                "xsub": endpoints.get("xsub", "")}


def _who(request: Any) -> str:
    principal = getattr(request, "principal", None)
    return principal.name if principal is not None else "?"
