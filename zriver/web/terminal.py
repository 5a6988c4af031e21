"""``GET /api/v1/terminal/{task_id}``: a shell in a running container task over a WebSocket,
through ``host.streams`` as the SSH relay's session bridge (``zriver.host.sshbridge``) does.

Who: the task's owner or an admin; the task must be a running container task (else the
socket closes at once with code 4403/4404/4409 and the reason). Query ``?cols=&rows=`` sets
the first size, ``?command=`` runs one command instead of a login shell.

Frames: binary both ways (the terminal's bytes); text frames from the browser are JSON
``{"resize": [cols, rows]}``. When the shell exits the socket closes with code 1000 and the
reason ``exit N``.

``GET /api/v1/envs/{name}/terminal``: the same, a login shell in an env's container on the
host's Docker (``zriver env shell`` in the browser): ``env.shell`` as the caller first (the
env's owner or an admin; it starts the container), then a ``docker exec`` with a TTY started
as ``zriver.dockerexec`` does for the runner's ``exec`` target.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from aiohttp import WSMsgType, web

from zriver import dockerexec
from zriver.errors import Conflict, NotFound, Unavailable, ZriverError
from zriver.host.handlers import check_owner
from zriver.principal import Principal
from zriver.web.api import CALLER, CLOSE_TIMEOUT, HOST, SOCKETS

CONTAINER_BACKEND = "docker"
CLOSE_CODES = {"forbidden": 4403, "not_found": 4404, "conflict": 4409}


def find_task(host: Any, principal: Principal, task_id: int) -> Any:
    """The running container task ``task_id`` that ``principal`` may reach, or the error."""
    task = host.tasks.get(task_id)
    if task is None:
        row = host.store.get_task(task_id)
        if row is None:
            raise NotFound(f"no task {task_id}")
        check_owner(principal, row["owner"], task_id, "reach")
        raise Conflict(f"task {task_id} has ended ({row['state']})")
    check_owner(principal, task.spec.owner, task.id, "reach")
    if task.spec.backend != CONTAINER_BACKEND:
        raise Conflict(f"task {task.id} is not a container task (backend {task.spec.backend})")
    if task.state != "running" or task.node is None:
        raise Conflict(f"task {task.id} is {task.state}, not running")
    return task


def target(task_id: int, query) -> dict[str, Any]:
    """The ``exec`` target: a TTY of ``cols`` x ``rows``, a login shell or ``command``."""
    command = query.get("command")
    return {"kind": "exec", "task": task_id,
            "command": ["sh", "-c", command] if command else None, "tty": True,
            "term": "xterm-256color", "cols": int(query.get("cols", 80)),
            "rows": int(query.get("rows", 24)), "env": {}}


async def upstream(ws: web.WebSocketResponse, stream: Any) -> None:
    """Browser -> stream: binary frames are input, text frames resize."""
    async for message in ws:
        if message.type == WSMsgType.BINARY:
            await stream.write(message.data)
        elif message.type == WSMsgType.TEXT:
            try:
                cols, rows = json.loads(message.data)["resize"]
                stream.resize(int(cols), int(rows))
            except (ValueError, KeyError, TypeError):
                pass
        elif message.type == WSMsgType.ERROR:
            break


async def downstream(ws: web.WebSocketResponse, stream: Any) -> None:
    """Stream -> browser until the stream's EOF."""
    while data := await stream.read():
        await ws.send_bytes(data)


async def terminal(request: web.Request) -> web.WebSocketResponse:
    host = request.app[HOST]
    ws = web.WebSocketResponse(heartbeat=30.0, timeout=CLOSE_TIMEOUT)
    await ws.prepare(request)
    try:
        task_id = int(request.match_info["task_id"])
        task = find_task(host, request[CALLER].principal, task_id)
        stream = await host.streams.open(task.node, target(task_id, request.query))
    except (ZriverError, ValueError) as exc:
        code = CLOSE_CODES.get(getattr(exc, "code", ""), 4400)
        await ws.close(code=code, message=str(exc)[:120].encode())
        return ws
    host.vps.touch(task_id, +1)  # an open stream keeps a VPS from its idle stop
    try:
        await bridge(request.app, ws, stream)
    finally:
        host.vps.touch(task_id, -1)
    return ws


async def env_terminal(request: web.Request) -> web.WebSocketResponse:
    """A login shell (or ``?command=``) in the env's container, bridged as ``terminal``."""
    host = request.app[HOST]
    ws = web.WebSocketResponse(heartbeat=30.0, timeout=CLOSE_TIMEOUT)
    await ws.prepare(request)
    name = request.match_info["name"]
    try:
        where = await host.call(request[CALLER].principal, "env.shell", {"name": name})
        stream = await open_env_exec(where, request.query)
    except (ZriverError, ValueError) as exc:
        code = CLOSE_CODES.get(getattr(exc, "code", ""), 4400)
        await ws.close(code=code, message=str(exc)[:120].encode())
        return ws
    await bridge(request.app, ws, stream)
    return ws


async def open_env_exec(where: dict[str, Any], query) -> dockerexec.TtyExec:
    """The TTY exec in ``env.shell``'s ``container`` on its ``docker_host`` (a unix socket)."""
    from zriver.host.envdocker import connect

    docker_host = where.get("docker_host") or os.environ.get("DOCKER_HOST", "")
    if docker_host and not docker_host.startswith("unix://"):
        raise Unavailable(f"the env shell needs the host's Docker on a unix socket, "
                          f"not {docker_host}")
    command = query.get("command")
    client = await asyncio.to_thread(connect, docker_host)
    what = f"env {where['name']}"
    try:
        return await dockerexec.TtyExec.open(
            client.api, dockerexec.docker_socket(docker_host), where["container"], what,
            ["sh", "-c", command] if command else None, "xterm-256color",
            int(query.get("cols", 80)), int(query.get("rows", 24)))
    except (dockerexec.ExecRefused, OSError) as exc:
        raise Conflict(str(exc)) from None


async def bridge(app: web.Application, ws: web.WebSocketResponse, stream: Any) -> None:
    """Move bytes until either side ends; the stream is always closed after."""
    app[SOCKETS].add(ws)
    up, down = (asyncio.ensure_future(upstream(ws, stream)),
                asyncio.ensure_future(downstream(ws, stream)))
    try:
        await asyncio.wait([up, down], return_when=asyncio.FIRST_COMPLETED)
        if down.done() and not ws.closed:
            result = await stream.wait_closed()
            await ws.close(code=1000, message=f"exit {result.get('exit')}".encode())
    except (ZriverError, OSError):
        pass
    finally:
        up.cancel()
        down.cancel()
        stream.close()
        app[SOCKETS].discard(ws)
        if not ws.closed:
            await ws.close()
