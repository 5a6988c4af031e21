"""``zriver shell``: an interactive prompt on the cluster, built on the one command registry.

Each line is split with ``shlex`` and parsed by ``build_parser(with_globals=False,
parser_class=ShellParser)``, the very parser of ``zriver VERB`` (a usage error or ``-h`` prints
and returns to the prompt, never leaves the shell), then the verb runs with the shell's
``Context`` (one client, the shell's ``--host`` and ``--timeout``). The shell adds ``help``,
``exit`` and ``quit``.

Around the prompt (prompt-toolkit):

* completion from the registry (``completion.py``) over a cache of the cluster;
* history in ``$ZRIVER_HOME/shell_history`` (Up, Ctrl-R), suggestions from it (Right accepts);
* a bottom toolbar with nodes online, tasks running/pending and free GPUs;
* tasks that end while you type are announced above the prompt (yours and those of unknown
  owner; an ending of several at once is one line).

The cache, the toolbar and the announcements come from a ``live.Feed`` thread with its own
client and SUB socket; its data lives in ``ShellState`` under a lock. The prompt never waits on
the network. Ctrl-C stops a running verb (``logs -f``...) and comes back to the prompt; at the
prompt it clears the line; Ctrl-D leaves.
"""

from __future__ import annotations

import difflib
import shlex
import sys
import threading
import time
from typing import Any, Callable

from prompt_toolkit import PromptSession
from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
from prompt_toolkit.history import FileHistory, InMemoryHistory
from prompt_toolkit.patch_stdout import StdoutProxy
from prompt_toolkit.styles import Style

from zriver.client.completion import (NOT_IN_SHELL, NodeInfo, RegistryCompleter, TaskInfo,
                                      shell_verbs)
from zriver.client.live import Feed
from zriver.client.registry import Context, ShellParser, UsageError, build_parser, lookup
from zriver.client.topmodel import ClusterModel
from zriver.config import zriver_home
from zriver.errors import ZriverError
from zriver import lifecycle as lc

PROMPT = "zriver> "
HISTORY_FILE = "shell_history"
STYLE = Style.from_dict({
    "prompt": "bold ansicyan",
    "bottom-toolbar": "noreverse bg:#303030 #d0d0d0",
    "bottom-toolbar.ok": "bg:#303030 ansigreen bold",
    "bottom-toolbar.bad": "bg:#303030 ansired bold",
    "bottom-toolbar.dim": "bg:#303030 #808080",
})
#: More task endings than this in one batch are announced as one summary line.
ANNOUNCE_EACH = 3
_COLOURS = {lc.COMPLETED: "\x1b[32m", lc.FAILED: "\x1b[31m", lc.KILLED_OOM: "\x1b[31m",
            lc.LOST: "\x1b[33m", lc.KILLED: "\x1b[33m", lc.TIMEOUT: "\x1b[31m"}


