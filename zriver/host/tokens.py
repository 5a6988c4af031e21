"""Web API tokens: bearer secrets that stand for a principal (``zriver token create``).

A token is a principal like a CURVE key: a name and a role (``user`` or ``admin``). The host
keeps only the SHA256 of its secret (the secret is shown once, by ``token.create``), its
expiry and whether it was revoked. ``Tokens.principal_for(secret)`` is the web front end's
lookup: ``None`` for an unknown, expired or revoked secret.

Ops (kind ``service``, people only):

* ``token.create {name?, role, expires?}`` -> ``{name, role, token, expires_at}``: an admin
  any role; a user only role ``user``, and the token is theirs (its principal name is the
  user's own); ``expires`` is seconds (a number) or a duration (``30d``); absent: never.
* ``token.list {}``: admins all tokens, a user their own (never the secrets);
* ``token.revoke {name}``: admins any token, a user their own;
* ``web.login_link {}`` -> ``{url, expires_in}``: a one-time dashboard sign-in link for the
  caller (``zriver web``); ``unavailable`` when the host serves no web front end.

Token names are unique (``NAME`` in ``token revoke NAME``); a token's principal name is its
``owner`` (the creator, or for an admin the ``owner`` field it gave).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Any

from zriver.errors import Conflict, Forbidden, InvalidArgument, NotFound, Unavailable
from zriver.host.ops import PEOPLE_ONLY, SERVICE, OpTable
from zriver.host.store import Migration, Store
from zriver.principal import ADMIN, USER, Principal
from zriver.protocol import arg
from zriver.sizes import parse_duration

MIGRATION = Migration(8, "tokens", """
CREATE TABLE web_tokens(
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    role TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    expires_at REAL,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX web_tokens_by_owner ON web_tokens(owner);
""")
COLUMNS = ("name", "owner", "role", "token_hash", "created_at", "expires_at", "revoked")
PUBLIC = ("name", "owner", "role", "created_at", "expires_at", "revoked")
PREFIX = "zrt_"
MAX_NAME = 64


def hash_secret(secret: str) -> str:
    """The stored form of a token secret: hex SHA256."""
    return hashlib.sha256(secret.encode()).hexdigest()


def public(row: dict[str, Any]) -> dict[str, Any]:
    """A token row without its hash, ``revoked`` as a bool."""
    return {key: (bool(row[key]) if key == "revoked" else row[key]) for key in PUBLIC}


class TokenRecords:
    """All the SQL of ``web_tokens``, on the host's store connection."""

    def __init__(self, store: Store) -> None:
        self.conn = store.conn

    def _select(self, where: str, params: tuple) -> list[dict[str, Any]]:
        rows = self.conn.execute(f"SELECT {', '.join(COLUMNS)} FROM web_tokens {where} "
                                 "ORDER BY created_at, name", params).fetchall()
        return [dict(zip(COLUMNS, row)) for row in rows]

    def get(self, name: str) -> dict[str, Any] | None:
        rows = self._select("WHERE name=?", (name,))
        return rows[0] if rows else None

    def by_hash(self, token_hash: str) -> dict[str, Any] | None:
        rows = self._select("WHERE token_hash=?", (token_hash,))
        return rows[0] if rows else None

    def of(self, owner: str | None) -> list[dict[str, Any]]:
        """The tokens of ``owner`` (``None``: everyone's), oldest first."""
        return self._select("WHERE owner=?", (owner,)) if owner is not None else self._select("", ())

    def add(self, row: dict[str, Any]) -> None:
        with self.conn:
            self.conn.execute(f"INSERT INTO web_tokens({', '.join(COLUMNS)}) "
                              f"VALUES ({', '.join('?' * len(COLUMNS))})",
                              tuple(row[column] for column in COLUMNS))

    def revoke(self, name: str) -> None:
        with self.conn:
            self.conn.execute("UPDATE web_tokens SET revoked=1 WHERE name=?", (name,))


class Tokens:
    """The extension: migration 8 and the ``token.*`` ops."""

    name = "tokens"
    migrations = [MIGRATION]

    def __init__(self) -> None:
        self.records: TokenRecords | None = None

    def register(self, ops: OpTable) -> None:
        ops.add("token.create", self.create, PEOPLE_ONLY, SERVICE)
        ops.add("token.list", self.list, PEOPLE_ONLY, SERVICE)
        ops.add("token.revoke", self.revoke, PEOPLE_ONLY, SERVICE)
        ops.add("web.login_link", self.login_link, PEOPLE_ONLY, SERVICE)

    def attach(self, service: Any) -> None:
        self.records = TokenRecords(service.store)

    async def close(self) -> None:
        pass

    def principal_for(self, secret: str, at: float | None = None) -> Principal | None:
        """The principal of a live token secret; ``None`` when unknown, expired or revoked."""
        if not isinstance(secret, str) or not secret.startswith(PREFIX) or self.records is None:
            return None
        row = self.records.by_hash(hash_secret(secret))
        if row is None or row["revoked"]:
            return None
        if row["expires_at"] is not None and row["expires_at"] <= (at or time.time()):
            return None
        return Principal(row["owner"], row["role"])

    # ---- ops ------------------------------------------------------------------------------
    def create(self, service: Any, request: Any, body: dict) -> dict:
        principal = request.principal
        role = arg(body, "role", str, USER)
        if role not in (USER, ADMIN):
            raise InvalidArgument(f"a token's role is user or admin, not {role!r}")
        if role == ADMIN and not principal.is_admin:
            raise Forbidden("only an admin may create an admin token")
        owner = arg(body, "owner", str, principal.name)
        if owner != principal.name and not principal.is_admin:
            raise Forbidden(f"only an admin may create a token for {owner!r}")
        name = self._new_name(arg(body, "name", str, None), owner)
        created = time.time()
        expires_at = _expiry(body.get("expires"), created)
        secret = PREFIX + secrets.token_urlsafe(32)
        row = {"name": name, "owner": owner, "role": role, "token_hash": hash_secret(secret),
               "created_at": created, "expires_at": expires_at, "revoked": 0}
        service.begin()
        self.records.add(row)
        return public(row) | {"token": secret}

    def _new_name(self, name: str | None, owner: str) -> str:
        if name is None:
            name = f"{owner}-{secrets.token_hex(3)}"
        if not name or len(name) > MAX_NAME or not name.replace("-", "").replace(
                "_", "").replace(".", "").isalnum():
            raise InvalidArgument(f"a token name is 1-{MAX_NAME} letters, digits, '-', '_' "
                                  f"or '.', not {name!r}")
        if self.records.get(name) is not None:
            raise Conflict(f"a token named {name!r} exists already")
        return name

    def list(self, service: Any, request: Any, body: dict) -> dict:
        principal = request.principal
        rows = self.records.of(None if principal.is_admin else principal.name)
        return {"tokens": [public(row) for row in rows]}

    def revoke(self, service: Any, request: Any, body: dict) -> dict:
        name = arg(body, "name", str)
        row = self.records.get(name)
        if row is None or not request.principal.may_act_on(row["owner"]):
            raise NotFound(f"no token {name!r} of yours (`zriver token list` shows them)")
        service.begin()
        self.records.revoke(name)
        return public(row | {"revoked": 1})

    def login_link(self, service: Any, request: Any, body: dict) -> dict:
        web = getattr(service, "web", None)
        if web is None:
            raise Unavailable("this host serves no web dashboard (web_port = -1)")
        return {"url": web.login_link(request.principal), "expires_in": web.auth.link_ttl}


def _expiry(expires: Any, created: float) -> float | None:
    """``expires`` (seconds, or a duration such as ``30d``; ``None``: never) as a time."""
    if expires is None:
        return None
    if isinstance(expires, bool) or not isinstance(expires, (int, float, str)):
        raise InvalidArgument("field 'expires' is seconds or a duration such as 30d")
    return created + parse_duration(str(expires))
