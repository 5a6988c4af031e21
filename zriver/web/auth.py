"""Who is calling the web front end: bearer tokens, session cookies, one-time login links.

* ``Authorization: Bearer <token>``: the token's principal (``host.tokens.principal_for``),
  looked up on every request (a revoked or expired token is refused at once). Needs no CSRF
  header: a browser never adds it to a cross-site request by itself.
* Cookie ``zriver_session``: made by ``POST /api/v1/login {"token"}`` or by a one-time link
  ``GET /login?code=...``; HttpOnly, SameSite=Strict, Secure when served over https. A
  session made from a token lives no longer than the token (its secret's hash is kept and
  checked on every request); one made from a link, no longer than the key it was made for
  (its name's CURVE key, live and of the same role). Every state-changing request (not
  GET/HEAD/OPTIONS) with a session must carry ``X-CSRF-Token`` equal to the session's
  ``csrf`` (``GET /api/v1/session``); a WebSocket opened with the cookie must come from the
  page's own origin (``check_origin``).
* One-time codes (``login_link``): random, good for ``LINK_TTL`` seconds and one use.

Sessions and codes are in memory: a host restart signs everyone out (tokens stay).
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass, field

from zriver.errors import Forbidden, ZriverError
from zriver.principal import Principal

COOKIE = "zriver_session"
CSRF_HEADER = "X-CSRF-Token"
SESSION_TTL = 12 * 3600.0
LINK_TTL = 300.0
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Unauthenticated(ZriverError):
    """No valid session or token: HTTP 401."""

    code = "unauthenticated"


@dataclass
class Session:
    """A signed-in browser: its principal, CSRF token, expiry and (if made from a token) the
    token secret it stands on."""

    principal: Principal
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    expires: float = 0.0
    token: str | None = None


@dataclass
class Caller:
    """The principal of one request and how it authenticated (``session`` is None for a
    bearer token)."""

    principal: Principal
    session: Session | None = None
    session_id: str | None = None


def check_origin(headers) -> None:
    """A WebSocket opened with the session cookie must come from this server's own page:
    its ``Origin`` (when the browser sends one) names the same host and port as ``Host``
    (``Forbidden`` otherwise), as SameSite alone is not relied on for WebSockets."""
    origin = headers.get("Origin")
    if origin is None:
        return
    if origin.split("://", 1)[-1].rstrip("/") != headers.get("Host", ""):
        raise Forbidden(f"a WebSocket from another site ({origin}) may not use this session")


class WebAuth:
    """Sessions and one-time codes of one web server over ``host.tokens``."""

    def __init__(self, host) -> None:
        self.host = host
        self.sessions: dict[str, Session] = {}
        self.codes: dict[str, tuple[Principal, float]] = {}
        self.link_ttl = LINK_TTL

    # ---- making sessions -----------------------------------------------------------------
    def token_principal(self, secret: object) -> Principal:
        """The principal of a live token; ``Unauthenticated`` otherwise."""
        principal = self.host.tokens.principal_for(secret) if isinstance(secret, str) else None
        if principal is None:
            raise Unauthenticated("unknown, expired or revoked token")
        return principal

    def new_session(self, principal: Principal, token: str | None = None) -> tuple[str, Session]:
        """A new session id and its ``Session``."""
        self._expire()
        session_id = secrets.token_urlsafe(32)
        session = Session(principal, expires=time.time() + SESSION_TTL, token=token)
        self.sessions[session_id] = session
        return session_id, session

    def new_code(self, principal: Principal, ttl: float | None = None) -> str:
        """A one-time login code for ``principal``, good for ``ttl`` (default
        ``link_ttl``) seconds."""
        self._expire()
        code = secrets.token_urlsafe(32)
        self.codes[code] = (principal, time.time() + (ttl or self.link_ttl))
        return code

    def redeem(self, code: str) -> Principal:
        """The principal of a one-time code, which is spent; ``Unauthenticated`` if unknown,
        used or expired."""
        entry = self.codes.pop(code, None)
        if entry is None or entry[1] <= time.time():
            raise Unauthenticated("this sign-in link is unknown, used already or expired: "
                                  "ask for a new one with `zriver web`")
        return entry[0]

    def end(self, session_id: str | None) -> None:
        self.sessions.pop(session_id or "", None)

    # ---- checking requests ---------------------------------------------------------------
    def caller(self, method: str, headers, cookies) -> Caller:
        """Who sent a request (``Unauthenticated``), and ``Forbidden`` for a state-changing
        cookie request without the right CSRF header."""
        bearer = headers.get("Authorization", "")
        if bearer.lower().startswith("bearer "):
            return Caller(self.token_principal(bearer[7:].strip()))
        session_id = cookies.get(COOKIE)
        session = self.session(session_id)
        if headers.get("Upgrade", "").lower() == "websocket":
            check_origin(headers)
        if method not in SAFE_METHODS:
            sent = headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(sent.encode(), session.csrf.encode()):
                raise Forbidden(f"missing or wrong {CSRF_HEADER} header (GET /api/v1/session "
                                f"gives it): state-changing requests with a session need it")
        return Caller(session.principal, session, session_id)

    def session(self, session_id: str | None) -> Session:
        """The live session ``session_id``; ``Unauthenticated`` otherwise."""
        session = self.sessions.get(session_id or "")
        if session is None or session.expires <= time.time():
            self.end(session_id)
            raise Unauthenticated("not signed in: sign in with a token (`zriver token "
                                  "create`), or a link from `zriver web`")
        if session.token is not None and self.host.tokens.principal_for(session.token) is None:
            self.end(session_id)
            raise Unauthenticated("the token this session was made from is revoked or expired")
        if session.token is None and not self.key_live(session.principal):
            self.end(session_id)
            raise Unauthenticated("the key this session was signed in with is revoked")
        return session

    def key_live(self, principal: Principal) -> bool:
        """Whether the CURVE key a one-time link was made for still stands for ``principal``
        (its name, live, the same role); always with ``security = "none"``."""
        if not self.host.secure:
            return True
        entry = self.host.keys.table.entry(principal.name)
        return entry is not None and entry.live and entry.role == principal.role

    def _expire(self) -> None:
        now = time.time()
        for code in [c for c, (_, until) in self.codes.items() if until <= now]:
            del self.codes[code]
        for sid in [s for s, session in self.sessions.items() if session.expires <= now]:
            del self.sessions[sid]