class ShellState:
    """What the feed knows, shared by the feed thread (writer) and the prompt (reader).

    A ``live.Sink`` (fed by the thread), a ``completion.Source`` (read when Tab is pressed) and
    the toolbar's text. ``on_change`` redraws the prompt; ``announce`` prints lines above it.
    """

    def __init__(self, endpoint: str, me: str) -> None:
        self.endpoint, self.me = endpoint, me
        self.lock = threading.Lock()
        self.model = ClusterModel()
        self.env_names: list[str] = []
        self.connected: bool | None = None
        self.problem = ""
        self.on_change: Callable[[], None] = lambda: None
        self.announce: Callable[[list[str]], None] = lambda lines: None
        self.feed: Feed | None = None

    # ---- live.Sink ---------------------------------------------------------------------
    def identity(self, name: str) -> None:
        """The host's name for this client (its key's): "your" tasks are the ones it owns.
        Until the host says, the local account's name stands in."""
        if name:
            self.me = name

    def snapshot(self, nodes: list[dict], tasks: list[dict], envs: list[str] | None,
                 counts: dict[str, int] | None = None) -> None:
        with self.lock:
            self.model.load(nodes, tasks, time.time(), counts)
            if envs is not None:
                self.env_names = envs
        self.on_change()

    def counts(self, counts: dict[str, int]) -> None:
        with self.lock:
            self.model.set_counts(counts)
        self.on_change()

    def messages(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        ended = []
        now = time.time()
        with self.lock:
            for topic, body in batch:
                if topic.startswith("evt.task.") and lc.is_final(body.get("state") or ""):
                    known = self.model.lookup(body.get("id"))
                    if known is None or not lc.is_final(known.state):
                        owner = known.owner if known is not None and known.known else ""
                        if owner in ("", self.me):
                            ended.append(body)
                self.model.apply(topic, body, now)
            unknown = set(self.model.unknown_tasks)
        if unknown and self.feed is not None:
            self.feed.want_tasks(unknown)
        if ended:
            self.announce(announcement(ended))
        self.on_change()

    def nodes(self, rows: list[dict]) -> None:
        with self.lock:
            self.model.load_nodes(rows)
        self.on_change()

    def task(self, row: dict) -> None:
        with self.lock:
            self.model.upsert_task(row)
        self.on_change()

    def pending(self, rows: list[dict]) -> None:
        with self.lock:
            self.model.refresh_pending(rows)
        self.on_change()

    def status(self, connected: bool, message: str) -> None:
        changed = connected != self.connected
        self.connected, self.problem = connected, message
        if changed:
            self.on_change()

    # ---- completion.Source -------------------------------------------------------------
    def tasks(self) -> list[TaskInfo]:
        with self.lock:
            unfinished = sorted(self.model.tasks.values(), key=lambda t: -t.id)
            finished = list(reversed(self.model.finished.values()))
        return [TaskInfo(t.id, t.name, t.state) for t in unfinished + finished]

    def nodes_info(self) -> list[NodeInfo]:
        with self.lock:
            return [NodeInfo(n.name, n.state, n.numa_zones,
                             tuple((int(g.get("index", i)), str(g.get("name", "")))
                                   for i, g in enumerate(n.gpus)))
                    for n in (self.model.nodes[name] for name in sorted(self.model.nodes))]

    def envs(self) -> list[str]:
        with self.lock:
            return list(self.env_names)

    # ---- the toolbar -------------------------------------------------------------------
    def toolbar(self) -> list[tuple[str, str]]:
        where = self.endpoint.removeprefix("tcp://")
        if self.connected is None:
            return [("class:bottom-toolbar.dim", f" connecting to {where}…")]
        if not self.connected:
            return [("class:bottom-toolbar.bad", " ○ "),
                    ("class:bottom-toolbar", f"no answer from {where}; retrying ")]
        with self.lock:
            s = self.model.summary()
        nodes_style = "class:bottom-toolbar.ok" if s.nodes_online else "class:bottom-toolbar.bad"
        tasks = f"{s.running} running · {s.pending} pending"
        if s.paused:
            tasks += f" · {s.paused} paused"
        gpus = f"GPUs {s.gpus_free}/{s.gpus} free" if s.gpus else "no GPUs online"
        return [(nodes_style, " ● "),
                ("class:bottom-toolbar", f"{s.nodes_online}/{s.nodes} nodes online │ {tasks} │ "
                                         f"{gpus} "),
                ("class:bottom-toolbar.dim", f"│ {where}  Tab completes · help · Ctrl-D quits ")]


class _NodeSource:
    """``ShellState`` seen as a ``completion.Source`` (its ``nodes`` is the sink's method)."""

    def __init__(self, state: ShellState) -> None:
        self.state = state

    def tasks(self) -> list[TaskInfo]:
        return self.state.tasks()

    def nodes(self) -> list[NodeInfo]:
        return self.state.nodes_info()

    def envs(self) -> list[str]:
        return self.state.envs()


def announcement(ended: list[dict[str, Any]]) -> list[str]:
    """Lines announcing ended tasks (each, or one summary line for many)."""
    if len(ended) > ANNOUNCE_EACH:
        counts: dict[str, int] = {}
        for body in ended:
            counts[body["state"]] = counts.get(body["state"], 0) + 1
        parts = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        return [f"• {len(ended)} tasks ended: {parts}"]
    lines = []
    for body in ended:
        name = f" ({body['name']})" if body.get("name") else ""
        code = f" (exit {body['exit_code']})" if body.get("exit_code") else ""
        colour = _COLOURS.get(body["state"], "")
        lines.append(f"• task {body['id']}{name} {colour}{body['state']}"
                     f"{chr(27) + '[0m' if colour else ''}{code}")
    return lines


class Announcer:
    """Prints lines above the prompt while it is shown, else keeps them for the next one."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.at_prompt = False
        self.pending: list[str] = []
        self.proxy = StdoutProxy(raw=True)

    def __call__(self, lines: list[str]) -> None:
        with self.lock:
            if self.at_prompt:
                self.proxy.write("".join(line + "\n" for line in lines))
                self.proxy.flush()
            else:
                self.pending.extend(lines)

    def prompting(self, now: bool) -> None:
        with self.lock:
            if now and self.pending:
                sys.stdout.write("".join(line + "\n" for line in self.pending))
                sys.stdout.flush()
                self.pending.clear()
            self.at_prompt = now

    def close(self) -> None:
        self.proxy.close()


class Shell:
    """Runs lines as verbs; ``run_lines`` is the whole shell when the input is not a terminal
    (``zriver shell < commands.txt``): no prompt, no feed, exit status of the last line."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.parser = build_parser("", with_globals=False, parser_class=ShellParser)
        self.after_submit: Callable[[], None] = lambda: None

    def run_lines(self, lines) -> int:
        status = 0
        for line in lines:
            try:
                status = self.execute(line) or 0
            except EOFError:
                break
        return status

    # ---- one line ----------------------------------------------------------------------
    def execute(self, line: str) -> int | None:
        """Run one line; return its status: the verb's, 1 for a zriver error, 2 for a line that
        does not parse, 130 when interrupted; None when nothing ran (blank, help)."""
        try:
            words = shlex.split(line)
        except ValueError as exc:
            self.error(f"cannot read that line: {exc}")
            return 2
        if not words:
            return None
        first = words[0]
        if first in ("exit", "quit"):
            raise EOFError
        if first == "help":
            self.help(words[1:])
            return None
        if first in NOT_IN_SHELL:
            self.error(f"`{first}` does not run inside the shell: {NOT_IN_SHELL[first]}")
            return 2
        cmd, _ = lookup(words)
        if cmd is None and first not in shell_verbs():
            near = difflib.get_close_matches(first, list(shell_verbs()), n=1)
            self.error(f"unknown command {first!r}"
                       + (f"; did you mean {near[0]!r}?" if near else "; `help` lists them"))
            return 2
        try:
            args, extra = self.parser.parse_known_args(words)
            if extra:
                getattr(args, "_parser", self.parser).error(
                    f"unrecognized arguments: {' '.join(extra)}")
        except UsageError as exc:
            if str(exc):
                print(str(exc), file=sys.stderr if exc.status else sys.stdout, flush=True)
            return exc.status or None
        command = getattr(args, "_command", None)
        if command is None:  # a group without its sub-verb: "init"
            self.help([first])
            return None
        return self.run_verb(command, args)

    def run_verb(self, command, args) -> int:
        try:
            status = command.run(self.ctx, args)
            if status and sys.stdout.isatty():
                print(f"\x1b[2m(exit status {status})\x1b[0m", flush=True)
        except ZriverError as exc:
            self.error(f"{exc.code}: {exc}")
            status = 1
        except KeyboardInterrupt:
            print(" stopped", file=sys.stderr, flush=True)
            status = 130
        except SystemExit as exc:  # a verb may exit; the shell stays
            status = exc.code if isinstance(exc.code, int) else 1
        except BrokenPipeError:
            status = 0
        except Exception as exc:  # a bug in a verb must not end the session
            self.error(f"internal error in {command.name}: {exc!r}")
            status = 1
        finally:
            if command.name == "submit":
                self.after_submit()
        return status

    def help(self, words: list[str]) -> None:
        if words:
            try:
                self.parser.parse_args([*words, "--help"])
            except UsageError as exc:
                if exc.status:
                    self.error(f"no help for {' '.join(words)!r}: `help` lists the commands")
            return
        verbs = shell_verbs()
        width = max(map(len, verbs))
        print("Commands (the same as `zriver VERB`; `help VERB` or `VERB -h` for details):")
        for word, summary in verbs.items():
            print(f"  {word:<{width}}  {summary}")
        print("Tab completes verbs, flags, task ids, nodes and environments; Up and Ctrl-R search"
              "\nthe history; Ctrl-C stops a running command; Ctrl-D leaves.", flush=True)

    @staticmethod
    def error(message: str) -> None:
        print(f"error: {message}", file=sys.stderr, flush=True)


class InteractiveShell(Shell):
    """The prompt: completion, history, toolbar, announcements; ``run`` until Ctrl-D/exit."""

    def __init__(self, ctx: Context, history: bool = True) -> None:
        from zriver.client.verbs_tasks import owner

        super().__init__(ctx)
        self.state = ShellState(ctx.client.endpoint, owner())
        self.announcer = Announcer()
        self.state.announce = self.announcer
        self.session = PromptSession(
            [("class:prompt", PROMPT)], history=self._history(history),
            completer=RegistryCompleter(_NodeSource(self.state)), complete_while_typing=False,
            auto_suggest=AutoSuggestFromHistory(), bottom_toolbar=self.state.toolbar,
            style=STYLE)
        self.state.on_change = self.session.app.invalidate
        self.feed = Feed(ctx.host, self.state, timeout=min(ctx.timeout, 3.0), envs=True,
                         key=ctx.key, host_key=ctx.host_key)
        self.state.feed = self.feed
        self.after_submit = self.feed.resync_soon  # the host publishes nothing for a submit

    @staticmethod
    def _history(enabled: bool):
        if not enabled:
            return InMemoryHistory()
        home = zriver_home()
        try:
            home.mkdir(parents=True, exist_ok=True)
            return FileHistory(str(home / HISTORY_FILE))
        except OSError:
            return InMemoryHistory()

    def run(self) -> int:
        self.feed.start()
        try:
            while True:
                self.announcer.prompting(True)
                try:
                    line = self.session.prompt()
                except KeyboardInterrupt:
                    continue  # Ctrl-C at the prompt: a fresh line
                except EOFError:
                    return 0
                finally:
                    self.announcer.prompting(False)
                try:
                    self.execute(line)
                except EOFError:
                    return 0
        finally:
            self.feed.stop()
            self.announcer.close()


def run_shell(ctx: Context, args) -> int:
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        return Shell(ctx).run_lines(sys.stdin)
    return InteractiveShell(ctx, history=not args.no_history).run()
