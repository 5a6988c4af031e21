"""What an extension of the host is: an object the host owns that brings its ops and schema.

Environments (``zriver.host.envs``) and keys (``zriver.host.keytable``) are extensions; the
VPS and web front ends will be too. The host builds its op table and its store's migration
list from the core and every extension, explicitly, at construction: no module-level state,
no table created outside ``PRAGMA user_version`` migrations, no SQL outside a store class.

Lifecycle: ``migrations`` and ``register(ops)`` before the store opens; ``attach(service)``
once the store is open and before the sockets serve; ``close()`` when the host stops.
"""

from __future__ import annotations

from typing import Any, Protocol

from zriver.host.ops import OpTable
from zriver.host.store import Migration


class Extension(Protocol):
    name: str
    migrations: list[Migration]

    def register(self, ops: OpTable) -> None:
        """Add this extension's ops (with the roles that may call them) to ``ops``."""

    def attach(self, service: Any) -> None:
        """Called once the store is open: keep what the ops need (the service, records)."""

    async def close(self) -> None:
        """Release what ``attach`` took (threads, Docker clients)."""
