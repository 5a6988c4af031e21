"""Which Unix account a native task runs as on this node, and that account's ids.

``choose`` is pure: the spec's ``user`` when set (an admin asked for it; ``root`` included),
else the owner's own account when one of that name exists here and is not uid 0, else the
runner's ``task_user`` (``nobody`` by default). Never root unless asked: an owner named
``root`` (or any uid-0 alias) gets the ``task_user``, and a name that exists nowhere here is
the task's error, not a reason to fall back to anything.

``Accounts`` asks the passwd and group databases (NSS: files, LDAP, ...) and remembers each
answer, found or not, for ``ACCOUNT_TTL`` seconds: the keeper asks once per spawn, and an
account an admin adds meanwhile is seen soon after.
"""

from __future__ import annotations

import os
import pwd
import time
from dataclasses import dataclass
from typing import Callable

ACCOUNT_TTL = 5.0
"""Seconds an answer of the account databases (found or not found) is remembered."""

USER, OWNER, TASK_USER = "user", "owner", "task_user"
"""Why an account was chosen (``choose``): the spec asked, the owner's own, the default."""


@dataclass(frozen=True, slots=True)
class Account:
    """A Unix account as a task runs under it."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    """Its supplementary groups (``getgrouplist``: the primary group included)."""
    home: str

    def environment(self) -> dict[str, str]:
        """``HOME``, ``USER`` and ``LOGNAME`` as a login would set them."""
        return {"HOME": self.home, "USER": self.name, "LOGNAME": self.name}


Lookup = Callable[[str], "Account | None"]


def choose(user: str | None, owner: str, task_user: str, lookup: Lookup,
           admin: bool = False) -> tuple[str, str]:
    """The account name a task runs as, and why (``USER``, ``OWNER`` or ``TASK_USER``): the
    one asked for; else the owner's own account, unless it is root and the owner is not an
    admin; else ``task_user``."""
    if user:
        return user, USER
    if owner:
        own = lookup(owner)
        if own is not None and (own.uid != 0 or admin):
            return own.name, OWNER
    return task_user, TASK_USER


def can_switch() -> bool:
    """Whether this process can run tasks as other accounts (it runs as root)."""
    return os.geteuid() == 0


def own_name() -> str:
    """This process's account name (``uid N`` when the databases have none)."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def read_account(name: str) -> Account | None:
    """``name`` from the account databases, or ``None`` when there is no such account."""
    try:
        entry = pwd.getpwnam(name)
        groups = os.getgrouplist(entry.pw_name, entry.pw_gid)
    except (KeyError, ValueError, OSError):  # unknown, a NUL in the name, NSS trouble
        return None
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, tuple(groups), entry.pw_dir)


class Accounts:
    """``read_account`` with each answer remembered for ``ttl`` seconds."""

    def __init__(self, ttl: float = ACCOUNT_TTL, read: Lookup = read_account,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl, self._read, self._clock = ttl, read, clock
        self._known: dict[str, tuple[Account | None, float]] = {}

    def get(self, name: str) -> Account | None:
        now = self._clock()
        known = self._known.get(name)
        if known is not None and known[1] > now:
            return known[0]
        account = self._read(name)
        if len(self._known) > 4096:  # owners come and go: never grow without bound
            self._known = {k: v for k, v in self._known.items() if v[1] > now}
        self._known[name] = (account, now + self._ttl)
        return account
