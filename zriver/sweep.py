"""Sweeps (pure): ``span:{1..4}`` and ``span:[a,b]`` in a command expand to the Cartesian product.

``expand(["python", "x.py", "--seed", "span:{1..3}", "--lr", "span:[0.1,0.01]"])`` gives six
commands, the first span varying slowest. A span may sit inside a word (``--seed=span:{1..3}``).
``{a..b}`` is an inclusive integer range (descending when a > b); ``[x,y,...]`` a list of words.

``parse`` checks a command's spans and counts its commands without making them (a sweep of
``MAX_TASKS`` is refused before anything is expanded); ``Sweep.commands`` then yields them in
order. The host expands what a client sends (``task.submit`` with a ``sweep``) and
``zriver span`` runs the same expansion locally: this module is the one expander of both.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Iterator

from zriver.errors import InvalidArgument

MAX_TASKS = 1_000_000
"""The most tasks one sweep makes (a bigger one is refused, saying how to split it)."""
_SPAN = re.compile(r"span:(\{(-?\d+)\.\.(-?\d+)\}|\[([^\[\]]*)\])")


@dataclass(frozen=True, slots=True)
class Sweep:
    """A command with its spans parsed: ``count`` commands, made by ``commands()``.

    ``words`` holds, per word of the command, either the word itself (no span in it) or a
    ``str.format`` template whose ``{i}`` fields are the values of span ``i``; ``choices``
    holds each span's values, in the order the spans appear."""

    command: tuple[str, ...]
    words: tuple[tuple[bool, str], ...]
    choices: tuple[tuple[str, ...] | range, ...]
    """A list span's values, or a range span's integers (made into words by ``commands``)."""

    @property
    def count(self) -> int:
        total = 1
        for values in self.choices:
            total *= len(values)
        return total

    @property
    def has_spans(self) -> bool:
        return bool(self.choices)

    def commands(self) -> Iterator[list[str]]:
        """Every command of the sweep, the first span varying slowest (just the command
        itself when it has no span)."""
        if not self.choices:
            yield list(self.command)
            return
        words = self.words
        choices = [tuple(map(str, c)) if isinstance(c, range) else c for c in self.choices]
        for combo in itertools.product(*choices):
            yield [template.format(*combo) if spanned else template
                   for spanned, template in words]


def _length(match: re.Match) -> int:
    if match.group(2) is not None:
        return abs(int(match.group(3)) - int(match.group(2))) + 1
    return match.group(4).count(",") + 1


def _values(match: re.Match) -> tuple[str, ...] | range:
    if match.group(2) is not None:
        low, high = int(match.group(2)), int(match.group(3))
        step = 1 if high >= low else -1
        return range(low, high + step, step)
    items = tuple(item.strip() for item in match.group(4).split(","))
    if not all(items):
        raise InvalidArgument(f"bad span {match.group(0)!r}: empty value in the list")
    return items


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def parse(command: list[str] | tuple[str, ...]) -> Sweep:
    """Check ``command``'s spans and count its commands (nothing is expanded yet).

    ``InvalidArgument`` for a malformed span, an empty list value, or more than
    ``MAX_TASKS`` commands (counted before any span's values are made)."""
    slots: list[re.Match] = []
    words: list[tuple[bool, str]] = []
    for word in command:
        if "span:" not in word:
            words.append((False, word))
            continue
        matches = list(_SPAN.finditer(word))
        if not matches:
            raise InvalidArgument(bad_span_message(word, command))
        parts, end = [], 0
        for match in matches:
            parts.append(_escape(word[end:match.start()]) + "{" + str(len(slots)) + "}")
            slots.append(match)
            end = match.end()
        words.append((True, "".join(parts) + _escape(word[end:])))
    total = 1
    for match in slots:
        total *= _length(match)
        if total > MAX_TASKS:
            raise InvalidArgument(
                f"this sweep has {_count(slots)} tasks; at most {MAX_TASKS} in one submit: "
                f"split it into several submits (e.g. span:{{1..500000}}, then "
                f"span:{{500001..1000000}})")
    return Sweep(tuple(command), tuple(words), tuple(_values(match) for match in slots))


_EXPANDED = re.compile(r"span:(-?\d+)")


def bad_span_message(word: str, command: list[str] | tuple[str, ...]) -> str:
    """Why ``word`` (which has ``span:`` but no span) was refused, and how to quote it.

    ``span:{1..3}`` unquoted reaches zriver as ``span:1 span:2 span:3`` (brace expansion), and
    ``span:[a,b]`` as a file name when one matches the glob: both say to quote the span."""
    quote = "quote spans so that the shell leaves them alone: 'span:{1..100}' 'span:[0.1,0.01]'"
    run = _expanded_run(word, list(command))
    if run and run[0] != run[1]:
        low, high = run
        return (f"bad span in {word!r}: it looks like span:{{{low}..{high}}} expanded by the "
                f"shell into separate words; write 'span:{{{low}..{high}}}' (in quotes). {quote}")
    return (f"bad span in {word!r}: use span:{{1..4}} or span:[a,b]; if you typed one, the shell "
            f"changed it (brace expansion, or a file name that matched the [...] glob): {quote}")


def _expanded_run(word: str, command: list[str]) -> tuple[int, int] | None:
    """The (first, last) integers of the run of consecutive ``span:N`` words that starts at
    ``word`` (None when ``word`` is not ``span:N``)."""
    match = _EXPANDED.fullmatch(word)
    if not match:
        return None
    start = command.index(word)
    numbers = [int(match.group(1))]
    for following in command[start + 1:]:
        nxt = _EXPANDED.fullmatch(following)
        if not nxt or abs(int(nxt.group(1)) - numbers[-1]) != 1:
            break
        numbers.append(int(nxt.group(1)))
    return numbers[0], numbers[-1]


def _count(slots: list[re.Match]) -> int:
    total = 1
    for match in slots:
        total *= _length(match)
    return total


def expand(command: list[str]) -> list[list[str]]:
    """Every command of the sweep (just ``[command]`` when there is no span)."""
    return list(parse(command).commands())
