"""``GET /api/v1/openapi.json``: an OpenAPI 3 description of ``zriver.web.api.ROUTES`` and the
WebSockets, built from the route table so it cannot drift from what is served."""

from __future__ import annotations

import re
from typing import Any

from zriver import __version__
from zriver.web.api import ROUTES, STATUS

SUMMARIES = {
    "get_session": "who is signed in, and the CSRF token for state-changing requests",
    "login": "sign in with a token (body {\"token\"}): sets the session cookie",
    "logout": "end this session",
    "list_nodes": "node.list",
    "node_action": "node.drain / node.undrain (admins)",
    "list_tasks": "task.list: one page, newest first (?state=a,b&owner=&batch=&limit=&node=&"
                  "name=&before=); the reply's next is the before of the following page, "
                  "more the rows beyond it",
    "task_counts": "task.counts: tasks per state (?state=a,b&owner=&batch=)",
    "submit": "task.submit (body as the op's)",
    "get_task": "task.get",
    "task_action": "task.kill / task.pause / task.resume (owner or admin)",
    "task_logs": "task.logs (?stream=stdout|stderr&offset=&limit=)",
    "list_vps": "vps.list",
    "vps_action": "vps.stop / vps.restart",
    "list_envs": "env.list",
    "usage": "usage.report (?by=user|node&since=)",
    "any_op": "any op the principal's role may call (body as the op's)",
}
WS_IDS = {"/api/v1/envs/{name}/terminal": "env_terminal"}
ERROR = {"type": "object", "properties": {"error": {"type": "object", "properties": {
    "code": {"type": "string", "enum": sorted(STATUS)}, "message": {"type": "string"}}}}}


def openapi_path(path: str) -> tuple[str, list[dict[str, Any]]]:
    """aiohttp's ``{action:kill|pause}`` as an OpenAPI path and its parameters."""
    params = []
    for name, pattern in re.findall(r"\{(\w+)(?::([^}]*))?\}", path):
        schema = {"type": "string", "enum": pattern.split("|")} if pattern else {"type": "string"}
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
    return re.sub(r"\{(\w+)(?::[^}]*)?\}", r"{\1}", path), params


def operation(method: str, handler: Any, params: list) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": handler.__name__, "summary": SUMMARIES.get(handler.__name__, ""),
        "parameters": params,
        "responses": {"200": {"description": "the op's reply (the CLI's --json fields)",
                              "content": {"application/json": {"schema": {"type": "object"}}}},
                      "default": {"description": "an error with its stable code",
                                  "content": {"application/json": {"schema": ERROR}}}}}
    if method == "POST":
        op["requestBody"] = {"required": False, "content": {
            "application/json": {"schema": {"type": "object"}}}}
    return op


def document() -> dict[str, Any]:
    """The OpenAPI 3.0 document."""
    paths: dict[str, dict] = {}
    for method, path, handler in ROUTES:
        name, params = openapi_path(path)
        paths.setdefault(name, {})[method.lower()] = operation(method, handler, params)
    for name, summary in (("/api/v1/events", "WebSocket: host events as JSON text messages "
                           "{topic, op, body}, filtered to what the principal may see"),
                          ("/api/v1/terminal/{task_id}", "WebSocket: a shell in a running "
                           "container task; binary frames, text {\"resize\": [cols, rows]}"),
                          ("/api/v1/envs/{name}/terminal", "WebSocket: a login shell in the "
                           "env's container on the host (env.shell: owner or admin); frames "
                           "as the task terminal's")):
        _, params = openapi_path(name)
        paths[name] = {"get": {"operationId": WS_IDS.get(name, name.split("/")[3]),
                               "summary": summary,
                               "parameters": params,
                               "responses": {"101": {"description": "switching protocols"}}}}
    return {"openapi": "3.0.3",
            "info": {"title": "zriver HTTP API", "version": __version__},
            "components": {"securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "zriver_session"}}},
            "security": [{"bearer": []}, {"session": []}],
            "paths": paths}
