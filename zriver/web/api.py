"""The JSON API under ``/api/v1``: each route is one op of the host, called as the signed-in
principal (``host.call``), so roles, ownership and durability are the core's.

Replies are the op replies, with the same field names as the CLI's ``--json`` (bytes, such
as a log slice's ``data``, as UTF-8 text with bad bytes replaced). Errors are
``{"error": {"code", "message"}}`` with the HTTP status of ``STATUS`` (500 for a code not
listed). Request bodies are JSON objects; anything else is ``bad_request``.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from zriver.errors import BadRequest, InvalidArgument, ZriverError
from zriver.web.auth import COOKIE, Caller

STATUS = {"bad_request": 400, "invalid_argument": 400, "unknown_op": 400,
          "protocol_version": 400, "impossible": 400, "unauthenticated": 401,
          "forbidden": 403, "not_found": 404, "conflict": 409, "too_large": 413,
          "unavailable": 503, "internal": 500}
"""HTTP status by stable error code."""
HOST = web.AppKey("host", object)
"""The ``Host`` an application serves."""
AUTH = web.AppKey("auth", object)
"""Its ``WebAuth``."""
SOCKETS = web.AppKey("sockets", set)
"""Its open WebSockets (closed when the server stops)."""
CLOSE_TIMEOUT = 2.0
"""Seconds a WebSocket waits for the client's answer to its close (the host's stop waits)."""
CALLER = web.RequestKey("caller", Caller) if hasattr(web, "RequestKey") else "caller"
"""A request's ``Caller`` (set by the server's ``authenticate`` middleware)."""


def to_json(value: Any) -> Any:
    """``json.dumps`` default: bytes as text, sets and tuples as lists."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


def reply(body: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(body, default=to_json), status=status,
                        content_type="application/json")


def error_reply(code: str, message: str) -> web.Response:
    """The JSON error shape with the status of ``code``."""
    return reply({"error": {"code": code, "message": message}}, STATUS.get(code, 500))


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object (``{}`` when empty); ``BadRequest`` for anything else."""
    text = await request.text()
    if not text.strip():
        return {}
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def caller(request: web.Request) -> Caller:
    return request[CALLER]


async def call(request: web.Request, op: str, body: dict[str, Any]) -> web.Response:
    """Run ``op`` as the request's principal and answer its reply as JSON."""
    host = request.app[HOST]
    return reply(await host.call(caller(request).principal, op, body))


