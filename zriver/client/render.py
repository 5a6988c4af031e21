"""Human output: aligned tables, ages, sizes. Machine output is JSON and lives in the verbs."""

from __future__ import annotations

import json
import time
from typing import Any, Iterable, Sequence

from zriver.sizes import format_duration, format_size


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces; ``None`` shows as ``-``."""
    cells = [[("-" if v is None else str(v)) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], len(value))
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths)).rstrip()]
    for row in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    return "\n".join(lines)


def age(ts: float | None, now: float | None = None) -> str:
    """``3m12s ago``-style age of a timestamp, without the "ago"."""
    if ts is None:
        return "-"
    return format_duration(max(0.0, (now or time.time()) - ts))


def when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) + f" ({age(ts)} ago)"


def as_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=_bytes)


def _bytes(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    raise TypeError(type(value).__name__)


def size(n: int | None) -> str:
    return format_size(n)


def shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
