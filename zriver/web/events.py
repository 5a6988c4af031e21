"""``GET /api/v1/events``: the host's events over a WebSocket, as JSON text messages
``{"topic", "op", "body"}``.

Forwarded: ``evt.task.<id>`` and the summary of a big submit ``evt.batch.<id>`` (a user: only
their own tasks', by the event's ``owner``),
``evt.node.<name>`` and heartbeats ``hb.<node>`` (everyone). Log chunks (``log.<id>``) are not
sent: the page reads logs through ``/api/v1/tasks/{id}/logs``. Events are queued per socket
(at most ``QUEUE`` of them): a client that falls that far behind is closed (code 1008) and
reconnects.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import WSMsgType, web

from zriver.errors import ZriverError
from zriver.principal import Principal
from zriver.protocol import decode
from zriver.web.api import CALLER, CLOSE_TIMEOUT, HOST, SOCKETS, to_json

PREFIXES = (b"evt.", b"hb.")
QUEUE = 10_000


def visible(principal: Principal, topic: str, body: dict[str, Any]) -> bool:
    """Whether ``principal`` may see the event ``topic``/``body``: task events (their owner
    and admins), node events and heartbeats (everyone); nothing else (a new kind of event is
    not shown until someone says who may see it)."""
    if topic.startswith(("evt.task.", "evt.batch.")):
        return principal.is_admin or body.get("owner") == principal.name
    return topic.startswith(("evt.node.", "hb."))


class EventSocket:
    """One events WebSocket: bus listeners -> a bounded queue -> the socket."""

    def __init__(self, host: Any, principal: Principal) -> None:
        self.host = host
        self.principal = principal
        self.queue: asyncio.Queue = asyncio.Queue(QUEUE)
        self.overflow = False

    def on_event(self, topic: bytes, frame: bytes) -> None:
        try:
            env = decode(frame, self.host.settings.max_message_bytes)
        except ZriverError:
            return
        name = topic.decode(errors="replace")
        if not visible(self.principal, name, env.body):
            return
        try:
            self.queue.put_nowait({"topic": name, "op": env.op, "body": env.body})
        except asyncio.QueueFull:
            self.overflow = True

    async def pump(self, ws: web.WebSocketResponse) -> None:
        """Send queued events until the socket closes or the client falls behind."""
        while not ws.closed:
            if self.overflow:
                await ws.close(code=1008, message=b"too far behind: reconnect")
                return
            message = await self.queue.get()
            if self.overflow:
                continue
            await ws.send_str(json.dumps(message, default=to_json))


async def events(request: web.Request) -> web.WebSocketResponse:
    host = request.app[HOST]
    ws = web.WebSocketResponse(heartbeat=30.0, timeout=CLOSE_TIMEOUT)
    await ws.prepare(request)
    sock = EventSocket(host, request[CALLER].principal)
    unsubscribe = [host.bus.subscribe(prefix, sock.on_event) for prefix in PREFIXES]
    request.app[SOCKETS].add(ws)
    pump = asyncio.ensure_future(sock.pump(ws))
    try:
        async for message in ws:  # the client sends nothing we need; this waits for close
            if message.type == WSMsgType.ERROR:
                break
    finally:
        for stop in unsubscribe:
            stop()
        pump.cancel()
        request.app[SOCKETS].discard(ws)
    return ws
