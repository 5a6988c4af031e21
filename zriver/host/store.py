"""The host's database: nodes, tasks and task events in SQLite through APSW.

One connection, owned by the host's event loop thread; WAL with ``synchronous=NORMAL``.
Statements are short and the service groups every write of one loop tick into one
transaction (``with store.batch():``), so blocking here is measured in tens of microseconds
and is deliberately done on the loop. Schema changes are migrations keyed by
``PRAGMA user_version``; a newer database than this code knows is refused.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import apsw
import msgpack

from zriver import lifecycle as lc
from zriver.errors import Internal
from zriver.host.effects import WRITE_METHODS
from zriver.host.idmark import IdMark

@dataclass(frozen=True, slots=True)
class Migration:
    """Schema step ``number`` (``PRAGMA user_version`` after it), owned by ``owner`` (the core
    or an extension). Numbers are global: each is taken once, in the order they are applied."""

    number: int
    owner: str
    script: str


_CORE_SCRIPTS: dict[int, str] = {
    # 1: the first schema
    1:     """
    CREATE TABLE nodes(
        name TEXT PRIMARY KEY,
        info BLOB NOT NULL,
        state TEXT NOT NULL,
        registered_at REAL,
        last_seen REAL
    );
    CREATE TABLE tasks(
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL DEFAULT '',
        owner TEXT NOT NULL DEFAULT '',
        state TEXT NOT NULL,
        node TEXT,
        spec BLOB NOT NULL,
        alloc BLOB,
        exit_code INTEGER,
        detail TEXT NOT NULL DEFAULT '',
        submitted_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        batch_id INTEGER
    );
    CREATE INDEX tasks_unfinished ON tasks(state)
        WHERE state IN ('pending', 'assigned', 'running', 'paused');
    CREATE TABLE task_events(
        task_id INTEGER NOT NULL,
        state TEXT NOT NULL,
        at REAL NOT NULL,
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX task_events_by_task ON task_events(task_id);
    """,
    # 2: retries (attempt), drained nodes, batch and owner filters
    2: """
    ALTER TABLE tasks ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE nodes ADD COLUMN drained TEXT;
    CREATE INDEX tasks_by_batch ON tasks(batch_id) WHERE batch_id IS NOT NULL;
    CREATE INDEX tasks_by_owner ON tasks(owner);
    """,
    # 3: idempotency keys of task.submit (a resent submit returns what the first one stored)
    3: """
    CREATE TABLE submit_keys(
        key TEXT PRIMARY KEY,
        ids BLOB NOT NULL,
        batch_id INTEGER,
        at REAL NOT NULL
    );
    CREATE INDEX submit_keys_by_at ON submit_keys(at);
    """,
    # 4-9 belong to extensions (envs, keys, sshkeys, vps, tokens, history).
    # 10: an index for every filter of task.list and task.counts. An index holds the rowid
    # after its columns, so each one below also reads its rows in id order: a page (newest
    # first) is a range of it, never a sort. The unfinished-only state index is covered.
    10: """
    DROP INDEX IF EXISTS tasks_unfinished;
    CREATE INDEX tasks_by_state ON tasks(state);
    CREATE INDEX tasks_by_node ON tasks(node) WHERE node IS NOT NULL;
    CREATE INDEX tasks_by_owner_state ON tasks(owner, state);
    CREATE INDEX tasks_by_batch_state ON tasks(batch_id, state) WHERE batch_id IS NOT NULL;
    """,
}

CORE_MIGRATIONS = [Migration(number, "core", script) for number, script in _CORE_SCRIPTS.items()]
"""The core's schema steps (numbers between them belong to extensions)."""


def standalone(migrations: Sequence[Migration]) -> list[Migration]:
    """``migrations`` with each number below the highest that none of them takes filled by an
    empty step: a store opened without the host's extensions (tests, tools). A database made
    this way lacks the extensions' tables and is not for a host."""
    taken = {m.number for m in migrations}
    top = max(taken, default=0)
    return sorted([*migrations, *(Migration(n, "reserved", "SELECT 1")
                                  for n in range(1, top + 1) if n not in taken)],
                  key=lambda m: m.number)


def ordered(migrations: Sequence[Migration]) -> list[Migration]:
    """``migrations`` by number, checked to be 1..N with each number taken once."""
    steps = sorted(migrations, key=lambda m: m.number)
    numbers = [m.number for m in steps]
    if numbers != list(range(1, len(steps) + 1)):
        raise ValueError(f"migration numbers must be 1..{len(steps)} once each, got {numbers}")
    return steps


TASK_COLUMNS = (
    "id", "name", "owner", "state", "node", "spec", "alloc", "exit_code", "detail",
    "submitted_at", "started_at", "finished_at", "batch_id", "attempt",
)
_UNFINISHED = "(" + ", ".join(f"'{s}'" for s in lc.ALL_STATES if s not in lc.FINAL) + ")"
"""Every state that is not final (an ``unreachable`` task included): what the host loads back
at start."""
_PAGE = "ORDER BY id DESC LIMIT ?"
_COUNT = "SELECT count(*) FROM (SELECT 1 FROM tasks {where} LIMIT ?)"
COUNT_CAP = 10_000
"""Counts of a listing (``count_tasks``) stop here, per state: a count reads one index entry
per task counted (about 1 ms per 10,000 on a quiet machine), and a page must not cost more
with a long history than with an empty store."""
_FINAL = f"({', '.join(repr(state) for state in sorted(lc.FINAL))})"


def pack(value: Any) -> bytes:
    return msgpack.packb(value)


TaskGroup = tuple[dict[str, Any], str, str, "list[list[str]] | None"]
"""What ``insert_tasks`` stores: ``(spec, name, owner, commands)``."""


def _map_header(size: int) -> bytes:
    """The msgpack header of a map of ``size`` entries."""
    if size < 16:
        return bytes((0x80 | size,))
    if size < 1 << 16:
        return b"\xde" + size.to_bytes(2, "big")
    return b"\xdf" + size.to_bytes(4, "big")


def _specs(spec: dict[str, Any], commands: list[list[str]]) -> Iterator[bytes]:
    """``pack({"command": c, **rest})`` for each command ``c`` (``rest``: ``spec`` without
    its command), the rest packed once: the bytes are exactly what ``pack`` makes of a spec
    whose first key is ``command`` (as ``TaskSpec.to_wire`` has it)."""
    rest = {name: value for name, value in spec.items() if name != "command"}
    body = pack(rest)[len(_map_header(len(rest))):]
    head = _map_header(len(rest) + 1) + pack("command")
    packed = msgpack.Packer().pack  # one packer for all (``packb`` makes one per call)
    for command in commands:
        yield head + packed(command) + body


def unpack(blob: bytes | None) -> Any:
    return None if blob is None else msgpack.unpackb(blob, raw=False, strict_map_key=False)


def _where(states: list[str] | None, batch: int | None, owner: str | None, before: int | None,
           node: str | None, name: str | None) -> tuple[str, list]:
    """The WHERE clause (or "") and its parameters of a task listing."""
    clauses: list[str] = []
    params: list[Any] = []
    for clause, value in (("owner = ?", owner), ("batch_id = ?", batch), ("node = ?", node),
                          ("id < ?", before), ("instr(name, ?) > 0", name)):
        if value is not None:
            clauses.append(clause)
            params.append(value)
    if states:
        clauses.append(f"state IN ({', '.join('?' * len(states))})")
        params.extend(states)
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), params


