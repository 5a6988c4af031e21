"""Sweeps (pure): ``span:{1..4}`` and ``span:[a,b]`` in a command expand to the Cartesian product.

``expand(["python", "x.py", "--seed", "span:{1..3}", "--lr", "span:[0.1,0.01]"])`` gives six
commands, the first span varying slowest. A span may sit inside a word (``--seed=span:{1..3}``).
``{a..b}`` is an inclusive integer range (descending when a > b); ``[x,y,...]`` a list of words.
"""

from __future__ import annotations

import itertools
import re

from zriver.errors import InvalidArgument

MAX_TASKS = 100_000
_SPAN = re.compile(r"span:(\{(-?\d+)\.\.(-?\d+)\}|\[([^\[\]]*)\])")


def _values(match: re.Match) -> list[str]:
    if match.group(2) is not None:
        low, high = int(match.group(2)), int(match.group(3))
        step = 1 if high >= low else -1
        return [str(v) for v in range(low, high + step, step)]
    items = [item.strip() for item in match.group(4).split(",")]
    if not all(items):
        raise InvalidArgument(f"bad span {match.group(0)!r}: empty value in the list")
    return items


def expand(command: list[str]) -> list[list[str]]:
    """Every command of the sweep (just ``[command]`` when there is no span)."""
    slots: list[tuple[int, re.Match]] = []
    for index, word in enumerate(command):
        if "span:" in word:
            matches = list(_SPAN.finditer(word))
            if not matches:
                raise InvalidArgument(f"bad span in {word!r}: use span:{{1..4}} or span:[a,b]")
            slots.extend((index, m) for m in matches)
    if not slots:
        return [list(command)]
    choices = [_values(m) for _, m in slots]
    total = 1
    for values in choices:
        total *= len(values)
    if total > MAX_TASKS:
        raise InvalidArgument(f"this sweep has {total} tasks; at most {MAX_TASKS} at once")
    result = []
    for combo in itertools.product(*choices):
        words = list(command)
        # replace from the right so earlier match offsets in a word stay valid
        for (index, match), value in sorted(zip(slots, combo), key=lambda p: (p[0][0], -p[0][1].start())):
            word = words[index]
            words[index] = word[: match.start()] + value + word[match.end():]
        result.append(words)
    return result
