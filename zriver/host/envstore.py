"""The environments' tables in the host's database: their migration and all their SQL.

* ``envs(name, source, base_image, container, config, created_at, owner)``
* ``env_versions(name, version, sha256, size, image_id, archive, message, created_at)``

Writes run inside the host's open transaction (the caller opens it with ``service.begin()``)
and each group of them in a SAVEPOINT, so a failed step changes nothing.
"""

from __future__ import annotations

from typing import Any

import msgpack

from zriver.host.store import Migration, Store

MIGRATIONS = [
    # Tables an earlier release created outside the migrations are adopted as they are.
    Migration(4, "envs", """
    CREATE TABLE IF NOT EXISTS envs(
        name TEXT PRIMARY KEY,
        source TEXT NOT NULL,
        base_image TEXT NOT NULL,
        container TEXT,
        config BLOB NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE IF NOT EXISTS env_versions(
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size INTEGER NOT NULL,
        image_id TEXT NOT NULL,
        archive TEXT NOT NULL,
        message TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        PRIMARY KEY(name, version)
    );
    ALTER TABLE envs ADD COLUMN owner TEXT NOT NULL DEFAULT '';
    """),
]
VERSION_KEYS = ("version", "sha256", "size", "image_id", "archive", "message", "created_at")


class EnvRecords:
    """Reads and writes of the env tables on the host's ``Store`` connection."""

    def __init__(self, store: Store) -> None:
        self.conn = store.conn

    def env(self, name: str) -> dict[str, Any] | None:
        rows = self.conn.execute(
            "SELECT name, source, base_image, container, config, created_at, owner FROM envs "
            "WHERE name=?", (name,)).fetchall()
        if not rows:
            return None
        name, source, base, container, config, created, owner = rows[0]
        return {"name": name, "source": source, "base_image": base, "container": container,
                "config": msgpack.unpackb(config, raw=False), "created_at": created,
                "owner": owner}

    def names(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT name FROM envs ORDER BY name")]

    def versions(self, name: str) -> list[dict[str, Any]]:
        """Versions of ``name``, newest first."""
        rows = self.conn.execute(
            "SELECT version, sha256, size, image_id, archive, message, created_at FROM "
            "env_versions WHERE name=? ORDER BY created_at DESC, rowid DESC", (name,)).fetchall()
        return [dict(zip(VERSION_KEYS, row)) for row in rows]

    def version_digest(self, name: str, version: str) -> str | None:
        rows = self.conn.execute("SELECT sha256 FROM env_versions WHERE name=? AND version=?",
                                 (name, version)).fetchall()
        return rows[0][0] if rows else None

    def add_env(self, name: str, source: str, image: str, container: str, config: dict,
                created_at: float, owner: str) -> None:
        with self.conn:
            self.conn.execute(
                "INSERT INTO envs(name, source, base_image, container, config, created_at, owner)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (name, source, image, container, msgpack.packb(config), created_at, owner))

    def add_version(self, name: str, row: dict[str, Any]) -> None:
        with self.conn:
            self.conn.execute(
                "INSERT OR REPLACE INTO env_versions(name, version, sha256, size, image_id, "
                "archive, message, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (name, *(row[key] for key in VERSION_KEYS)))

    def remove_versions(self, name: str, versions: list[str]) -> None:
        with self.conn:
            for version in versions:
                self.conn.execute("DELETE FROM env_versions WHERE name=? AND version=?",
                                  (name, version))

    def remove_env(self, name: str) -> None:
        with self.conn:
            self.conn.execute("DELETE FROM envs WHERE name=?", (name,))

    def set_container(self, name: str, container: str) -> None:
        with self.conn:
            self.conn.execute("UPDATE envs SET container=? WHERE name=?", (container, name))