class Store:
    """Plain methods over one APSW connection. Not thread-safe: one owner.

    Task updates and events are written behind: ``update_task`` merges the columns set for a
    task, ``add_event`` appends a row, and both reach SQLite in ``write_pending`` (called before
    every read and by the host right before it commits), as one UPDATE per task and one
    ``executemany`` of events. A task that starts and ends within one tick costs one UPDATE.
    """

    def __init__(self, path: str | Path,
                 migrations: Sequence[Migration] | None = None) -> None:
        """``migrations``: the host's (core and extensions); by default the core's alone
        (``standalone``)."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.migrations = ordered(migrations if migrations is not None
                                  else standalone(CORE_MIGRATIONS))
        self._updates: dict[int, dict[str, Any]] = {}
        self._events: list[tuple[int, str, float, str]] = []
        self.conn = apsw.Connection(str(path))
        self.ids = IdMark(Path(f"{path}.ids"))
        self.conn.setbusytimeout(5000)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self._migrate()

    def close(self) -> None:
        if self._updates or self._events:
            with self.batch():
                self.write_pending()
        self.conn.close()
        self.ids.close()

    def _migrate(self) -> None:
        version = self.conn.execute("PRAGMA user_version").fetchall()[0][0]
        if version > len(self.migrations):
            raise Internal(
                f"the database is at schema {version}, newer than this zriver "
                f"({len(self.migrations)}): upgrade zriver"
            )
        for step in self.migrations[version:]:
            with self.conn:
                self.conn.execute(step.script)
                self.conn.execute(f"PRAGMA user_version={step.number}")

    @property
    def schema_version(self) -> int:
        return self.conn.execute("PRAGMA user_version").fetchall()[0][0]

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """One transaction around everything written inside (nested calls join it)."""
        if self.conn.in_transaction:
            yield
            return
        with self.conn:
            yield
            self.write_pending()

    # ---- tasks -------------------------------------------------------------------------
    def insert_task(self, row: dict[str, Any]) -> int:
        """Insert a pending task (with ``row['id']`` when the caller chose it); return its id.
        ``row['spec']`` is a dict."""
        self.conn.execute(
            "INSERT INTO tasks(id, name, owner, state, spec, submitted_at, batch_id, detail)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (row.get("id"), row["name"], row["owner"], row["state"], pack(row["spec"]),
             row["submitted_at"], row.get("batch_id"), row.get("detail", "")),
        )
        task_id = self.conn.last_insert_rowid()
        self.ids.note(task_id)
        return task_id

    def insert_tasks(self, first_id: int, groups: Sequence[TaskGroup], at: float,
                     batch_id: int | None) -> None:
        """Insert pending tasks with the ids ``first_id``, ``first_id + 1``, ... and their
        ``submitted`` events, one ``executemany`` each. ``groups`` are
        ``(spec, name, owner, commands)``: with ``commands`` None one task of ``spec``, else
        one task per command, ``spec`` with that command (packed once: see ``_specs``)."""
        count = sum(1 if commands is None else len(commands) for *_, commands in groups)
        blobs = itertools.chain.from_iterable(
            [pack(spec)] if commands is None else _specs(spec, commands)
            for spec, _, _, commands in groups)
        owners = itertools.chain.from_iterable(
            itertools.repeat((name, owner), 1 if commands is None else len(commands))
            for _, name, owner, commands in groups)
        self.conn.executemany(
            "INSERT INTO tasks(id, name, owner, state, spec, submitted_at, batch_id)"
            " VALUES (?, ?, ?, 'pending', ?, ?, ?)",
            ((task_id, name, owner, blob, at, batch_id) for task_id, (name, owner), blob
             in zip(itertools.count(first_id), owners, blobs)))
        self.conn.executemany(
            "INSERT INTO task_events(task_id, state, at, detail)"
            " VALUES (?, 'pending', ?, 'submitted')",
            ((task_id, at) for task_id in range(first_id, first_id + count)))
        self.ids.note(first_id + count - 1)

    def last_task_id(self) -> int:
        """The highest task id ever given (ids are never reused, also after the database was
        replaced by an older backup: ``host/idmark.py``)."""
        self.write_pending()
        rows = self.conn.execute("SELECT seq FROM sqlite_sequence WHERE name='tasks'").fetchall()
        top = self.conn.execute("SELECT max(id) FROM tasks").fetchall()[0][0] or 0
        return max(top, rows[0][0] if rows else 0, self.ids.value)

    def apply(self, method: str, args: tuple, fields: dict | None) -> None:
        """Carry out one ``Write`` effect of the core (a write method named in
        ``effects.WRITE_METHODS``)."""
        if method not in WRITE_METHODS:
            raise Internal(f"not a store write: {method}")
        getattr(self, method)(*args, **(fields or {}))

    def update_task(self, task_id: int, **fields: Any) -> None:
        """Set columns of one task (written behind; ``alloc`` is packed)."""
        if "alloc" in fields:
            fields["alloc"] = pack(fields["alloc"])
        self._updates.setdefault(task_id, {}).update(fields)

    def add_event(self, task_id: int, state: str, at: float, detail: str = "") -> None:
        """Append to a task's history (written behind)."""
        self._events.append((task_id, state, at, detail))

    def discard_pending(self) -> None:
        """Forget unwritten changes (the handler that made them failed)."""
        self._updates, self._events = {}, []

    def write_pending(self) -> None:
        """Write what ``update_task``/``add_event`` hold (inside the caller's transaction)."""
        updates, self._updates = self._updates, {}
        for task_id, fields in updates.items():
            assignments = ", ".join(f"{name}=?" for name in fields)
            self.conn.execute(f"UPDATE tasks SET {assignments} WHERE id=?",
                              (*fields.values(), task_id))
        if self._events:
            events, self._events = self._events, []
            self.conn.executemany(
                "INSERT INTO task_events(task_id, state, at, detail) VALUES (?, ?, ?, ?)", events)

    def get_task(self, task_id: int) -> dict[str, Any] | None:
        rows = self._tasks("WHERE id=?", (task_id,))
        return rows[0] if rows else None

    def unfinished_tasks(self) -> list[dict[str, Any]]:
        return self._tasks(f"WHERE state IN {_UNFINISHED} ORDER BY id", ())

    def list_tasks(self, states: list[str] | None = None, limit: int = 200,
                   batch: int | None = None, owner: str | None = None,
                   before: int | None = None, node: str | None = None,
                   name: str | None = None) -> list[dict]:
        """Newest first, at most ``limit``; ``states``, ``batch``, ``owner``, ``node`` filter
        (each through an index, migration 10), ``before`` keeps ids below it (the next page),
        ``name`` names containing it (checked on the rows the other filters pass). Several
        states are read as one index range each and merged, so a page never sorts."""
        if states and len(states) > 1:
            return heapq.nlargest(limit, (row for state in dict.fromkeys(states)
                                          for row in self.list_tasks(
                                              [state], limit, batch, owner, before, node, name)),
                                  key=lambda row: row["id"])
        where, params = _where(states, batch, owner, before, node, name)
        return self._tasks(f"{where} {_PAGE}", (*params, limit))

    def count_tasks(self, states: list[str] | None = None, batch: int | None = None,
                    owner: str | None = None, before: int | None = None,
                    node: str | None = None, name: str | None = None,
                    cap: int = COUNT_CAP) -> tuple[int, bool]:
        """``(n, exact)``: how many tasks ``list_tasks`` with these filters would give without
        a limit, counted state by state (no ``states``: every state), each as a range of a
        ``(..., state)`` index (small entries, never the table's rows) stopped at ``cap`` (at
        most ``cap`` index entries read per state); ``exact`` is false when a state reached
        the cap (then there are at least ``n``)."""
        self.write_pending()
        total, exact = 0, True
        for state in dict.fromkeys(states or lc.ALL_STATES):
            where, params = _where([state], batch, owner, before, node, name)
            n = self.conn.execute(_COUNT.format(where=where), (*params, cap)).fetchall()[0][0]
            total, exact = total + n, exact and n < cap
        return total, exact

    def plan(self, sql_of: str, **filters: Any) -> list[str]:
        """``EXPLAIN QUERY PLAN`` of one listing (``sql_of``: ``list`` or ``count``; a count
        without states is planned for one of them, as ``count_tasks`` runs it) with these
        filters (a single state): for tests that pin each filter to an index."""
        states = filters.get("states") or (None if sql_of == "list" else [lc.COMPLETED])
        where, params = _where(states, filters.get("batch"), filters.get("owner"),
                               filters.get("before"), filters.get("node"), filters.get("name"))
        sql = (f"SELECT id FROM tasks {where} {_PAGE}" if sql_of == "list"
               else _COUNT.format(where=where))
        return [row[-1] for row in self.conn.execute(f"EXPLAIN QUERY PLAN {sql}", (*params, 1))]

    def tasks_since(self, since: float) -> list[dict[str, Any]]:
        """Tasks that held resources at some time after ``since`` (for usage reports): only
        ``owner``, ``node``, ``state``, ``started_at``, ``finished_at`` and ``alloc`` (its
        cores and GPUs are what the task held; ``spec`` too when there is no allocation).
        Unpacking a spec costs several times an allocation, and a week of a busy lab is tens
        of thousands of rows."""
        self.write_pending()
        rows = self.conn.execute(
            "SELECT owner, node, state, started_at, finished_at, alloc, spec FROM tasks "
            "WHERE started_at IS NOT NULL AND (finished_at IS NULL OR finished_at >= ?)",
            (since,)).fetchall()
        result = []
        for owner, node, state, started, finished, alloc, spec in rows:
            row = {"owner": owner, "node": node, "state": state, "started_at": started,
                   "finished_at": finished, "alloc": unpack(alloc)}
            if not row["alloc"] or "cores" not in row["alloc"]:
                row["spec"] = unpack(spec)
            result.append(row)
        return result

    def finished_before(self, before: float, limit: int) -> list[dict[str, Any]]:
        """At most ``limit`` tasks in a final state that finished before ``before``, oldest
        first (for ``zriver.host.retention``; a range of the ``tasks_by_finished`` index of
        migration 11: ``+state`` keeps the planner off the state indexes, which would sort
        every finished row)."""
        return self._tasks(f"WHERE finished_at < ? AND +state IN {_FINAL} "
                           f"ORDER BY finished_at LIMIT ?", (before, limit))

    def delete_tasks(self, ids: list[int]) -> None:
        """Remove tasks and their events (inside the caller's transaction; at most 500 ids a
        statement)."""
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            self.conn.execute(f"DELETE FROM task_events WHERE task_id IN ({marks})", chunk)
            self.conn.execute(f"DELETE FROM tasks WHERE id IN ({marks})", chunk)

    def task_states(self, ids: list[int]) -> dict[int, str]:
        """State of each existing task among ``ids``."""
        return {task_id: state for task_id, (state, _) in self.task_outcomes(ids).items()}

    def task_outcomes(self, ids: list[int]) -> dict[int, tuple[str, int | None]]:
        """``(state, exit_code)`` of each existing task among ``ids`` (a query per 500 ids)."""
        if not ids:
            return {}
        self.write_pending()
        result = {}
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), 500):
            chunk = unique[start:start + 500]
            for task_id, state, code in self.conn.execute(
                    f"SELECT id, state, exit_code FROM tasks WHERE id IN "
                    f"({','.join('?' * len(chunk))})", chunk):
                result[task_id] = (state, code)
        return result

    def task_owners(self, ids: list[int]) -> dict[int, str]:
        """The owner of each existing task among ``ids``."""
        self.write_pending()
        result = {}
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), 500):
            chunk = unique[start:start + 500]
            result.update(self.conn.execute(
                f"SELECT id, owner FROM tasks WHERE id IN ({','.join('?' * len(chunk))})", chunk))
        return result

    def task_events(self, task_id: int) -> list[dict[str, Any]]:
        self.write_pending()
        rows = self.conn.execute(
            "SELECT state, at, detail FROM task_events WHERE task_id=? ORDER BY rowid",
            (task_id,),
        ).fetchall()
        return [{"state": s, "at": at, "detail": d} for s, at, d in rows]

    def _tasks(self, clause: str, params: tuple) -> list[dict[str, Any]]:
        self.write_pending()
        rows = self.conn.execute(
            f"SELECT {', '.join(TASK_COLUMNS)} FROM tasks {clause}", params
        ).fetchall()
        tasks = []
        for row in rows:
            task = dict(zip(TASK_COLUMNS, row))
            task["spec"] = unpack(task["spec"])
            task["alloc"] = unpack(task["alloc"])
            tasks.append(task)
        return tasks

    # ---- idempotency keys of task.submit -----------------------------------------------
    def submitted(self, key: str) -> tuple[list[int], int | None] | None:
        """``(ids, batch_id)`` stored under submit key ``key``, or ``None``."""
        rows = self.conn.execute("SELECT ids, batch_id FROM submit_keys WHERE key=?",
                                 (key,)).fetchall()
        return (unpack(rows[0][0]), rows[0][1]) if rows else None

    def remember_submit(self, key: str, ids: list[int], batch_id: int | None,
                        at: float) -> None:
        """Store what the submit with ``key`` made (inside the caller's transaction)."""
        self.conn.execute("INSERT INTO submit_keys(key, ids, batch_id, at) VALUES (?, ?, ?, ?)",
                          (key, pack(ids), batch_id, at))

    def prune_submit_keys(self, before: float) -> None:
        """Forget keys stored before ``before`` (an index range: nothing to do costs ~1 us)."""
        self.conn.execute("DELETE FROM submit_keys WHERE at < ?", (before,))

    # ---- nodes -------------------------------------------------------------------------
    def save_node(self, name: str, info: dict, state: str, registered_at: float,
                  last_seen: float) -> None:
        self.conn.execute(
            "INSERT INTO nodes(name, info, state, registered_at, last_seen) VALUES (?,?,?,?,?)"
            " ON CONFLICT(name) DO UPDATE SET info=excluded.info, state=excluded.state,"
            " registered_at=excluded.registered_at, last_seen=excluded.last_seen",
            (name, pack(info), state, registered_at, last_seen),
        )

    def set_node_state(self, name: str, state: str, last_seen: float | None) -> None:
        self.conn.execute(
            "UPDATE nodes SET state=?, last_seen=COALESCE(?, last_seen) WHERE name=?",
            (state, last_seen, name),
        )

    def set_node_drained(self, name: str, reason: str | None) -> None:
        self.conn.execute("UPDATE nodes SET drained=? WHERE name=?", (reason, name))

    def list_nodes(self) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT name, info, state, registered_at, last_seen, drained FROM nodes ORDER BY name"
        ).fetchall()
        return [
            {"name": n, "info": unpack(i), "state": s, "registered_at": r, "last_seen": l,
             "drained": d}
            for n, i, s, r, l, d in rows
        ]
