"""``zriver token create|list|revoke``: bearer tokens for the web dashboard and HTTP API
(``Authorization: Bearer TOKEN``, or sign in on the page with it), and ``zriver web``."""

from __future__ import annotations

import os
import sys
import time
import webbrowser

from zriver.client.registry import JSON, Context, arg, command
from zriver.client.render import age, as_json, table
from zriver.sizes import format_duration


@command("token create", "make a token for the web dashboard and HTTP API (shown once)",
         arg("--role", choices=["user", "admin"], default="user",
             help="the token's role (admin tokens: admins only; default user)"),
         arg("--expires", help="lifetime, e.g. 30d, 12h (default: never)"),
         arg("--name", help="the token's name (default: YOU-xxxxxx)"), JSON)
def token_create(ctx: Context, args) -> int:
    body = {"role": args.role}
    if args.expires:
        body["expires"] = args.expires
    if args.name:
        body["name"] = args.name
    reply = ctx.client.call("token.create", body)
    if args.json:
        ctx.print(as_json(reply))
        return 0
    until = (f", expires in {format_duration(reply['expires_at'] - reply['created_at'])}"
             if reply.get("expires_at") else "")
    ctx.print(f"token {reply['name']} ({reply['role']}, for {reply['owner']}{until}); "
              f"it is shown only now:")
    ctx.print(reply["token"])
    return 0


@command("token list", "your web API tokens (an admin: everyone's); never the secrets", JSON)
def token_list(ctx: Context, args) -> int:
    tokens = ctx.client.call("token.list", {})["tokens"]
    if args.json:
        ctx.print(as_json(tokens))
        return 0
    ctx.print(table(["NAME", "OWNER", "ROLE", "CREATED", "EXPIRES", "STATE"],
                    [[t["name"], t["owner"], t["role"], age(t["created_at"]) + " ago",
                      _expires(t["expires_at"]), "revoked" if t["revoked"] else "live"]
                     for t in tokens]))
    return 0


def _expires(at: float | None) -> str:
    if at is None:
        return "never"
    return f"in {format_duration(at - time.time())}" if at > time.time() else "expired"


@command("token revoke", "revoke a web API token (it is refused from its next request)",
         arg("name", help="as `zriver token list` shows it"))
def token_revoke(ctx: Context, args) -> int:
    reply = ctx.client.call("token.revoke", {"name": args.name})
    ctx.print(f"revoked token {reply['name']} of {reply['owner']}")
    return 0


@command("web", "open the web dashboard, signed in (prints the link where no browser is)",
         arg("--print", dest="print_only", action="store_true",
             help="print the one-time link instead of opening a browser"))
def web(ctx: Context, args) -> int:
    url = reachable(ctx.client.call("web.login_link", {})["url"], ctx.client.endpoint)
    if args.print_only or not _open(url):
        ctx.print(f"open this one-time sign-in link (valid a few minutes): {url}")
    else:
        ctx.print(f"opened the dashboard in your browser ({url.split('/login')[0]})")
    return 0


LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


def reachable(url: str, endpoint: str) -> str:
    """``url`` with the host this client reached the cluster at, when the host's own idea
    of its address is loopback (a host bound to all addresses says 127.0.0.1) and the
    client's is not: ``http://127.0.0.1:8624/x`` via ``tcp://lab1:8620`` -> ``http://lab1:8624/x``."""
    scheme, rest = url.split("://", 1)
    where, _, path = rest.partition("/")
    host, _, port = where.rpartition(":")
    reached = endpoint.split("://", 1)[-1].rpartition(":")[0]
    if host in LOOPBACK and reached and reached not in LOOPBACK and reached != "*":
        return f"{scheme}://{reached}:{port}/{path}"
    return url


def _open(url: str) -> bool:
    """Whether a graphical browser took ``url``. On Linux without ``DISPLAY`` or
    ``WAYLAND_DISPLAY`` (an SSH session) none is tried: a text browser would take over the
    terminal."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY")
                                                 or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        return bool(webbrowser.get().open(url))
    except Exception:  # webbrowser.Error, or a browser that failed to start
        return False
