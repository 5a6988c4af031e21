"""The one command registry: every verb is declared once and drives argparse, ``zriver shell``
(completion, ``help``) and ``--json`` output alike.

A verb is a function ``run(ctx, args) -> exit code`` registered with ``@command(name, summary,
*args)``. ``name`` may have two words (``"init config"``) for a verb with a sub-verb. ``Arg``
carries the argparse options and, for the shell, what kind of value completes it (``task``,
``node``, ...). ``build_parser`` turns the registry into an ``argparse`` parser; nothing else
parses command lines.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, TextIO

from zriver import __version__
from zriver.client.api import Client


@dataclass(frozen=True)
class Arg:
    """One argparse argument plus a completion hint (``task``, ``node``, ``state``...)."""

    flags: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)
    complete: str | None = None


def arg(*flags: str, complete: str | None = None, **options: Any) -> Arg:
    return Arg(tuple(flags), options, complete)


JSON = arg("--json", action="store_true", help="print JSON (stable field names) instead of a table")


@dataclass
class Command:
    name: str
    summary: str
    run: Callable[["Context", argparse.Namespace], int]
    args: tuple[Arg, ...]
    description: str = ""
    needs_cluster: bool = True


REGISTRY: dict[str, Command] = {}


def command(name: str, summary: str, *args: Arg, description: str = "",
            needs_cluster: bool = True):
    """Register the decorated function as verb ``name``."""

    def decorate(run: Callable[["Context", argparse.Namespace], int]):
        REGISTRY[name] = Command(name, summary, run, args, description or run.__doc__ or "",
                                 needs_cluster)
        return run

    return decorate


@dataclass
class Context:
    """What a verb may use: the host address and keys, output streams, and a lazily made
    client (``key``: a secret key file, ``host_key``: z85, from ``--key``/``--host-key``)."""

    host: str | None = None
    timeout: float = 10.0
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    log_json: bool = False
    key: str | None = None
    host_key: str | None = None
    _client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = self.new_client()
        return self._client

    def new_client(self, timeout: float | None = None) -> Client:
        """A fresh ``Client`` with this context's host and keys (the caller closes it)."""
        return Client(self.host, self.timeout if timeout is None else timeout,
                      key=self.key, host_key=self.host_key)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def print(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)


class UsageError(Exception):
    """A command line ``ShellParser`` refused, or ``-h`` (``status`` 0, help already printed).

    ``str(err)`` is what argparse would have printed before exiting (usage and message)."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


class ShellParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that raises ``UsageError`` where argparse would exit the process
    (usage errors, ``-h``): what ``zriver shell`` parses each line with. ``exit_on_error=False``
    alone is not enough: missing arguments, ``-h`` and sub-parser errors still exit."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if isinstance(kwargs.get("prog"), str):
            kwargs["prog"] = kwargs["prog"].strip()  # "usage: kill ID", not "usage:  kill ID"
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise UsageError(f"{self.format_usage()}{self.prog}: error: {message}", 2)

    def exit(self, status: int = 0, message: str | None = None):
        raise UsageError((message or "").rstrip("\n"), status)


def build_parser(prog: str = "zriver", *, with_globals: bool = True,
                 parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser,
                 ) -> argparse.ArgumentParser:
    """The argparse parser of every registered verb (``with_globals`` adds --host etc.;
    ``parser_class=ShellParser`` gives one that raises instead of exiting)."""
    parser = parser_class(
        prog=prog, description="zriver: run tasks, sweeps and environments on a small cluster.")
    if with_globals:
        parser.add_argument("--version", action="version", version=f"zriver {__version__}")
        parser.add_argument("--host", help="host address (tcp://HOST:PORT or HOST[:PORT]); "
                            "default: $ZRIVER_HOST, then the local cluster")
        parser.add_argument("--key", metavar="FILE",
                            help="your secret key file (default: $ZRIVER_KEY, client.toml, "
                                 "then $ZRIVER_HOME/keys/client.key_secret)")
        parser.add_argument("--host-key", metavar="KEY",
                            help="the host's public key, z85 (default: $ZRIVER_HOST_KEY, "
                                 "client.toml, then a host on this machine)")
        parser.add_argument("--timeout", type=float, default=10.0,
                            help="seconds to wait for the host to answer (default 10)")
        parser.add_argument("--log-json", action="store_true",
                            help="log as JSON lines (for machines)")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, cmd in sorted(REGISTRY.items()):
        words = name.split()
        if len(words) == 1:
            sub = verbs.add_parser(name, help=cmd.summary, description=cmd.description)
        else:
            if words[0] not in groups:
                group = verbs.add_parser(words[0], help=f"{words[0]} commands")
                groups[words[0]] = group.add_subparsers(dest="subverb", metavar="SUBVERB")
            sub = groups[words[0]].add_parser(words[1], help=cmd.summary,
                                              description=cmd.description)
        for item in cmd.args:
            sub.add_argument(*item.flags, **item.options)
        sub.set_defaults(_command=cmd, _parser=sub)
    return parser


def verb_names() -> list[str]:
    return sorted(REGISTRY)


def lookup(words: list[str]) -> tuple[Command | None, int]:
    """The command that the leading ``words`` name and how many words its name took
    (``["init", "config", "--host"]`` -> (init config, 2)); ``(None, 0)`` when none."""
    if len(words) >= 2 and f"{words[0]} {words[1]}" in REGISTRY:
        return REGISTRY[f"{words[0]} {words[1]}"], 2
    if words and words[0] in REGISTRY:
        return REGISTRY[words[0]], 1
    return None, 0


def takes_value(item: Arg) -> bool:
    """Whether an option ``item`` consumes the next word (``--cores 2``, not ``--json``)."""
    action = item.options.get("action", "store")
    return action in ("store", "append") and item.options.get("nargs") != 0
