"""Tab completion for ``zriver shell``, driven by the command registry alone.

``candidates(text, source)`` is pure: given the line up to the cursor and a ``Source`` of
cached cluster data, it returns what may replace the word being typed. Verbs come from the
registry (each with its summary), flags from the command's ``Arg``s (each with its help), and
values by the ``Arg``'s ``complete`` kind:

* ``task``: task ids, unfinished first, each shown with its name and state; a word that is not
  a number matches task names (``logs tra<Tab>`` -> the id of task "train");
* ``node``: node names; ``target`` (and ``node`` for ``--target``): also ``node:ZONE`` (each
  NUMA zone) and ``node::GPU`` (each GPU), offered once the word names one node;
* ``env``: environment names (``env.list``, where the host has it);
* ``state``: task states; an option with ``choices`` completes them.

``RegistryCompleter`` adapts it to prompt-toolkit. The source is a cache the shell keeps
current from the event stream: completing never waits on the network. ``zriver __complete``
(``verbs_completion``) runs the same ``candidates`` for the scripts of ``zriver completion``,
with ``in_shell=False`` (the command line's verbs, not the shell's) and a source read once from
the host.
"""

from __future__ import annotations

import functools
import re
import shlex
from dataclasses import dataclass
from typing import Protocol

from zriver.client.commands import REGISTRY  # every verb registered
from zriver.client.registry import Arg, Command, lookup, takes_value
from zriver import lifecycle as lc

#: Words the shell understands itself, with what they do.
BUILTINS = {"help": "list the commands, or explain one: help VERB",
            "exit": "leave the shell (or Ctrl-D)", "quit": "leave the shell (or Ctrl-D)"}
#: Registered verbs the shell does not run: long-lived roles, and itself.
NOT_IN_SHELL = {"shell": "you are in it",
                "up": "run it in another terminal (or `zriver up -d`, in the background)",
                "down": "run it outside the shell (it stops the host this shell talks to)",
                "host": "run it in another terminal", "runner": "run it in another terminal"}


@dataclass(frozen=True, slots=True)
class Candidate:
    """One completion: ``text`` replaces the last ``replace`` characters before the cursor.

    ``space``: a space follows when it is taken (a finished word; not a node name that may go
    on with ``:ZONE``)."""

    text: str
    replace: int
    display: str = ""
    meta: str = ""
    space: bool = True


@dataclass(frozen=True, slots=True)
class TaskInfo:
    id: int
    name: str
    state: str


@dataclass(frozen=True, slots=True)
class NodeInfo:
    name: str
    state: str
    numa_zones: int
    gpus: tuple[tuple[int, str], ...]  # (index, model name)


class Source(Protocol):
    """Cluster data for completion: the shell's cache (answers at once), or reads of the host
    bounded by a deadline (``verbs_completion.HostSource``)."""

    def tasks(self) -> list[TaskInfo]:
        """Unfinished tasks first, then recently finished ones, newest first."""

    def nodes(self) -> list[NodeInfo]: ...

    def envs(self) -> list[str]: ...


def command_verbs() -> dict[str, str]:
    """First words of ``zriver VERB``: every verb (a group of sub-verbs once), no builtins."""
    words: dict[str, str] = {}
    for name, cmd in sorted(REGISTRY.items()):
        first = name.split()[0]
        words[first] = cmd.summary if first == name else f"{first} commands"
    return words


def shell_verbs() -> dict[str, str]:
    """First words the shell completes: verbs (a group of sub-verbs once) and builtins."""
    words = {word: summary for word, summary in command_verbs().items()
             if word not in NOT_IN_SHELL}
    return {**words, **BUILTINS}


def split_line(text: str) -> tuple[list[str], str]:
    """The finished words before the cursor and the word being typed (raw)."""
    current = re.search(r"\S*$", text).group(0)
    head = text[: len(text) - len(current)]
    try:
        words = shlex.split(head)
    except ValueError:  # an open quote: good enough for completion
        words = head.replace('"', " ").replace("'", " ").split()
    return words, current


def _option(cmd: Command, word: str) -> Arg | None:
    for item in cmd.args:
        if word in item.flags:
            return item
    return None


def _positionals(cmd: Command) -> list[Arg]:
    return [item for item in cmd.args if not item.flags[0].startswith("-")]


def _positional_at(cmd: Command, words: list[str]) -> Arg | None:
    """Which positional argument the next word would be, after ``words`` (the verb's own)."""
    count, skip = 0, False
    for word in words:
        if skip:
            skip = False
            continue
        if word.startswith("-") and word != "-":
            option = _option(cmd, word.split("=", 1)[0])
            skip = option is not None and takes_value(option) and "=" not in word
            continue
        count += 1
    for item in _positionals(cmd):
        nargs = item.options.get("nargs")
        if nargs in ("+", "*", "..."):
            return item
        if count == 0:
            return item
        count -= 1
    return None


