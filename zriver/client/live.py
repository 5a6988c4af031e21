"""A background thread that keeps a picture of the cluster current from the host's event stream.

``Feed`` owns its own ``Client`` and SUB socket (ZeroMQ sockets are not thread-safe; the shell
and ``top`` keep theirs for the user's commands). It connects, subscribes (``evt.`` and ``hb.``,
plus ``log.<id>`` of the one task ``follow_log`` names), then takes a snapshot and passes every
pushed message on. Subscribing before the snapshot means nothing can slip between them.

A snapshot is bounded whatever the queue holds: ``node.list``, the counts per state
(``task.counts``), the active tasks (at most ``ACTIVE_PAGES`` pages), the newest
``PENDING_WINDOW`` pending ones, the ``RECENT`` newest tasks, ``env.list`` where the host has it:
with 100,000 queued tasks it is a few pages, not 38 MiB.

Everything reaches the caller through a ``Sink``'s methods, called on the feed thread; a sink
hands things over to its own thread (``top``) or applies them under a lock (the shell).

It also fetches, off the caller's thread, what the events do not carry: the full rows of tasks
first seen in an event (``want_tasks``), ``node.list`` again after a node event, the pending
tasks shortly after task events (their reasons change when others start or end, without an
event of their own; skipped when more than ``PENDING_REFRESH`` wait), and a fresh snapshot
every ``resync`` seconds or on ``resync_soon`` (at most every ``MIN_RESYNC`` seconds), the
counts ``COUNTS_DELAY`` after task events (one read for a burst; the model moves them by events
in between, and this read makes them converge), and the newest pending tasks after the summary
event of a big submit (``evt.batch.<id>``). When the host does not answer, the sink is told
(``status``) and the feed retries every second.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Protocol

import structlog
import zmq

from zriver.client.api import Client
from zriver.client.follow import ask_follow, unfollow
from zriver.client.topmodel import PENDING_WINDOW
from zriver.errors import ZriverError
from zriver import lifecycle as lc
from zriver.protocol import decode

log = structlog.get_logger("zriver.client")

UNFINISHED = [lc.PENDING, lc.ASSIGNED, lc.RUNNING, lc.PAUSED]
#: States of tasks that hold a node's resources (all of them are fetched, up to the pages).
ACTIVE = [lc.ASSIGNED, lc.RUNNING, lc.PAUSED, lc.UNREACHABLE]
#: States counted (``task.counts``): the unfinished ones, from the host's memory.
COUNTED = UNFINISHED + [lc.UNREACHABLE]
#: Rows of one ``task.list`` page the feed asks for (the host's most)...
PAGE = 1000
#: ...and pages of active tasks at most in a snapshot.
ACTIVE_PAGES = 5
#: The newest tasks fetched with a snapshot (for the shell's completion of task ids).
RECENT = 200
#: At most this many tasks are fetched one by one; more unknown tasks mean a new snapshot.
DETAIL_BATCH = 100
#: Messages handled between two looks at the feed's own chores.
DRAIN = 2000
#: Pending tasks are re-read this long after a task event (one read for a burst of events)...
PENDING_DELAY = 0.5
#: ...when there are fewer than this many (else the periodic snapshot refreshes them).
PENDING_REFRESH = 500
#: Counts are re-read this long after the last read when task events came in between.
COUNTS_DELAY = 1.0
#: Longest wait, after a ``task.counts`` reply, for the events those counts include.
COUNTS_CATCH_UP = 0.5
#: Seconds between two snapshots at least, when asked for one (``resync_soon``, many unknown
#: tasks at once).
MIN_RESYNC = 2.0


class Sink(Protocol):
    """What a feed calls (on its own thread)."""

    def snapshot(self, nodes: list[dict], tasks: list[dict], envs: list[str] | None,
                 counts: dict[str, int] | None) -> None:
        """A full picture: ``node.list`` rows, the window's task rows (active, newest pending,
        recent), ``env.list`` names, the counts per state (None: a host without
        ``task.counts``)."""

    def counts(self, counts: dict[str, int]) -> None:
        """Counts per state of the unfinished states, re-read (``task.counts``)."""

    def messages(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        """Pushed messages in arrival order, as (topic, body)."""

    def nodes(self, rows: list[dict]) -> None:
        """``node.list`` rows, refreshed after node events."""

    def task(self, row: dict) -> None:
        """A full task row asked for with ``want_tasks``."""

    def pending(self, rows: list[dict]) -> None:
        """The newest pending tasks' rows (their reasons), re-read after task events."""

    def status(self, connected: bool, message: str) -> None:
        """The host answers (again), or stopped answering (``message`` says what)."""


def env_names(reply: dict[str, Any]) -> list[str]:
    """Names from an ``env.list`` reply, whatever the list is called (``envs``, ...)."""
    for value in reply.values():
        if isinstance(value, list):
            names = [item.get("name") if isinstance(item, dict) else item for item in value]
            return sorted({n for n in names if isinstance(n, str) and n})
    return []


