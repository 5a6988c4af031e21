"""The wire format: one msgpack envelope for every request, reply, command and event.

Request / command:  ``{"v": PROTOCOL_VERSION, "op": "task.submit", "rid": 7, "body": {...}}``
Reply (success):     ``{"v": ..., "op": "ok", "rid": 7, "body": {...}}``
Reply (failure):     ``{"v": ..., "op": "error", "rid": 7, "code": "not_found", "msg": "..."}``

ROUTER/DEALER frames carry exactly one envelope; the ROUTER side adds the peer identity frame.
PUB/SUB messages are two frames: the topic (``hb.<node>``, ``log.<task>``, ``evt.task.<id>``,
``evt.node.<name>``) and one envelope whose ``op`` repeats the kind of event.

``decode`` is the one gate every received frame passes: size cap, msgpack well-formedness,
envelope shape and protocol version. It raises a ``BadRequest`` subclass and never anything else,
so a server can always answer the sender with a stable code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack

from zriver import PROTOCOL_VERSION
from zriver.errors import BadRequest, BadVersion, TooLarge

DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024
"""Application-level cap: a larger frame gets a ``too_large`` error reply."""

HARD_LIMIT_FACTOR = 4
"""libzmq's MAXMSGSIZE is set to this multiple of the cap: past it the connection is dropped."""

OK = "ok"
ERROR = "error"


@dataclass(slots=True)
class Envelope:
    """One decoded message. ``body`` is always a dict (empty when absent)."""

    op: str
    rid: int = 0
    body: dict[str, Any] = field(default_factory=dict)
    code: str = ""
    msg: str = ""

    @property
    def is_reply(self) -> bool:
        return self.op in (OK, ERROR)


def encode(op: str, rid: int = 0, body: dict[str, Any] | None = None) -> bytes:
    """Pack a request, command or event envelope."""
    return msgpack.packb({"v": PROTOCOL_VERSION, "op": op, "rid": rid, "body": body or {}})


def encode_ok(rid: int, body: dict[str, Any] | None = None) -> bytes:
    return msgpack.packb({"v": PROTOCOL_VERSION, "op": OK, "rid": rid, "body": body or {}})


def encode_error(rid: int, code: str, msg: str) -> bytes:
    return msgpack.packb(
        {"v": PROTOCOL_VERSION, "op": ERROR, "rid": rid, "code": code, "msg": msg}
    )


def peek_rid(frame: bytes) -> int:
    """Best-effort request id of a frame that failed to decode (0 when unknowable)."""
    try:
        obj = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except Exception:
        return 0
    rid = obj.get("rid") if isinstance(obj, dict) else None
    return rid if isinstance(rid, int) and not isinstance(rid, bool) else 0


def decode(frame: bytes, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Envelope:
    """Validate and unpack one frame; raise a ``BadRequest`` subclass on anything off."""
    if len(frame) > max_bytes:
        raise TooLarge(f"message of {len(frame)} bytes is over the {max_bytes}-byte cap")
    try:
        obj = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except Exception as exc:
        raise BadRequest(f"malformed message: not valid msgpack ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise BadRequest("malformed message: the envelope must be a map")
    version = obj.get("v")
    if version != PROTOCOL_VERSION:
        raise BadVersion(
            f"protocol version {version!r} is not supported: this side speaks version "
            f"{PROTOCOL_VERSION}; run the same zriver release on every machine"
        )
    op, rid, body = obj.get("op"), obj.get("rid", 0), obj.get("body", {})
    if not isinstance(op, str) or not op:
        raise BadRequest("malformed message: 'op' must be a non-empty string")
    if not isinstance(rid, int) or isinstance(rid, bool):
        raise BadRequest("malformed message: 'rid' must be an integer")
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise BadRequest("malformed message: 'body' must be a map")
    return Envelope(op, rid, body, str(obj.get("code", "")), str(obj.get("msg", "")))


_MISSING = object()


def arg(body: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = _MISSING):
    """Field ``name`` of ``body`` checked to be of ``kind``; ``BadRequest`` when wrong or missing.

    ``bool`` never passes for ``int`` (msgpack keeps them apart, so must we). A ``default``
    makes the field optional; ``None`` as a value counts as absent.
    """
    value = body.get(name, _MISSING)
    if value is _MISSING or value is None:
        if default is _MISSING:
            raise BadRequest(f"missing field '{name}'")
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise BadRequest(f"field '{name}' must be {_kind_name(kinds)}, not a boolean")
    if not isinstance(value, kinds):
        raise BadRequest(f"field '{name}' must be {_kind_name(kinds)}, not {type(value).__name__}")
    return value


def _kind_name(kinds: tuple[type, ...]) -> str:
    names = {int: "an integer", str: "a string", list: "a list", dict: "a map",
             float: "a number", bool: "a boolean", bytes: "bytes"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)
