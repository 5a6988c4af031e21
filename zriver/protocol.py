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

import functools
import math
import itertools
from dataclasses import dataclass, field
from typing import Any

import msgpack

from zriver import PROTOCOL_VERSION
from zriver.errors import BadRequest, BadVersion, InvalidArgument, TooLarge

DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024
"""Application-level cap: a larger frame gets a ``too_large`` error reply."""

TOO_LARGE_HINT = ("send less at once (a submit of many tasks: send the sweep as spans, "
                  "`zriver submit -- cmd span:{1..N}`, which the host expands, or split it "
                  "into several submits)")
"""What a ``too_large`` refusal tells the sender to do."""

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


def pack(env: Envelope) -> bytes:
    """The frame of ``env`` (what ``encode``, ``encode_ok`` or ``encode_error`` makes of it):
    senders that queue envelopes as objects (the host, the in-process link of ``zriver up``)
    encode only where a socket is the next hop."""
    if env.op == ERROR:
        return encode_error(env.rid, env.code, env.msg)
    return msgpack.packb({"v": PROTOCOL_VERSION, "op": env.op, "rid": env.rid,
                          "body": env.body or {}})


MAX_ARRAY_LEN = 1 << 17
"""Most elements one msgpack array may have (a submit holds at most 100,000 tasks)."""
MAX_MAP_LEN = 1 << 16
"""Most entries one msgpack map may have."""
SMALL_FRAME = 1024
"""Frames up to this size are unpacked in one plain call: msgpack's own per-frame limits (no
length over the frame's size) bound them to a few MB and a few ms even when hostile."""
COUNTED_FRAME = 64 * 1024
"""Frames over this size have their containers counted before they are built."""
PEEK_BYTES = 4096
"""``peek_rid`` looks at most this far into a frame."""


def container_budget(size: int) -> int:
    """How many arrays, and separately how many maps, a frame of ``size`` bytes may hold:
    1024 plus one per 32 bytes. The densest real traffic stays under it: a batch of task
    starts has one map and one list per 50 bytes, a runner's batch of updates one map per
    44 bytes, the task list a registering runner sends one map per 32 bytes."""
    return 1024 + size // 32


def peek_rid(frame: bytes) -> int:
    """Best-effort request id of a frame that failed to decode (0 when unknowable).

    Bounded: only the first ``PEEK_BYTES`` are parsed, with small length limits, so a hostile
    frame costs microseconds here. The ``rid`` is found when it precedes any large value (as
    ``encode`` writes it)."""
    unpacker = msgpack.Unpacker(max_buffer_size=PEEK_BYTES, max_str_len=PEEK_BYTES,
                                max_bin_len=PEEK_BYTES, max_array_len=16, max_map_len=16,
                                max_ext_len=16, strict_map_key=False)
    try:
        unpacker.feed(frame[:PEEK_BYTES])
        for _ in range(min(unpacker.read_map_header(), 16)):
            if unpacker.unpack() == "rid":
                rid = unpacker.unpack()
                return rid if type(rid) is int and 0 <= rid < 1 << 63 else 0
            unpacker.skip()
    except Exception:
        return 0
    return 0


def unpack_bounded(frame: bytes, envelope: bool = False) -> Any:
    """msgpack -> Python with bounded cost; ``BadRequest`` for anything malformed or too costly.

    With ``envelope``, a frame that does not start with a map header is refused before any
    parsing. Frames over ``SMALL_FRAME`` are first walked without building anything (msgpack's
    ``skip``): every array or map must then really have the elements it claims, so no header
    can make msgpack preallocate more than the frame holds. Frames over ``COUNTED_FRAME`` then
    have their arrays and maps counted against ``container_budget`` in a pass that drops each
    one as soon as it is complete (a C-level counter, no Python call per container). Only then
    is the frame unpacked for real, with per-container length limits."""
    size = len(frame)
    if envelope and size and not _MAP_HEADER[frame[0]]:
        raise BadRequest("malformed message: the envelope must be a map")
    try:
        if size <= SMALL_FRAME:
            return msgpack.unpackb(frame, raw=False, strict_map_key=False)
        _check_complete(frame)
        if size > COUNTED_FRAME:
            _count_containers(frame, container_budget(size))
        return msgpack.unpackb(frame, raw=False, strict_map_key=False,
                               max_array_len=MAX_ARRAY_LEN, max_map_len=MAX_MAP_LEN)
    except BadRequest:
        raise
    except Exception as exc:
        raise BadRequest(f"malformed message: not valid msgpack ({type(exc).__name__}"
                         f"{': ' + str(exc)[:120] if _plain_message(exc) else ''})") from None


_MAP_HEADER = tuple(0x80 <= b <= 0x8F or b in (0xDE, 0xDF) for b in range(256))
"""First bytes that start a msgpack map (fixmap, map 16, map 32)."""


def _plain_message(exc: Exception) -> bool:
    """Whether ``str(exc)`` is a short description (``ExtraData`` and friends carry data)."""
    return type(exc) in (ValueError, TypeError)


