"""Human sizes and durations: parsing what people type, formatting what they read."""

from __future__ import annotations

import re

from zriver.errors import InvalidArgument

_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """Bytes in ``text``: ``512``, ``512M``, ``1.5G``, ``2GiB``, ``4gb`` (binary units).

    Raises ``InvalidArgument`` for anything else (``4Q``, ``-1G``, empty, zero).
    """
    if isinstance(text, int) and not isinstance(text, bool):
        if text <= 0:
            raise InvalidArgument(f"size must be positive, got {text}")
        return text
    match = _SIZE.match(str(text))
    if not match:
        raise InvalidArgument(
            f"bad size {text!r}: use a number with an optional unit K, M, G or T (e.g. 512M, 2G)"
        )
    value = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if value <= 0:
        raise InvalidArgument(f"size must be positive, got {text!r}")
    return value


def format_size(n: int | None) -> str:
    """``1536`` -> ``1.5K``; ``None`` -> ``-``."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if abs(value) < 1024 or unit == "T":
            if unit == "B":
                return f"{int(value)}B"
            return f"{value:.1f}{unit}".replace(".0" + unit, unit)
        value /= 1024
    return f"{n}B"


def format_duration(seconds: float | None) -> str:
    """``75`` -> ``1m15s``; ``0.4`` -> ``0.4s``; ``None`` -> ``-``."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f}s"
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(d|h|m|s)", re.IGNORECASE)
_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> float:
    """Seconds in ``90``, ``90s``, ``15m``, ``2h``, ``1h30m``, ``7d``; ``InvalidArgument`` else."""
    text = str(text).strip()
    try:
        value = float(text)
    except ValueError:
        parts = _DURATION.findall(text)
        if not parts or "".join(a + b for a, b in parts) != text.replace(" ", ""):
            raise InvalidArgument(f"bad duration {text!r}: use e.g. 90s, 15m, 2h, 1h30m, 7d") from None
        value = sum(float(num) * _SECONDS[unit.lower()] for num, unit in parts)
    if value <= 0:
        raise InvalidArgument(f"duration must be positive, got {text!r}")
    return value
