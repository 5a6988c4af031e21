"""``zriver top``: a full-screen live dashboard (prompt-toolkit ``Application``).

Data flow: a ``live.Feed`` thread (its own client and SUB socket) takes the snapshot and then
receives every pushed message; as a ``Sink`` this class only queues what it gets and wakes the
application's loop, where ``_drain`` applies the whole queue to the ``ClusterModel`` and asks
for a redraw. prompt-toolkit redraws at most every ``REDRAW`` seconds, so a storm of events
costs one redraw per frame, and a quiet cluster costs nothing: the screen moves on pushed
events (plus a one-second tick for the clock and ages), it never polls the host. The feed takes
a new snapshot every ``--resync`` seconds as a safety net (lost messages, pending reasons, tasks
submitted since: the host publishes nothing on submit).

Drawing is ``TableControl``: prompt-toolkit gives it the width and height it has, and it draws
only the rows that fit (``topview`` makes each line), so 10,000 tasks cost what 50 do. A
terminal resize is just the next draw with other figures.

Keys are in the footer: 1/2/3 or Tab switch views, arrows/PgUp/PgDn/Home/End move, / filters,
Enter follows the selected task's log (on a node: shows its tasks), k/p/r kill/pause/resume the
selected task after a y/n question, Esc goes back (log view) or clears the filter, q quits.
"""

from __future__ import annotations

import asyncio
import queue
import time
from typing import Any

from prompt_toolkit.application import Application
from prompt_toolkit.buffer import Buffer
from prompt_toolkit.filters import Condition
from prompt_toolkit.key_binding import KeyBindings
from prompt_toolkit.keys import Keys
from prompt_toolkit.layout import (BufferControl, ConditionalContainer, FormattedTextControl,
                                   HSplit, Layout, UIContent, UIControl, VSplit, Window)
from prompt_toolkit.styles import Style

from zriver.client import topview as tv
from zriver.client.live import Feed
from zriver.client.registry import Context
from zriver.client.topmodel import EVENTS, NODES, TASKS, VIEWS, ClusterModel
from zriver.errors import ZriverError

LOG = "log"
#: Seconds between two redraws at most (10 per second).
REDRAW = 0.1
#: Bytes of a followed log kept on screen.
LOG_KEEP = 256 * 1024
ACTIONS = {"k": ("kill", "task.kill"), "p": ("pause", "task.pause"),
           "r": ("resume", "task.resume")}

STYLE = Style.from_dict({
    "header": "bg:#005f87 #ffffff",
    "header.ok": "bg:#005f87 #87ff87 bold",
    "header.bad": "bg:#005f87 #ff8787 bold",
    "tab": "#a8a8a8",
    "tab.active": "bold reverse",
    "colhead": "bold underline",
    "selected": "reverse",
    "footer": "bg:#303030 #d0d0d0",
    "footer.key": "bg:#303030 #ffaf00 bold",
    "prompt": "bold #ffaf00",
    "message": "#87d7ff",
    "error": "#ff8787 bold",
    "dim": "#808080",
    "detail": "#a8a8a8",
    "bar.low": "#5fd75f", "bar.mid": "#ffd75f", "bar.high": "#ff5f5f", "bar.empty": "#585858",
    "state.running": "#5fd75f", "state.online": "#5fd75f", "state.completed": "#5fd75f",
    "state.pending": "#ffd75f", "state.assigned": "#87d7ff", "state.paused": "#87afff",
    "state.drained": "#ffaf5f", "state.degraded": "#ffaf5f", "state.offline": "#ff5f5f",
    "state.failed": "#ff5f5f", "state.killed": "#ffaf5f", "state.killed_oom": "#ff5f5f",
    "state.lost": "#ff5f5f", "state.timeout": "#ff5f5f",
})