def candidates(text: str, source: Source, in_shell: bool = True) -> list[Candidate]:
    """Completions of the word before the cursor in ``text`` (see the module docstring):
    a line of ``zriver shell``, or with ``in_shell=False`` the words after ``zriver``."""
    words, current = split_line(text)
    first_words = shell_verbs() if in_shell else command_verbs()
    if not words:
        return _match(first_words.items(), current)
    if words[0] == "help" and in_shell:
        return _match(first_words.items(), current) if len(words) == 1 else []
    cmd, used = lookup(words)
    if cmd is None:
        group = {name.split()[1]: c.summary for name, c in REGISTRY.items()
                 if len(name.split()) == 2 and name.split()[0] == words[0]}
        return _match(group.items(), current) if len(words) == 1 else []
    if cmd.name in NOT_IN_SHELL and in_shell:
        return []
    rest = words[used:]
    if "--" in rest:
        return []  # the task's own command line
    previous = rest[-1] if rest else ""
    option = _option(cmd, previous) if previous.startswith("-") else None
    if option is not None and takes_value(option):
        return _values(option, previous, current, source)
    if current.startswith("-") and "=" in current:
        flag, _, value = current.partition("=")
        option = _option(cmd, flag)
        return _values(option, flag, value, source) if option is not None else []
    if current.startswith("-"):
        return _flags(cmd, rest, current)
    positional = _positional_at(cmd, rest)
    found = _values(positional, "", current, source) if positional is not None else []
    if not found and not current:
        return _flags(cmd, rest, current)
    return found


def _match(items, current: str) -> list[Candidate]:
    return [Candidate(word, len(current), meta=meta) for word, meta in items
            if word.startswith(current)]


def _flags(cmd: Command, used: list[str], current: str) -> list[Candidate]:
    result = []
    for item in cmd.args:
        if not item.flags[0].startswith("-"):
            continue
        repeatable = item.options.get("action") == "append"
        if not repeatable and any(flag in used for flag in item.flags):
            continue
        flag = max(item.flags, key=len)  # --follow rather than -f
        if flag.startswith(current):
            result.append(Candidate(flag, len(current), meta=item.options.get("help", "")))
    if "-h".startswith(current) or "--help".startswith(current):
        result.append(Candidate("--help", len(current), meta="show this command's help"))
    return result


def _values(item: Arg | None, flag: str, current: str, source: Source) -> list[Candidate]:
    if item is None:
        return []
    kind = item.complete
    choices = item.options.get("choices")
    if kind == "state" or (choices and kind is None):
        return _match(((str(c), "") for c in (choices or lc.ALL_STATES)), current)
    if kind == "task":
        return _tasks(source.tasks(), current)
    if kind in ("node", "target"):
        return _nodes(source.nodes(), current, targets=kind == "target" or flag == "--target")
    if kind == "env":
        return _match(((name, "environment") for name in source.envs()), current)
    return []


def _tasks(tasks: list[TaskInfo], current: str) -> list[Candidate]:
    by_id = current.isdigit() or not current
    needle = current.lower()
    result = []
    for task in tasks:
        if (str(task.id).startswith(current) if by_id else needle in task.name.lower()):
            label = f"{task.name} · {task.state}" if task.name else task.state
            result.append(Candidate(str(task.id), len(current), str(task.id), label))
    return result


def _nodes(nodes: list[NodeInfo], current: str, targets: bool) -> list[Candidate]:
    name = current.split(":", 1)[0]
    result = [Candidate(n.name, len(current), meta=n.state, space=not targets) for n in nodes
              if n.name.startswith(current)]
    if not targets:
        return result
    exact = [n for n in nodes if n.name == name] or (
        [n for n in nodes if n.name.startswith(name)] if len(result) == 1 else [])
    for node in exact:
        forms = [(f"{node.name}:{zone}", f"NUMA zone {zone}") for zone in range(node.numa_zones)]
        forms += [(f"{node.name}::{index}", f"GPU {index} {model}".rstrip())
                  for index, model in node.gpus]
        result += [Candidate(text, len(current), meta=meta) for text, meta in forms
                   if text.startswith(current)]
    return result


@functools.cache
def _completer_class() -> type:
    from prompt_toolkit.completion import Completer, Completion

    class RegistryCompleter(Completer):
        """prompt-toolkit's face of ``candidates``."""

        def __init__(self, source: Source) -> None:
            self.source = source

        def get_completions(self, document, complete_event):
            for c in candidates(document.text_before_cursor, self.source):
                yield Completion(c.text + " " if c.space else c.text, -c.replace,
                                 display=c.display or c.text, display_meta=c.meta or None)

    return RegistryCompleter


def __getattr__(name: str):
    """``RegistryCompleter`` is made on first use, so that prompt-toolkit (a third of a second
    to import) loads for the shell only, not for every ``zriver __complete``."""
    if name == "RegistryCompleter":
        return _completer_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