def stamped(reply: dict[str, Any]) -> list[dict]:
    """The task rows of a ``task.list`` or ``task.get`` reply, each with the reply's ``seq``
    (the last event the host had numbered when it read them; 0 from a host that does not
    number them): the model then knows an event or row older than what it holds."""
    rows = reply["tasks"] if "tasks" in reply else [reply["task"]]
    seq = reply.get("seq") if isinstance(reply.get("seq"), int) else 0
    return [{**row, "seq": seq} for row in rows]


class Feed:
    """The feed thread; ``start`` it, ``stop`` it. Methods other than those are thread-safe
    requests the thread carries out at its next turn (within ``tick`` seconds)."""

    def __init__(self, host: str | None, sink: Sink, *, resync: float = 30.0,
                 timeout: float = 2.0, tick: float = 0.1, window: int = PENDING_WINDOW,
                 envs: bool = False, key: str | None = None,
                 host_key: str | None = None) -> None:
        self.host, self.sink, self.resync, self.timeout, self.tick = host, sink, resync, timeout, tick
        self.key, self.host_key = key, host_key  # --key / --host-key (see ``Client``)
        self.window, self.envs = window, envs  # pending tasks held; env.list or not
        self._snapshot_at = 0.0
        self._stop = threading.Event()
        self._resync_now = threading.Event()
        self._want: set[int] = set()
        self._want_lock = threading.Lock()
        self._log_task: int | None = None
        self._pending = 0  # pending tasks at the last look
        self._seen_seq = 0  # the highest ``seq`` of the task and batch events received
        self._thread = threading.Thread(target=self._run, name="zriver-feed", daemon=True)
        self.connected = False

    # ---- the caller's side -------------------------------------------------------------
    def start(self) -> "Feed":
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def resync_soon(self) -> None:
        self._resync_now.set()

    def want_tasks(self, ids: set[int] | list[int]) -> None:
        with self._want_lock:
            self._want.update(ids)

    def follow_log(self, task_id: int | None) -> None:
        """Also pass on ``log.<task_id>`` chunks (``None``: stop)."""
        self._log_task = task_id

    # ---- the thread --------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                client = Client(self.host, self.timeout, key=self.key, host_key=self.host_key)
            except ZriverError as exc:  # a key file that cannot be used: say so, try again
                self.sink.status(False, str(exc))
                self._stop.wait(1.0)
                continue
            sub = None
            try:
                sub = self._connect(client)
                self._serve(client, sub)
            except ZriverError as exc:
                self.connected = False
                self.sink.status(False, str(exc))
                self._stop.wait(1.0)
            except Exception:  # a bug in a sink must not silently freeze the picture
                log.exception("feed.crashed")
                self._stop.wait(1.0)
            finally:
                if sub is not None:
                    sub.close(linger=0)
                client.close()

    def _connect(self, client: Client):
        self._seen_seq = 0  # a restarted host numbers its events from 1 again
        sub = client.subscribe(["evt.", "hb."])
        identity = getattr(self.sink, "identity", None)
        if identity is not None:  # who "me" is: the name of this client's key on the host
            identity(client.hello().get("principal", {}).get("name", ""))
        self._snapshot(client)
        self.connected = True
        self.sink.status(True, "")
        return sub

    def _snapshot(self, client: Client) -> None:
        nodes = client.call("node.list")["nodes"]
        counts = self._counts(client)
        tasks = self._pages(client, {"states": ACTIVE}, ACTIVE_PAGES)
        pending = self._pending_rows(client)
        recent = stamped(client.call("task.list", {"limit": RECENT}))
        tasks += pending
        seen = {t["id"] for t in tasks}
        self._pending = counts.get(lc.PENDING, 0) if counts is not None else len(pending)
        tasks += [t for t in reversed(recent) if t["id"] not in seen]
        envs = None
        if self.envs:
            try:
                envs = env_names(client.call("env.list"))
            except ZriverError:  # no such op on this host, or Docker is slow: not fatal
                pass
        self._resync_now.clear()
        self._snapshot_at = time.monotonic()
        with self._want_lock:
            self._want.clear()
        self.sink.snapshot(nodes, tasks, envs, counts)

    def _pending_rows(self, client: Client) -> list[dict]:
        """The newest pending tasks (``window`` of them), stamped."""
        return stamped(client.call("task.list", {"states": [lc.PENDING], "limit": self.window}))

    @staticmethod
    def _pages(client: Client, body: dict, pages: int) -> list[dict]:
        """Up to ``pages`` pages of ``task.list`` with ``body``, newest first."""
        rows: list[dict] = []
        before = None
        for _ in range(pages):
            reply = client.call("task.list", {**body, "limit": PAGE, "before": before})
            rows += stamped(reply)
            before = reply.get("next")
            if before is None:
                break
        return rows

    def _counts(self, client: Client, sub=None) -> dict[str, int] | None:
        """The unfinished states' counts (None: the host has no ``task.counts``). With
        ``sub``, the events those counts include that were still on their way (the reply's
        ``seq``) are first passed to the sink, waiting at most ``COUNTS_CATCH_UP``: so the
        counts never run ahead of the rows ("2 running" beside a row still ``assigned``)."""
        try:
            reply = client.call("task.counts", {"states": COUNTED})
        except ZriverError as exc:
            if exc.code != "unknown_op":
                raise
            return None
        if sub is not None:
            self._catch_up(sub, reply.get("seq"))
        counts = reply["counts"]
        self._pending = counts.get(lc.PENDING, 0)
        return counts

    def _catch_up(self, sub, seq: int | None) -> None:
        """Pass on the events waiting on ``sub``, and wait (bounded) for those up to ``seq``
        (None: a host that does not number its events; only what is waiting)."""
        batch = self._waiting(sub)
        deadline = time.monotonic() + COUNTS_CATCH_UP
        while isinstance(seq, int) and self._seen_seq < seq:
            left = deadline - time.monotonic()
            if left <= 0 or not sub.poll(int(left * 1000) + 1):
                break  # an event lost on the way: the counts win, as before
            batch.extend(self._waiting(sub))
        if batch:
            self.sink.messages(batch)

    def _serve(self, client: Client, sub) -> None:
        incarnation = client.hello().get("incarnation")
        next_resync = time.monotonic() + self.resync
        pending_due = counts_due = None
        log_task = None
        poller = zmq.Poller()
        poller.register(sub, zmq.POLLIN)
        if client.secure:  # log chunks come over the DEALER (task.follow), not the XPUB
            poller.register(client.sock, zmq.POLLIN)
        follow_due = 0.0
        while not self._stop.is_set():
            if self._log_task != log_task:
                if log_task is not None and not client.secure:
                    sub.unsubscribe(f"log.{log_task}")
                elif log_task is not None:  # the runner stops tailing it at once
                    unfollow(client, log_task)
                log_task = self._log_task
                follow_due = 0.0
                if log_task is not None and not client.secure:
                    sub.subscribe(f"log.{log_task}")
            if client.secure and log_task is not None and time.monotonic() >= follow_due:
                follow_due = self._follow(client, log_task)
            batch = []
            ready = dict(poller.poll(int(self.tick * 1000)))
            if sub in ready:
                batch.extend(self._waiting(sub))
            if client.sock in ready:
                batch.extend(self._pushed(client))
            if batch:
                self.sink.messages(batch)
                if any(topic.startswith("evt.node.") for topic, _ in batch):
                    self.sink.nodes(client.call("node.list")["nodes"])
                tasks_moved = any(t.startswith(("evt.task.", "evt.batch.")) for t, _ in batch)
                if counts_due is None and tasks_moved:
                    counts_due = time.monotonic() + COUNTS_DELAY
                if pending_due is None and (
                        any(t.startswith("evt.batch.") for t, _ in batch)
                        or (tasks_moved and self._pending < PENDING_REFRESH)):
                    pending_due = time.monotonic() + PENDING_DELAY
            if pending_due is not None and time.monotonic() >= pending_due:
                pending_due = None
                self.sink.pending(self._pending_rows(client))
            if counts_due is not None and time.monotonic() >= counts_due:
                counts_due = None
                counts = self._counts(client, sub)  # the rows' events first, then the counts
                if counts is not None:
                    self.sink.counts(counts)
            if ((self._resync_now.is_set() and time.monotonic() >= self._snapshot_at + MIN_RESYNC)
                    or time.monotonic() >= next_resync):
                if client.call("cluster.hello").get("incarnation") != incarnation:
                    return  # a restarted host: subscribe again (its ports may have moved)
                self._snapshot(client)
                next_resync = time.monotonic() + self.resync
                continue
            self._fetch_wanted(client)

    def _waiting(self, sub) -> list[tuple[str, dict]]:
        """The events waiting on ``sub`` (at most ``DRAIN``); notes the highest ``seq``."""
        batch = []
        while len(batch) < DRAIN and sub.poll(0):
            topic, frame = sub.recv_multipart()
            try:
                body = decode(frame).body
            except ZriverError:
                continue
            seq = body.get("seq")
            if isinstance(seq, int) and seq > self._seen_seq:
                self._seen_seq = seq
            batch.append((topic.decode(errors="replace"), body))
        return batch

    @staticmethod
    def _follow(client: Client, task_id: int) -> float:
        """Ask for ``task_id``'s live chunks (its owner and admins only); when to ask again."""
        try:
            return ask_follow(client, task_id)
        except ZriverError:  # not ours to read, or gone: ask again later, show nothing
            return time.monotonic() + 10.0

    @staticmethod
    def _pushed(client: Client) -> list[tuple[str, dict]]:
        """Log chunks the host pushed to this client's DEALER."""
        batch = []
        while len(batch) < DRAIN and client.sock.poll(0):
            try:
                env = decode(client.sock.recv())
            except ZriverError:
                continue
            if env.op == "log":
                batch.append((f"log.{env.body.get('id')}", env.body))
        return batch

    def _fetch_wanted(self, client: Client) -> None:
        with self._want_lock:
            wanted, self._want = self._want, set()
        if len(wanted) > DETAIL_BATCH:
            self._resync_now.set()
            return
        for task_id in sorted(wanted):
            try:
                self.sink.task(stamped(client.call("task.get", {"id": task_id}))[0])
            except ZriverError as exc:
                if exc.code != "not_found":
                    raise
