"""Every error zriver reports to a person or a peer, with a stable code.

The tree::

    ZriverError (code "error")
    ├── BadRequest          "bad_request"       malformed envelope, wrong types, missing fields
    │   ├── TooLarge        "too_large"         a message over the size cap
    │   ├── UnknownOp       "unknown_op"        no handler for that op
    │   ├── BadVersion      "protocol_version"  the peer speaks another protocol version
    │   └── InvalidArgument "invalid_argument"  a value that can never be right (``4Q``, ``-1``)
    ├── NotFound            "not_found"         unknown task id, node name, ...
    ├── Impossible          "impossible"        a request no node could ever satisfy
    ├── Conflict            "conflict"          the object is not in a state that allows this
    ├── Forbidden           "forbidden"         the caller's role or key may not do this
    ├── Unavailable         "unavailable"       the host or a runner cannot be reached / timed out
    └── Internal            "internal"          a bug: the handler raised something unexpected

A server turns any ``ZriverError`` raised by a handler into an ``error`` reply carrying
``code`` and ``msg``; a client turns such a reply back into the same class with
``error_from_reply``. Codes never change meaning once released.
"""

from __future__ import annotations


class ZriverError(Exception):
    """Base of every zriver error. ``code`` is stable, ``str(err)`` is for people."""

    code = "error"


class BadRequest(ZriverError):
    code = "bad_request"


class TooLarge(BadRequest):
    code = "too_large"


class UnknownOp(BadRequest):
    code = "unknown_op"


class BadVersion(BadRequest):
    code = "protocol_version"


class InvalidArgument(BadRequest):
    code = "invalid_argument"


class NotFound(ZriverError):
    code = "not_found"


class Impossible(ZriverError):
    code = "impossible"


class Conflict(ZriverError):
    code = "conflict"


class Forbidden(ZriverError):
    code = "forbidden"


class Unavailable(ZriverError):
    code = "unavailable"


class Internal(ZriverError):
    code = "internal"


_BY_CODE = {
    cls.code: cls
    for cls in (
        ZriverError, BadRequest, TooLarge, UnknownOp, BadVersion, InvalidArgument,
        NotFound, Impossible, Conflict, Forbidden, Unavailable, Internal,
    )
}


def error_from_reply(code: str, msg: str) -> ZriverError:
    """The exception a client raises for an ``error`` reply (unknown codes map to the base)."""
    return _BY_CODE.get(code, ZriverError)(msg)
