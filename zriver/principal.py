"""Who is calling: the principal every request, publication and task carries.

This is vocabulary host, runner and client share (like ``zriver.lifecycle``). A principal is
the name and role bound to the CURVE key a peer authenticated with (``zriver keys``); with
``security = "none"`` the host makes one up from what the peer says about itself.

Roles, from least to most trusted:

* ``runner``: a node's agent; its name is the node name bound to its key, and it may call only
  the runner ops, for that node only;
* ``user``: submits, lists and views tasks and nodes, and acts on its own tasks and envs only;
* ``admin``: everything (drain, keys, any task, any env, root and host mounts in tasks).
"""

from __future__ import annotations

from dataclasses import dataclass

RUNNER = "runner"
USER = "user"
ADMIN = "admin"
ROLES = (RUNNER, USER, ADMIN)
PEOPLE = frozenset({USER, ADMIN})
"""The roles of people (clients), as opposed to nodes."""


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. ``key`` is its z85 public key ("" with security off)."""

    name: str
    role: str
    key: str = ""

    @property
    def node(self) -> str | None:
        """The node a runner principal speaks for; ``None`` for people."""
        return self.name if self.role == RUNNER else None

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN

    def may_act_on(self, owner: str) -> bool:
        """Whether this principal may act on something ``owner`` owns (a task, an env)."""
        return self.role == ADMIN or (self.role == USER and owner == self.name)