class LogPane:
    """The tail of one task's stdout or stderr, kept current from ``log.<id>`` chunks.

    ``offset`` is where the next byte belongs; a chunk past it means chunks were lost (PUB/SUB
    is lossy), and the gap is read from the host (``task.logs``), as ``logs -f`` does."""

    def __init__(self, task_id: int, stream: str = "stdout") -> None:
        self.task_id, self.stream = task_id, stream
        self.data = bytearray()
        self.start = 0  # offset of data[0]
        self.offset = 0
        self.error = ""

    def load(self, client) -> None:
        """Read the last ``LOG_KEEP`` bytes, then whatever follows up to the end."""
        try:
            size = client.call("task.logs", {"id": self.task_id, "stream": self.stream,
                                             "offset": 0, "limit": 0}, timeout=3)["size"]
            self.start = self.offset = max(0, size - LOG_KEEP)
            self.catch_up(client)
        except ZriverError as exc:
            self.error = f"{exc.code}: {exc}"

    def catch_up(self, client) -> None:
        while True:
            reply = client.call("task.logs", {"id": self.task_id, "stream": self.stream,
                                              "offset": self.offset}, timeout=3)
            self._append(reply["data"])
            if not reply["data"] or self.offset >= reply["size"]:
                return

    def apply(self, client, offset: int, data: bytes) -> None:
        if offset > self.offset:
            try:
                self.catch_up(client)
            except ZriverError as exc:
                self.error = f"{exc.code}: {exc}"
        elif offset + len(data) > self.offset:
            self._append(data[self.offset - offset:])

    def _append(self, data: bytes) -> None:
        self.data += data
        self.offset += len(data)
        if len(self.data) > LOG_KEEP * 2:
            cut = len(self.data) - LOG_KEEP
            del self.data[:cut]
            self.start += cut

    def lines(self) -> list[str]:
        text = self.data.decode(errors="replace").replace("\r", "").expandtabs()
        lines = text.split("\n")
        if self.start > 0 and len(lines) > 1:
            lines = lines[1:]  # the first line was cut
        if lines and lines[-1] == "":
            lines.pop()
        return lines


class TableControl(UIControl):
    """Draws the current view with exactly the rows that fit (prompt-toolkit passes the size)."""

    def __init__(self, top: "Top") -> None:
        self.top = top

    def is_focusable(self) -> bool:
        return True

    def create_content(self, width: int, height: int) -> UIContent:
        lines = self.top.render(width, height)
        return UIContent(get_line=lambda i: lines[i], line_count=len(lines))


