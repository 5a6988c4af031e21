"""The op table: every op the host answers, its handler, and the roles that may call it.

One table per host, built from the core's ops and each extension's (``Extension.register``).
``OpTable.resolve`` is the one place a role is checked: it runs before any handler, for every
front end (ZeroMQ today; the SSH relay and the web API call the same table). A handler that
also needs ownership (a user's own task) checks that itself, after the role check passed.

Two kinds of handler:

* ``core``: ``handler(core, request, body)``, pure (no I/O, no clock but ``core.now``); returns
  the reply body, or ``DEFERRED`` when it answers later through the core's effects;
* ``service``: ``handler(service, request, body)`` for ops that do I/O (Docker, files, a call
  to a runner): may return a coroutine, which the service awaits and then answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

from zriver.errors import Forbidden, UnknownOp
from zriver.principal import ADMIN, PEOPLE, RUNNER, USER, Principal

CORE = "core"
SERVICE = "service"

RUNNERS = frozenset({RUNNER})
"""Ops only a node's runner may call."""
EVERYONE = frozenset({RUNNER, USER, ADMIN})
PEOPLE_ONLY = PEOPLE
ADMINS = frozenset({ADMIN})

DEFERRED = object()
"""A handler returns this when it will answer later (a long poll, a call to a runner)."""


@dataclass(frozen=True, slots=True)
class Op:
    """One op: ``roles`` may call it; ``kind`` says how its handler is called."""

    name: str
    handler: Callable[..., Any]
    roles: frozenset[str]
    kind: str = CORE


class OpTable:
    """Op name -> ``Op``. Names are unique: registering one twice is a bug and raises."""

    def __init__(self) -> None:
        self._ops: dict[str, Op] = {}

    def add(self, name: str, handler: Callable[..., Any], roles: Iterable[str],
            kind: str = CORE) -> None:
        if name in self._ops:
            raise ValueError(f"op {name!r} is registered twice")
        if kind not in (CORE, SERVICE):
            raise ValueError(f"op {name!r}: unknown kind {kind!r}")
        self._ops[name] = Op(name, handler, frozenset(roles), kind)

    def resolve(self, principal: Principal, name: str) -> Op:
        """The op ``principal`` may call as ``name``: ``UnknownOp`` when there is none,
        ``Forbidden`` (naming the roles it needs) when the principal's role may not."""
        op = self._ops.get(name)
        if op is None:
            raise UnknownOp(f"unknown op {name!r}")
        if principal.role not in op.roles:
            raise Forbidden(f"{name} needs the role {' or '.join(sorted(op.roles))}; "
                            f"{principal.name!r} has the role {principal.role}")
        return op

    def __contains__(self, name: str) -> bool:
        return name in self._ops

    def __iter__(self):
        return iter(self._ops.values())

    def names(self) -> list[str]:
        return sorted(self._ops)
