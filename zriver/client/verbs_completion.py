"""``zriver completion bash|zsh|fish`` (print a completion script) and the hidden
``zriver __complete WORD...`` that those scripts run for live values.

``__complete`` is not a verb of the registry (it is in no help and no shell): ``cli.main``
hands it the words after ``zriver`` up to the cursor, the last one being the word typed (maybe
empty). Options before the verb (``--host``, ``--key``, ``--host-key``, ``--timeout``) choose
the host as they would for the command. It prints ``completion.candidates`` for the line, as
``WORD<TAB>DESCRIPTION`` lines (``WORD`` is the whole new word), reading from the host only
what that word needs (``HostSource``). It always exits 0, never writes to stderr, and answers
within ``BUDGET`` seconds after its imports: a host that is down or silent just gives no lines.
"""

from __future__ import annotations

import os
import shlex
import sys
import threading
import time
from typing import Callable

from zriver.client.registry import Context, arg, command
from zriver.client.shellscripts import SHELLS, global_flags, script

#: Seconds ``__complete`` may spend reading the host, after its imports.
BUDGET = 0.8
#: Tasks read for completion: unfinished ones, then the newest (as the shell's cache holds).
TASK_LIMIT = 200
UNFINISHED = ["pending", "assigned", "running", "paused", "unreachable"]


@command("completion", "print a shell completion script (for bash, zsh or fish)",
         arg("shell", choices=SHELLS, help="the shell the script is for"),
         needs_cluster=False)
def completion(ctx: Context, args) -> int:
    """Verbs, flags and choices are baked into the script; task ids, node names and envs come
    from the host as you press Tab. Write it where your shell loads completions from: see
    "Shell completion" in docs/terminal.md."""
    ctx.out.write(script(args.shell))
    ctx.out.flush()
    return 0


def split_globals(words: list[str]) -> tuple[dict[str, str], list[str]]:
    """The options before the verb (``{"--host": "tcp://..."}``) and the words from the verb
    on. An option that takes a value takes the next word, or its ``=VALUE``."""
    takes = {form: flag.takes_value for flag in global_flags() for form in flag.forms}
    found: dict[str, str] = {}
    index = 0
    while index < len(words) - 1 and words[index].startswith("-"):
        name, eq, value = words[index].partition("=")
        if takes.get(name) and not eq:
            if index + 1 >= len(words) - 1:
                break  # the word typed is this option's value
            value = words[index + 1]
            index += 1
        found[name] = value
        index += 1
    return found, words[index:]


def line_of(words: list[str]) -> str:
    """The words as ``candidates`` reads a line: finished words quoted, the last one raw."""
    head = " ".join(shlex.quote(word) for word in words[:-1])
    return f"{head} {words[-1]}" if head else words[-1]


class HostSource:
    """A ``completion.Source`` read from the host on first use of each kind, each read bounded
    by ``deadline`` (``time.monotonic``); a failed read gives nothing."""

    def __init__(self, new_client: Callable, deadline: float) -> None:
        self._new_client = new_client
        self._client = None
        self._failed = False
        self.deadline = deadline

    def _call(self, op: str, body: dict | None = None) -> dict:
        left = self.deadline - time.monotonic()
        if left <= 0 or self._failed:
            return {}
        try:
            if self._client is None:
                self._client = self._new_client(left)
            return self._client.call(op, body or {}, timeout=left)
        except Exception:  # noqa: BLE001  (no host, refused, slow: completion just offers less)
            self._failed = True  # the next read would wait as long for the same answer
            return {}

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def tasks(self):
        from zriver.client.completion import TaskInfo

        unfinished = self._call("task.list", {"states": UNFINISHED, "limit": TASK_LIMIT})
        recent = self._call("task.list", {"limit": TASK_LIMIT})
        rows, seen = [], set()
        for row in (unfinished.get("tasks") or []) + (recent.get("tasks") or []):
            if row.get("id") not in seen:
                seen.add(row.get("id"))
                rows.append(TaskInfo(int(row["id"]), str(row.get("name") or ""),
                                     str(row.get("state") or "")))
        return rows

    def nodes(self):
        from zriver.client.completion import NodeInfo

        return [NodeInfo(str(n["name"]), str(n.get("state") or ""),
                         int(n.get("numa_zones") or 1),
                         tuple((int(g.get("index", i)), str(g.get("name", "")))
                               for i, g in enumerate(n.get("gpus") or []) if isinstance(g, dict)))
                for n in self._call("node.list").get("nodes") or []]

    def envs(self):
        from zriver.client.live import env_names

        return env_names(self._call("env.list"))


def answer(words: list[str], deadline: float) -> list[str]:
    """The ``WORD<TAB>DESCRIPTION`` lines for ``words`` (the last one being typed)."""
    from zriver.client.completion import candidates

    if not words:
        words = [""]
    options, rest = split_globals(words)
    ctx = Context(host=options.get("--host"), key=options.get("--key"),
                  host_key=options.get("--host-key"))
    source = HostSource(lambda left: ctx.new_client(timeout=left), deadline)
    try:
        found = candidates(line_of(rest), source, in_shell=False)
    finally:
        source.close()
    current = rest[-1]
    lines = []
    for c in found:
        word = current[: len(current) - c.replace] + c.text
        lines.append(f"{word}\t{_one_line(c.meta)}" if c.meta else word)
    return lines


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _quiet_stderr() -> None:
    """Send fd 2 to /dev/null: no log line or library warning reaches the person's prompt."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)


def hidden_complete(words: list[str]) -> int:
    """``zriver __complete WORD...``: print ``answer`` within ``BUDGET`` seconds, exit 0.

    The answer is worked out on a daemon thread; when it is late the process ends at once
    (``os._exit``: a socket still waiting on a silent host must not hold the exit up)."""
    from zriver.client import completion, live  # noqa: F401  (loaded before the clock starts)

    _quiet_stderr()
    deadline = time.monotonic() + BUDGET
    lines: list[str] = []

    def work() -> None:
        try:
            lines.extend(answer(words, deadline))
        except Exception:  # noqa: BLE001  (completion never prints a traceback)
            pass

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    worker.join(max(0.0, deadline - time.monotonic()) + 0.1)
    if worker.is_alive():
        sys.stdout.flush()
        os._exit(0)
    try:
        sys.stdout.write("".join(f"{line}\n" for line in lines))
        sys.stdout.flush()
    except BrokenPipeError:
        pass
    return 0
