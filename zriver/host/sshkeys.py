"""SSH public keys registered to principals: who may open which SSH session through the host.

The SSH relay (next) authenticates a person by one of these keys and acts as the principal it
is registered to. A key is stored once, under its SHA256 fingerprint, for one principal name.

Ops (kind ``service``):

* ``ssh_key.add {public_key, name?}``: people register their own keys; an admin may name
  another principal (``zriver ssh-key add FILE --name NAME``; ``keys add --ssh-key FILE``
  registers one with a new key);
* ``ssh_key.list {name?}``: one's own keys; an admin may list anyone's, or all;
* ``ssh_key.remove {fingerprint}``: one's own; an admin any.
"""

from __future__ import annotations

import time
from typing import Any

import asyncssh

from zriver.errors import Conflict, Forbidden, InvalidArgument, NotFound
from zriver.host.ops import PEOPLE_ONLY, SERVICE, OpTable
from zriver.host.store import Migration, Store
from zriver.protocol import arg

MIGRATION = Migration(6, "sshkeys", """
CREATE TABLE ssh_keys(
    fingerprint TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    public_key TEXT NOT NULL,
    comment TEXT NOT NULL DEFAULT '',
    added_at REAL NOT NULL
);
CREATE INDEX ssh_keys_by_name ON ssh_keys(name);
""")
MAX_KEY_TEXT = 16 * 1024
COLUMNS = ("fingerprint", "name", "public_key", "comment", "added_at")


def parse_public_key(text: str) -> tuple[str, str, str]:
    """``(fingerprint, key in OpenSSH form, comment)`` of one OpenSSH public key line;
    ``InvalidArgument`` for anything else (a private key, two keys, garbage)."""
    if len(text) > MAX_KEY_TEXT:
        raise InvalidArgument(f"an SSH public key is at most {MAX_KEY_TEXT} characters")
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if len(lines) != 1 or "PRIVATE KEY" in text:
        raise InvalidArgument("give exactly one SSH public key (a line like 'ssh-ed25519 AAAA... "
                              "you@machine', e.g. ~/.ssh/id_ed25519.pub), never a private key")
    try:
        key = asyncssh.import_public_key(lines[0])
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise InvalidArgument(f"not an SSH public key: {exc}") from None
    public = key.export_public_key("openssh").decode().strip()
    return key.get_fingerprint("sha256"), public, key.get_comment() or ""


class SshKeyRecords:
    """All the SQL of ``ssh_keys``, on the host's store connection."""

    def __init__(self, store: Store) -> None:
        self.conn = store.conn

    def get(self, fingerprint: str) -> dict[str, Any] | None:
        rows = self.conn.execute(f"SELECT {', '.join(COLUMNS)} FROM ssh_keys "
                                 "WHERE fingerprint=?", (fingerprint,)).fetchall()
        return dict(zip(COLUMNS, rows[0])) if rows else None

    def of(self, name: str | None) -> list[dict[str, Any]]:
        """The keys of ``name`` (``None``: everyone's), oldest first."""
        where, params = ("WHERE name=?", (name,)) if name is not None else ("", ())
        rows = self.conn.execute(f"SELECT {', '.join(COLUMNS)} FROM ssh_keys {where} "
                                 "ORDER BY added_at, fingerprint", params).fetchall()
        return [dict(zip(COLUMNS, row)) for row in rows]

    def add(self, row: dict[str, Any]) -> None:
        with self.conn:
            self.conn.execute(f"INSERT INTO ssh_keys({', '.join(COLUMNS)}) VALUES (?, ?, ?, ?, ?)",
                              tuple(row[column] for column in COLUMNS))

    def remove(self, fingerprint: str) -> None:
        with self.conn:
            self.conn.execute("DELETE FROM ssh_keys WHERE fingerprint=?", (fingerprint,))


class SshKeys:
    """The extension: migration 6 and the ``ssh_key.*`` ops."""

    name = "sshkeys"
    migrations = [MIGRATION]

    def __init__(self) -> None:
        self.records: SshKeyRecords | None = None

    def register(self, ops: OpTable) -> None:
        ops.add("ssh_key.add", self.add, PEOPLE_ONLY, SERVICE)
        ops.add("ssh_key.list", self.list, PEOPLE_ONLY, SERVICE)
        ops.add("ssh_key.remove", self.remove, PEOPLE_ONLY, SERVICE)

    def attach(self, service: Any) -> None:
        self.records = SshKeyRecords(service.store)

    async def close(self) -> None:
        pass

    def principal_of(self, fingerprint: str) -> str | None:
        """The name an SSH key is registered to (the relay's lookup)."""
        row = self.records.get(fingerprint)
        return row["name"] if row else None

    # ---- ops ------------------------------------------------------------------------------
    def add(self, service: Any, request: Any, body: dict) -> dict:
        principal = request.principal
        name = _whose(principal, arg(body, "name", str, None), "register an SSH key for")
        fingerprint, public, comment = parse_public_key(arg(body, "public_key", str))
        known = self.records.get(fingerprint)
        if known is not None:
            owner = "you" if known["name"] == name else repr(known["name"])
            raise Conflict(f"SSH key {fingerprint} is registered already (to {owner})")
        row = {"fingerprint": fingerprint, "name": name, "public_key": public,
               "comment": comment, "added_at": time.time()}
        service.begin()
        self.records.add(row)
        return row

    def list(self, service: Any, request: Any, body: dict) -> dict:
        principal = request.principal
        asked = arg(body, "name", str, None)
        if asked is None and not principal.is_admin:
            asked = principal.name
        name = _whose(principal, asked, "list the SSH keys of") if asked is not None else None
        return {"keys": self.records.of(name)}

    def remove(self, service: Any, request: Any, body: dict) -> dict:
        fingerprint = arg(body, "fingerprint", str)
        row = self.records.get(fingerprint)
        if row is None:
            raise NotFound(f"no SSH key {fingerprint} (`zriver ssh-key list` shows yours)")
        _whose(request.principal, row["name"], "remove the SSH keys of")
        service.begin()
        self.records.remove(fingerprint)
        return row


def _whose(principal: Any, name: str | None, verb: str) -> str:
    """``name`` when ``principal`` may act for it (itself; an admin: anyone), else
    ``Forbidden``; ``None`` means the principal itself."""
    if name is None or name == principal.name:
        return principal.name
    if not principal.is_admin:
        raise Forbidden(f"only an admin may {verb} {name!r}")
    return name