def int_param(value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise InvalidArgument(f"{what} must be an integer, not {value!r}") from None


def task_id(request: web.Request) -> int:
    return int_param(request.match_info["id"], "a task id")


# ---- session ---------------------------------------------------------------------------------
async def get_session(request: web.Request) -> web.Response:
    """``{"name", "role", "csrf"}`` (``csrf`` is null for a bearer token)."""
    who = caller(request)
    return reply({"name": who.principal.name, "role": who.principal.role,
                  "csrf": who.session.csrf if who.session else None})


async def login(request: web.Request) -> web.Response:
    """``{"token"}`` -> a session cookie and ``{"name", "role", "csrf"}``."""
    auth = request.app[AUTH]
    secret = (await json_body(request)).get("token")
    principal = auth.token_principal(secret)
    session_id, session = auth.new_session(principal, token=secret)
    response = reply({"name": principal.name, "role": principal.role, "csrf": session.csrf})
    set_cookie(request, response, session_id)
    return response


def set_cookie(request: web.Request, response: web.StreamResponse, session_id: str) -> None:
    """The session cookie: HttpOnly, SameSite=Strict, Secure over https."""
    response.set_cookie(COOKIE, session_id, httponly=True, samesite="Strict", path="/",
                        secure=request.secure)


async def logout(request: web.Request) -> web.Response:
    request.app[AUTH].end(caller(request).session_id)
    response = reply({"signed_out": True})
    response.del_cookie(COOKIE, path="/")
    return response


# ---- nodes, tasks, vps, envs, usage -------------------------------------------------------
async def list_nodes(request: web.Request) -> web.Response:
    return await call(request, "node.list", {})


async def node_action(request: web.Request) -> web.Response:
    action = request.match_info["action"]
    body = await json_body(request)
    return await call(request, f"node.{action}", {**body, "name": request.match_info["name"]})


def list_body(query) -> dict[str, Any]:
    """The ``task.list`` body of ``?state=&owner=&node=&name=&batch=&limit=&before=``
    (``state``: a comma list; ``before``: ids below it, newest first). The reply is one page
    (``limit``: 200 by default, at most 1,000) with ``next`` (the ``before`` of the following
    page, null on the last) and ``more`` (rows beyond it; ``more_exact`` false when capped)."""
    body: dict[str, Any] = {}
    if query.get("state"):
        body["states"] = [s for s in query["state"].split(",") if s]
    for name in ("owner", "node", "name"):
        if query.get(name):
            body[name] = query[name]
    for name in ("batch", "limit", "before"):
        if query.get(name):
            body[name] = int_param(query[name], name)
    return body


async def list_tasks(request: web.Request) -> web.Response:
    return await call(request, "task.list", list_body(request.query))


async def task_counts(request: web.Request) -> web.Response:
    """``task.counts`` of ``?state=a,b&owner=&batch=`` (tasks per state)."""
    body = {key: value for key, value in list_body(request.query).items()
            if key in ("states", "owner", "batch")}
    return await call(request, "task.counts", body)


async def submit(request: web.Request) -> web.Response:
    return await call(request, "task.submit", await json_body(request))


async def get_task(request: web.Request) -> web.Response:
    return await call(request, "task.get", {"id": task_id(request)})


async def task_action(request: web.Request) -> web.Response:
    body = await json_body(request)
    return await call(request, f"task.{request.match_info['action']}",
                      {**body, "id": task_id(request)})


async def task_logs(request: web.Request) -> web.Response:
    body: dict[str, Any] = {"id": task_id(request),
                            "stream": request.query.get("stream", "stdout")}
    for name in ("offset", "limit"):
        if request.query.get(name):
            body[name] = int_param(request.query[name], name)
    return await call(request, "task.logs", body)


async def list_vps(request: web.Request) -> web.Response:
    return await call(request, "vps.list", {})


async def vps_action(request: web.Request) -> web.Response:
    body = await json_body(request)
    return await call(request, f"vps.{request.match_info['action']}",
                      {**body, "id": task_id(request)})


async def list_envs(request: web.Request) -> web.Response:
    return await call(request, "env.list", {})


async def usage(request: web.Request) -> web.Response:
    body: dict[str, Any] = {}
    if request.query.get("by"):
        body["by"] = request.query["by"]
    if request.query.get("since"):
        body["since"] = float(int_param(request.query["since"], "since"))
    return await call(request, "usage.report", body)


async def any_op(request: web.Request) -> web.Response:
    """The escape hatch: any op the principal's role may call, body as the op's."""
    return await call(request, request.match_info["op"], await json_body(request))


ROUTES = [
    ("GET", "/api/v1/session", get_session),
    ("POST", "/api/v1/login", login),
    ("POST", "/api/v1/logout", logout),
    ("GET", "/api/v1/nodes", list_nodes),
    ("POST", "/api/v1/nodes/{name}/{action:drain|undrain}", node_action),
    ("GET", "/api/v1/tasks", list_tasks),
    ("GET", "/api/v1/counts", task_counts),
    ("POST", "/api/v1/tasks", submit),
    ("GET", "/api/v1/tasks/{id}", get_task),
    ("POST", "/api/v1/tasks/{id}/{action:kill|pause|resume}", task_action),
    ("GET", "/api/v1/tasks/{id}/logs", task_logs),
    ("GET", "/api/v1/vps", list_vps),
    ("POST", "/api/v1/vps/{id}/{action:stop|restart}", vps_action),
    ("GET", "/api/v1/envs", list_envs),
    ("GET", "/api/v1/usage", usage),
    ("POST", "/api/v1/ops/{op}", any_op),
]
"""(method, path, handler) of every JSON route; ``openapi.py`` describes the same list."""
PUBLIC_PATHS = frozenset({"/api/v1/login", "/api/v1/openapi.json", "/login", "/",
                          "/favicon.ico"})
"""Paths answered without a session (the page itself signs in through the API)."""


def add_routes(app: web.Application) -> None:
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)


def error_of(exc: ZriverError) -> web.Response:
    return error_reply(exc.code, str(exc))
