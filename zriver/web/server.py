"""The host's web front end: the dashboard page, the JSON API, its WebSockets, ``/metrics``.

``WebServer(host)`` is an aiohttp ``Application`` run in the host's event loop, started by
``Host.start`` (after the SSH relay) unless ``web_port = -1`` and stopped by ``Host.stop``.
It reaches the host core only through ``host.call`` and ``host.bus``.

Every path but the page shell (``/``, ``/static/...``), ``/login`` (one-time links),
``POST /api/v1/login`` and ``/api/v1/openapi.json`` needs a session or a bearer token
(``zriver.web.auth``); ``/metrics`` too (Prometheus: ``authorization: {credentials: TOKEN}``).
Request bodies over ``MAX_BODY`` bytes are refused with ``too_large`` (413).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from zriver.errors import Unavailable, ZriverError
from zriver.principal import Principal
from zriver.web import api, openapi
from zriver.web.api import CALLER, AUTH, HOST, SOCKETS
from zriver.web.auth import WebAuth
from zriver.web.events import events
from zriver.web.terminal import env_terminal, terminal

log = structlog.get_logger("zriver.web")

STATIC = Path(__file__).parent / "static"
MAX_BODY = 1 << 20
OPEN_PREFIXES = ("/static/",)


@web.middleware
async def errors(request: web.Request, handler) -> web.StreamResponse:
    """Every error as ``{"error": {"code", "message"}}`` with its status."""
    try:
        return await handler(request)
    except ZriverError as exc:
        return api.error_of(exc)
    except web.HTTPRequestEntityTooLarge:
        return api.error_reply("too_large", f"the request body is over {MAX_BODY} bytes: send "
                                            f"less at once (a submit of many tasks: one "
                                            f"'sweep' with span words, or several submits)")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "bad_request"}.get(exc.status, "bad_request")
        return api.error_reply(code, f"{request.method} {request.path}: {exc.reason}")
    except Exception as exc:  # a bug: answer, log, keep serving
        log.exception("web.handler_crashed", path=request.path)
        return api.error_reply("internal", f"internal error: {exc!r}")


@web.middleware
async def authenticate(request: web.Request, handler) -> web.StreamResponse:
    """Put the request's ``Caller`` in ``request[CALLER]`` or refuse it (401/403)."""
    if request.path in api.PUBLIC_PATHS or request.path.startswith(OPEN_PREFIXES):
        return await handler(request)
    request[CALLER] = request.app[AUTH].caller(request.method, request.headers,
                                                   request.cookies)
    return await handler(request)


async def index(request: web.Request) -> web.StreamResponse:
    page = STATIC / "index.html"
    if not page.is_file():
        raise Unavailable("the dashboard page is not in this build")
    return web.FileResponse(page, headers={"Cache-Control": "no-cache"})


async def one_time_login(request: web.Request) -> web.StreamResponse:
    """``/login?code=``: spend the code, set the session cookie, go to the page."""
    auth = request.app[AUTH]
    principal = auth.redeem(request.query.get("code", ""))
    session_id, _ = auth.new_session(principal)
    response = web.HTTPFound("/")
    api.set_cookie(request, response, session_id)
    raise response


async def openapi_json(request: web.Request) -> web.Response:
    return api.reply(openapi.document())


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text from ``zriver.web.metrics.render(host)``; 503 while it is missing."""
    try:
        from zriver.web.metrics import render
    except ImportError:
        raise Unavailable("metrics are not in this build yet (zriver.web.metrics)") from None
    return web.Response(text=render(request.app[HOST]),
                        content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


def make_app(host: Any, auth: WebAuth) -> web.Application:
    """The application: middlewares, the API, the WebSockets, the page and its files."""
    app = web.Application(middlewares=[errors, authenticate], client_max_size=MAX_BODY)
    app[HOST], app[AUTH], app[SOCKETS] = host, auth, set()
    api.add_routes(app)
    app.router.add_get("/api/v1/openapi.json", openapi_json)
    app.router.add_get("/api/v1/events", events)
    app.router.add_get("/api/v1/terminal/{task_id}", terminal)
    app.router.add_get("/api/v1/envs/{name}/terminal", env_terminal)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/login", one_time_login)
    app.router.add_get("/", index)
    if STATIC.is_dir():
        app.router.add_static("/static/", STATIC, follow_symlinks=False)
    return app


class WebServer:
    """The web front end of one host: ``start``, ``stop``, ``login_link``."""

    def __init__(self, host: Any) -> None:
        self.host = host
        self.auth = WebAuth(host)
        self.app = make_app(host, self.auth)
        self.url = ""
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self, address: str, port: int) -> str:
        """Listen on ``address:port`` (0: any free port); returns ``http://ADDR:PORT``."""
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, address, port, reuse_address=True)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        shown = "127.0.0.1" if address in ("0.0.0.0", "*", "") else address
        self.url = f"http://{shown}:{self.port}"
        log.info("web.started", url=self.url)
        return self.url

    async def stop(self) -> None:
        """Close every WebSocket, then the server."""
        await asyncio.gather(*(ws.close(code=1001, message=b"the host is stopping")
                               for ws in list(self.app[SOCKETS])), return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def login_link(self, principal: Principal, ttl: float | None = None) -> str:
        """A one-time sign-in URL for ``principal``, good for ``ttl`` seconds (default
        ``auth.link_ttl``)."""
        return f"{self.url}/login?code={self.auth.new_code(principal, ttl)}"