class Top:
    """The dashboard: model, feed, screen and keys. ``run`` returns the exit status."""

    def __init__(self, ctx: Context, view: str = NODES, filter_text: str = "",
                 resync: float = 15.0) -> None:
        self.ctx = ctx
        self.model = ClusterModel()
        self.view = view
        self.back = TASKS
        self.model.set_filter(view, filter_text)
        self.selected: dict[str, Any] = {v: None for v in (*VIEWS, LOG)}
        self.index: dict[str, int] = {v: 0 for v in (*VIEWS, LOG)}
        self.scroll: dict[str, int] = {v: 0 for v in (*VIEWS, LOG)}
        self.page = 10
        self.mode = "normal"  # or "filter", "confirm"
        self.pending_action: tuple[str, str, int] | None = None
        self.message = ("", "", 0.0)  # (style, text, until)
        self.log: LogPane | None = None
        self.connected: bool | None = None
        self.problem = ""
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake_pending = False
        self.feed = Feed(ctx.host, self, resync=resync, timeout=min(ctx.timeout, 3.0),
                         key=ctx.key, host_key=ctx.host_key)
        self.filter_buffer = Buffer(multiline=False, on_text_changed=self._filter_changed)
        self.app = self._build()

    # ---- live.Sink (called on the feed thread: queue and wake) --------------------------
    def snapshot(self, nodes, tasks, envs, counts=None) -> None:
        self._push(("snapshot", nodes, tasks, counts))

    def counts(self, counts) -> None:
        self._push(("counts", counts))

    def messages(self, batch) -> None:
        self._push(("messages", batch))

    def nodes(self, rows) -> None:
        self._push(("nodes", rows))

    def task(self, row) -> None:
        self._push(("task", row))

    def pending(self, rows) -> None:
        self._push(("pending", rows))

    def status(self, connected: bool, message: str) -> None:
        self._push(("status", connected, message))

    def _push(self, item: tuple) -> None:
        self._queue.put(item)
        loop = self._loop
        if loop is not None and not self._wake_pending:
            self._wake_pending = True
            try:
                loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop is closed: we are quitting
                pass

    def _drain(self) -> None:
        """Apply everything queued (on the application's loop), then ask for one redraw."""
        self._wake_pending = False
        now = time.time()
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            kind = item[0]
            if kind == "snapshot":
                self.model.load(item[1], item[2], now, item[3])
            elif kind == "counts":
                self.model.set_counts(item[1])
            elif kind == "messages":
                for topic, body in item[1]:
                    if topic.startswith("log."):
                        self._log_chunk(body)
                    else:
                        self.model.apply(topic, body, now)
            elif kind == "nodes":
                self.model.load_nodes(item[1])
            elif kind == "task":
                self.model.upsert_task(item[1])
            elif kind == "pending":
                self.model.refresh_pending(item[1])
            elif kind == "status":
                self.connected, self.problem = item[1], item[2]
        if self.model.unknown_tasks:
            self.feed.want_tasks(self.model.unknown_tasks)
            self.model.unknown_tasks = set()
        self.app.invalidate()

    def _log_chunk(self, body: dict) -> None:
        log = self.log
        if log is not None and body.get("id") == log.task_id and body.get("stream") == log.stream:
            log.apply(self.ctx.client, body.get("offset", 0), body.get("data") or b"")

    # ---- drawing -----------------------------------------------------------------------
    def render(self, width: int, height: int) -> list[tv.Fragments]:
        """The lines of the current view for a ``width`` x ``height`` area."""
        self.page = max(1, height - 2)
        now = time.time()
        if self.view == LOG:
            return self._render_log(width, height)
        if self.view == NODES:
            keys = self.model.node_names()
            name_width = max([4] + [len(n) for n in keys[:2000]])
            name_width = min(name_width, 24)
            header = tv.node_header(width, name_width)
            draw = lambda name: tv.node_line(self.model.nodes[name], width, name_width, now)
        elif self.view == TASKS:
            keys = self.model.task_ids()
            header = tv.task_header(width)
            draw = lambda task_id: tv.task_line(self.model.tasks[task_id], width, now)
        else:
            keys = self.model.event_list()
            header = tv.event_header(width)
            draw = lambda event: tv.event_line(event, width)
        rows = max(0, height - 1)
        first, chosen = self._place(keys, rows)
        lines = [header]
        for i in range(first, min(len(keys), first + rows)):
            line = draw(keys[i])
            if i == chosen:
                line = [(f"class:selected {style}", text) for style, text in line]
            lines.append(line)
        if not keys:
            lines.append([("class:dim", self._empty_text())])
        return lines

    def _place(self, keys: list, rows: int) -> tuple[int, int]:
        """Keep the selection on the same row key when rows move; scroll so it is visible."""
        view = self.view
        if not keys:
            self.index[view], self.selected[view] = 0, None
            return 0, -1
        index = self.index[view]
        key = self.selected[view]
        if key is not None and view != EVENTS:
            if not (index < len(keys) and keys[index] == key):
                try:
                    index = keys.index(key)
                except ValueError:
                    pass
        index = max(0, min(index, len(keys) - 1))
        self.index[view], self.selected[view] = index, keys[index]
        first = self.scroll[view]
        if index < first:
            first = index
        elif rows and index >= first + rows:
            first = index - rows + 1
        first = max(0, min(first, max(0, len(keys) - rows)))
        self.scroll[view] = first
        return first, index

    def _render_log(self, width: int, height: int) -> list[tv.Fragments]:
        log = self.log
        task = self.model.lookup(log.task_id)
        state = task.state if task else "?"
        name = f" ({task.name})" if task and task.name else ""
        head = tv.clip([("class:colhead", f"task {log.task_id}{name} · "),
                        (f"class:state.{state} class:colhead", state),
                        ("class:colhead", f" · {log.stream} · {log.offset} bytes")], width,
                       "class:colhead")
        lines = log.lines()
        if log.error:
            lines.append(f"[{log.error}]")
        rows = max(0, height - 1)
        return [head] + [tv.clip([("", line)], width) for line in lines[-rows:] if rows]

    def _empty_text(self) -> str:
        if self.connected is None:
            return "  connecting…"
        if self.model.filter(self.view):
            return "  nothing matches the filter (Esc clears it)"
        return {NODES: "  no nodes yet", TASKS: "  no running or pending tasks",
                EVENTS: "  no events since top started"}[self.view]

    def header(self) -> tv.Fragments:
        where = self.feed_endpoint
        if self.connected is False:
            state = [("class:header.bad", " ○ "), ("class:header", f"no answer from {where}; "
                                                                   "retrying")]
        else:
            s = self.model.summary()
            gpus = f"GPUs {s.gpus_free}/{s.gpus} free" if s.gpus else "no GPUs"
            paused = f" · {s.paused} paused" if s.paused else ""
            state = [("class:header.ok", " ● "),
                     ("class:header", f"{s.nodes_online}/{s.nodes} nodes online │ {s.running} "
                                      f"running · {s.pending} pending{paused} │ {gpus} │ {where}")]
        return [("class:header bold", " zriver top "), *state,
                ("class:header", "  " + time.strftime("%H:%M:%S") + " ")]

    def tabs(self) -> tv.Fragments:
        """The view tabs with their row counts: the tasks tab counts the whole cluster's
        unfinished tasks (the model holds a window of them; a filter counts what it shows)."""
        model = self.model
        filtered = bool(model.filter(TASKS))
        counts = {NODES: len(model.node_names()),
                  TASKS: len(model.task_ids()) if filtered else max(model.total(), model.held()),
                  EVENTS: len(model.event_list())}
        out: tv.Fragments = []
        for number, view in enumerate(VIEWS, 1):
            style = "class:tab.active" if view == self.view else "class:tab"
            out += [(style, f" {number} {view.capitalize()} {counts[view]} "), ("", " ")]
        if self.view == TASKS and model.held() < model.total():
            note = " (the filter looks at those)" if filtered else ""
            out.append(("class:dim", f"showing {model.held():,}: the running and the newest "
                                     f"pending{note} "))
        if self.view == LOG and self.log is not None:
            out += [("class:tab.active", f" log of task {self.log.task_id} "), ("", " ")]
        text = self.model.filter(self.view) if self.view in VIEWS else ""
        if text and self.mode != "filter":
            out.append(("class:prompt", f" filter: {text}"))
        return out

    def status_line(self) -> tv.Fragments:
        if self.mode == "confirm" and self.pending_action:
            verb, _, task_id = self.pending_action
            task = self.model.lookup(task_id)
            name = f" ({task.name})" if task and task.name else ""
            return [("class:prompt", f" {verb} task {task_id}{name}? [y/N] ")]
        style, text, until = self.message
        if text and time.monotonic() < until:
            return [(style, f" {text}")]
        return []

    def footer(self) -> tv.Fragments:
        keys = {
            NODES: [("1-3/Tab", "views"), ("↑↓", "move"), ("Enter", "its tasks"),
                    ("/", "filter"), ("q", "quit")],
            TASKS: [("1-3/Tab", "views"), ("↑↓", "move"), ("Enter", "log"), ("k", "kill"),
                    ("p", "pause"), ("r", "resume"), ("/", "filter"), ("q", "quit")],
            EVENTS: [("1-3/Tab", "views"), ("↑↓", "move"), ("/", "filter"), ("q", "quit")],
            LOG: [("Esc", "back"), ("e", "stdout/stderr"), ("k", "kill"), ("p", "pause"),
                  ("r", "resume"), ("q", "quit")],
        }[self.view]
        if self.mode == "filter":
            keys = [("Enter", "keep the filter"), ("Esc", "clear it"),
                    ("", "all terms must match; state:pend (prefix), node=n1 (exact)")]
        out: tv.Fragments = [("class:footer", " ")]
        for key, what in keys:
            out += [("class:footer.key", key), ("class:footer", f" {what}  ")]
        return out

    # ---- the application ---------------------------------------------------------------
    def _build(self) -> Application:
        filtering = Condition(lambda: self.mode == "filter")
        confirming = Condition(lambda: self.mode == "confirm")
        normal = Condition(lambda: self.mode == "normal")
        self.table = Window(TableControl(self), always_hide_cursor=True)
        filter_row = VSplit([
            Window(FormattedTextControl([("class:prompt", " filter: ")]), width=9),
            Window(BufferControl(self.filter_buffer)),
        ], height=1)
        body = HSplit([
            Window(FormattedTextControl(self.header), height=1, style="class:header"),
            Window(FormattedTextControl(self.tabs), height=1),
            self.table,
            ConditionalContainer(filter_row, filter=filtering),
            ConditionalContainer(Window(FormattedTextControl(self.status_line), height=1),
                                 filter=~filtering),
            Window(FormattedTextControl(self.footer), height=1, style="class:footer"),
        ])
        app = Application(layout=Layout(body, focused_element=self.table),
                          key_bindings=self._keys(normal, filtering, confirming), style=STYLE,
                          full_screen=True, min_redraw_interval=REDRAW, mouse_support=False)
        app.ttimeoutlen = 0.05  # Esc alone should not wait half a second
        app.timeoutlen = 0.05
        return app

    def _keys(self, normal, filtering, confirming) -> KeyBindings:
        kb = KeyBindings()

        @kb.add("q", filter=normal)
        @kb.add("c-c")
        def _quit(event):
            event.app.exit(result=0)

        for number, view in enumerate(VIEWS, 1):
            kb.add(str(number), filter=normal)(lambda e, v=view: self.switch(v))

        @kb.add("tab", filter=normal)
        def _next(event):
            views = list(VIEWS)
            current = views.index(self.view) if self.view in views else 0
            self.switch(views[(current + 1) % len(views)])

        @kb.add("s-tab", filter=normal)
        def _previous(event):
            views = list(VIEWS)
            current = views.index(self.view) if self.view in views else 0
            self.switch(views[(current - 1) % len(views)])

        moves = {"up": -1, "down": 1, "pageup": "-page", "pagedown": "page",
                 "home": "home", "end": "end"}
        for key, step in moves.items():
            kb.add(key, filter=normal)(lambda e, s=step: self.move(s))

        @kb.add("/", filter=normal)
        def _filter(event):
            if self.view not in VIEWS:
                return
            self.mode = "filter"
            self.filter_buffer.text = self.model.filter(self.view)
            self.filter_buffer.cursor_position = len(self.filter_buffer.text)
            event.app.layout.focus(self.filter_buffer)

        @kb.add("enter", filter=filtering)
        def _keep(event):
            self.mode = "normal"
            event.app.layout.focus(self.table)

        @kb.add("escape", filter=filtering)
        @kb.add("c-c", filter=filtering)
        def _clear(event):
            self.filter_buffer.text = ""
            self.mode = "normal"
            event.app.layout.focus(self.table)

        @kb.add("escape", filter=normal)
        def _back(event):
            if self.view == LOG:
                self.close_log()
            elif self.model.filter(self.view):
                self.model.set_filter(self.view, "")

        @kb.add("enter", filter=normal)
        def _enter(event):
            if self.view == TASKS and self.selected[TASKS] is not None:
                self.open_log(self.selected[TASKS])
            elif self.view == NODES and self.selected[NODES] is not None:
                self.model.set_filter(TASKS, f"node={self.selected[NODES]}")
                self.switch(TASKS)

        @kb.add("e", filter=normal)
        def _stream(event):
            if self.view == LOG and self.log is not None:
                self.open_log(self.log.task_id,
                              "stderr" if self.log.stream == "stdout" else "stdout")

        for key in ACTIONS:
            kb.add(key, filter=normal)(lambda e, k=key: self.ask(k))

        @kb.add("y", filter=confirming)
        def _yes(event):
            self.mode = "normal"
            self.act()

        @kb.add(Keys.Any, filter=confirming)
        @kb.add("escape", filter=confirming)
        @kb.add("enter", filter=confirming)
        def _no(event):
            self.mode, self.pending_action = "normal", None
            self.say("class:message", "cancelled")

        return kb

    # ---- what keys do ------------------------------------------------------------------
    def switch(self, view: str) -> None:
        if self.view == LOG:
            self.close_log()
        self.view = view

    def move(self, step) -> None:
        view = self.view
        if step == "home":
            index = 0
        elif step == "end":
            index = 1 << 30
        elif step == "page":
            index = self.index[view] + self.page
        elif step == "-page":
            index = self.index[view] - self.page
        else:
            index = self.index[view] + step
        self.index[view] = max(0, index)
        self.selected[view] = None  # _place picks the row at the new index

    def selected_task(self) -> int | None:
        if self.view == LOG and self.log is not None:
            return self.log.task_id
        return self.selected[TASKS] if self.view == TASKS else None

    def ask(self, key: str) -> None:
        task_id = self.selected_task()
        if task_id is None:
            self.say("class:message", "select a task first (2: tasks)")
            return
        verb, op = ACTIONS[key]
        self.pending_action = (verb, op, task_id)
        self.mode = "confirm"

    def act(self) -> None:
        verb, op, task_id = self.pending_action
        self.pending_action = None
        try:
            reply = self.ctx.client.call(op, {"id": task_id}, timeout=3)
            self.say("class:message", f"{verb} requested for task {task_id} ({reply['state']})")
        except ZriverError as exc:
            self.say("class:error", f"{verb} task {task_id}: {exc}")

    def say(self, style: str, text: str, seconds: float = 5.0) -> None:
        self.message = (style, text, time.monotonic() + seconds)

    def open_log(self, task_id: int, stream: str = "stdout") -> None:
        if self.view != LOG:
            self.back = self.view
        self.log = LogPane(task_id, stream)
        self.feed.follow_log(task_id)  # subscribe first, then read: no gap
        self.log.load(self.ctx.client)
        self.view = LOG

    def close_log(self) -> None:
        self.feed.follow_log(None)
        self.log = None
        self.view = self.back if self.back in VIEWS else TASKS

    def _filter_changed(self, buffer: Buffer) -> None:
        if self.view in VIEWS:
            self.model.set_filter(self.view, buffer.text)
            self.index[self.view], self.selected[self.view] = 0, None

    @property
    def feed_endpoint(self) -> str:
        return self.ctx.client.endpoint.removeprefix("tcp://")

    async def _tick(self) -> None:
        """Once a second: the clock, the ages and messages that expire (no network)."""
        while True:
            await asyncio.sleep(1.0)
            self.app.invalidate()

    def _pre_run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.app.create_background_task(self._tick())
        self._drain()

    def run(self) -> int:
        self.feed.start()
        try:
            return self.app.run(pre_run=self._pre_run) or 0
        finally:
            self._loop = None
            self.feed.stop()


def run_top(ctx: Context, args) -> int:
    return Top(ctx, args.view, args.filter, args.resync).run()