def _check_complete(frame: bytes) -> None:
    """Walk ``frame`` without building objects: exactly one complete msgpack value."""
    unpacker = msgpack.Unpacker(max_buffer_size=len(frame))
    unpacker.feed(frame)
    try:
        unpacker.skip()
    except msgpack.OutOfData:
        raise BadRequest("malformed message: truncated msgpack") from None
    if unpacker.tell() != len(frame):
        raise BadRequest("malformed message: data after the envelope")


def _count_containers(frame: bytes, budget: int) -> None:
    """``BadRequest`` when ``frame`` holds more than ``budget`` arrays or ``budget`` maps.

    Each container is replaced by ``None`` the moment it is complete (so nothing accumulates)
    by ``next(counter, container)``: a counter yields ``budget`` Nones, then calls
    ``_over_budget``. No Python function runs per container."""
    def counter(kind: str):
        over = map(_over_budget, ((kind, budget, len(frame)),))
        return functools.partial(next, itertools.chain(itertools.repeat(None, budget), over))

    msgpack.unpackb(frame, raw=False, strict_map_key=False, list_hook=counter("arrays"),
                    object_hook=counter("maps"), max_array_len=MAX_ARRAY_LEN,
                    max_map_len=MAX_MAP_LEN)


def _over_budget(limits: tuple[str, int, int]) -> None:
    kind, budget, size = limits
    raise BadRequest(f"malformed message: more than {budget} {kind} in a message of {size} "
                     f"bytes (at most 1024 plus one per 32 bytes): send it in parts")


def decode(frame: bytes, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Envelope:
    """Validate and unpack one frame; raise a ``BadRequest`` subclass on anything off.

    Cost is bounded for any frame under ``max_bytes`` (see ``unpack_bounded``)."""
    if len(frame) > max_bytes:
        raise TooLarge(f"message of {len(frame)} bytes is over the {max_bytes}-byte cap: "
                       f"{TOO_LARGE_HINT}")
    obj = unpack_bounded(frame, envelope=True)
    if not isinstance(obj, dict):
        raise BadRequest("malformed message: the envelope must be a map")
    version = obj.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:
        _check_version(version)
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


def _check_version(version: Any) -> None:
    """Raise for a version field that is not this side's: ``BadRequest`` when it is not an
    integer at all, ``BadVersion`` when it is another (or no) version."""
    if version is not None and type(version) is not int:
        raise BadRequest(f"malformed message: the version field 'v' must be an integer, not "
                         f"{_type_name(version)}")
    raise BadVersion(
        f"protocol version {version!r} is not supported: this side speaks version "
        f"{PROTOCOL_VERSION}; run the same zriver release on every machine"
    )


_MISSING = object()
INT64 = 1 << 63
"""Integers on the wire must fit SQLite's signed 64 bits: ``-INT64 <= n < INT64``."""


def arg(body: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = _MISSING):
    """Field ``name`` of ``body`` checked to be of ``kind``; ``BadRequest`` when wrong or missing.

    ``bool`` never passes for ``int`` (msgpack keeps them apart, so must we), an integer must
    fit in 64 signed bits, and a float passing for a number must be finite. A ``default``
    makes the field optional; ``None`` as a value counts as absent.
    """
    value = body.get(name, _MISSING)
    if value is _MISSING or value is None:
        if default is _MISSING:
            raise BadRequest(f"missing field '{name}'")
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    _check_value(value, kinds, f"field '{name}'")
    return value


def arg_list(body: dict[str, Any], name: str, item: type | tuple[type, ...],
             default: Any = _MISSING, max_len: int | None = None) -> list:
    """Field ``name`` checked to be a list whose every item is of ``item`` (the same rules
    as ``arg``: no bool for int, 64-bit integers, finite floats), at most ``max_len`` long."""
    value = arg(body, name, list, default)
    if value is default:
        return value
    if max_len is not None and len(value) > max_len:
        raise InvalidArgument(f"field '{name}' has {len(value)} items; at most {max_len}")
    kinds = item if isinstance(item, tuple) else (item,)
    for index, entry in enumerate(value):
        _check_value(entry, kinds, f"item {index} of field '{name}'")
    return value


def _check_value(value: Any, kinds: tuple[type, ...], what: str) -> None:
    if isinstance(value, bool) and bool not in kinds:
        raise BadRequest(f"{what} must be {_kind_name(kinds)}, not a boolean")
    if not isinstance(value, kinds):
        raise BadRequest(f"{what} must be {_kind_name(kinds)}, not {_type_name(value)}")
    if type(value) is int and not -INT64 <= value < INT64:
        raise InvalidArgument(f"{what} is out of range (64-bit integers only)")
    if type(value) is float and not math.isfinite(value):
        raise InvalidArgument(f"{what} must be a finite number, not {value}")


_NAMES = {int: "an integer", str: "a string", list: "a list", dict: "a map",
          float: "a number", bool: "a boolean", bytes: "bytes", type(None): "nil"}


def _kind_name(kinds: tuple[type, ...]) -> str:
    return " or ".join(_NAMES.get(k, k.__name__) for k in kinds)


def _type_name(value: Any) -> str:
    return _NAMES.get(type(value), type(value).__name__)
