"""Progress of long client work on one terminal line of stderr; nothing at all when piped.

``format_line`` is the pure part: one line for a phase, with a bar, the percentage, bytes done
and total (``zriver.sizes`` style) and a rate when the total is known, else a spinner with the
elapsed time; never wider than ``width - 1`` (the terminal does not wrap it).

``Progress`` draws it (one line, or one per row: ``env sync`` has a row per node): only when
its stream is a terminal (``isatty``, and ``TERM`` is not ``dumb``), at most
``REDRAW_PER_SECOND`` times a second, and ``close()`` clears what it drew, so
what is printed afterwards starts on a clean line. When the stream is not a terminal every
method does nothing: piped output stays byte for byte what it is without progress.

``watching(ctx, progress)`` draws what the host pushes while one call waits for its answer
(``env.progress`` messages with ``rid`` 0: ``{"rid", "phase", "done", "total"}``, see
docs/environments.md); a spinner keeps turning meanwhile, so an older host, which pushes
nothing, still shows that work goes on.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import shutil
import threading
import time
from typing import Any, Callable, Iterator, TextIO

from zriver.sizes import format_duration, format_size

REDRAW_PER_SECOND = 10
SPINNER = "|/-\\"
BAR_MIN, BAR_MAX = 10, 30
RATE_WINDOW = 3.0
"""Seconds of samples the rate is measured over."""
MAX_ROWS = 12
PUSHED_OP = "env.progress"
CLEAR = "\r\x1b[K"


def format_line(phase: str, done: int | None, total: int | None, elapsed: float,
                rate: float | None, width: int, frame: int = 0, ended: bool = False) -> str:
    """The progress line (no control characters), at most ``width - 1`` characters.

    ``total`` known (> 0): ``saving [#####-----]  42%  252M/600M  31.5M/s``, the percentage
    capped at 100 and a done past the total taken as the total; else ``saving | 12.3s``
    (``frame`` turns the spinner), plus the bytes done when known. ``ended``: the phase alone
    (a row that is over while others go on)."""
    room = max(1, width - 1)
    if ended:
        return phase[:room]
    if total and total > 0:
        done = min(max(done or 0, 0), total)
        fraction = done / total
        tail = f" {int(fraction * 100):3d}%  {format_size(done)}/{format_size(total)}"
        if rate is not None and rate > 0:
            tail += f"  {format_size(int(rate))}/s"
        bar_width = min(BAR_MAX, room - len(phase) - len(tail) - 3)
        if bar_width >= BAR_MIN:
            filled = int(fraction * bar_width)
            bar = "#" * filled + "-" * (bar_width - filled)
            return f"{phase} [{bar}]{tail}"[:room]
        return f"{phase}{tail}"[:room]
    spin = SPINNER[frame % len(SPINNER)]
    line = f"{phase} {spin} {format_duration(elapsed)}"
    if done:
        line += f"  {format_size(done)}"
    return line[:room]


def bar_phase(phase: str, total: int | None) -> str:
    """A reported phase as its line shows it: with a known total the bar says how far, so a
    trailing percentage goes ("downloading 40%" -> "downloading")."""
    return re.sub(r" \d+%$", "", phase) if total else phase


def is_terminal(stream: TextIO) -> bool:
    """Whether progress may be drawn on ``stream``: a terminal that can clear a line."""
    try:
        return stream.isatty() and os.environ.get("TERM", "") != "dumb"
    except (AttributeError, ValueError):
        return False


class _Row:
    """Where one row stands: its phase (since when), bytes, recent samples for the rate."""

    def __init__(self, now: float) -> None:
        self.phase = ""
        self.started = now
        self.done: int | None = None
        self.total: int | None = None
        self.samples: collections.deque[tuple[float, int]] = collections.deque()
        self.ended = False

    def update(self, now: float, phase: str, done: int | None, total: int | None,
               ended: bool) -> bool:
        """Take the news; True when the phase changed."""
        self.ended = ended
        changed = phase != self.phase
        if changed:
            self.phase, self.started = phase, now
            self.samples.clear()
        self.done, self.total = done, total
        if done is not None:
            self.samples.append((now, done))
            while len(self.samples) > 2 and now - self.samples[0][0] > RATE_WINDOW:
                self.samples.popleft()
        return changed

    def rate(self) -> float | None:
        if len(self.samples) < 2:
            return None
        (t0, d0), (t1, d1) = self.samples[0], self.samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else None


class Progress:
    """Progress lines on ``stream`` (drawn only on a terminal): one by default, or one per
    ``row`` (a node, say) in the order rows first appear, at most ``MAX_ROWS`` of them (then
    a line counts the others). Thread-safe: a watcher thread and the caller may both
    ``update``."""

    def __init__(self, stream: TextIO, *, enabled: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.enabled = is_terminal(stream) if enabled is None else enabled
        self._clock = clock
        self._lock = threading.Lock()
        self._rows: dict[str, _Row] = {}
        self._drawn_at = float("-inf")
        self._frame = 0
        self._lines = 0  # lines on the screen now (the cursor is on the last one)

    def update(self, phase: str, done: int | None = None, total: int | None = None,
               row: str = "", ended: bool = False) -> None:
        """``row`` is now in ``phase`` with ``done`` of ``total`` bytes (either may be
        unknown; ``ended``: that row is over, drawn as its phase alone); redrawn at once on a
        new phase, else at most ``REDRAW_PER_SECOND`` times a second."""
        if not self.enabled:
            return
        with self._lock:
            now = self._clock()
            state = self._rows.get(row)
            if state is None:
                state = self._rows[row] = _Row(now)
            if state.update(now, phase, done, total, ended):
                self._drawn_at = float("-inf")
            self._draw(now)

    def tick(self) -> None:
        """Redraw (when due) without news: the spinner turns, the elapsed time moves."""
        if not self.enabled or not self._rows:
            return
        with self._lock:
            self._draw(self._clock())

    def close(self) -> None:
        """Clear the lines drawn (if any); later updates draw nothing."""
        with self._lock:
            if self._lines:
                self._write(self._home() + "\x1b[J" if self._lines > 1 else CLEAR)
            self._lines = 0
            self.enabled = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _home(self) -> str:
        """Back to the start of the first line drawn."""
        return "\r" + (f"\x1b[{self._lines - 1}A" if self._lines > 1 else "")

    def _draw(self, now: float) -> None:
        if now - self._drawn_at < 1 / REDRAW_PER_SECOND:
            return
        self._drawn_at = now
        self._frame += 1
        width = shutil.get_terminal_size((80, 24)).columns
        lines = []
        rows = list(self._rows.items())
        for name, row in rows[:MAX_ROWS]:
            label = f"{name} {row.phase}" if name else row.phase
            lines.append(format_line(label, row.done, row.total, now - row.started,
                                     row.rate(), width, self._frame, row.ended))
        if len(rows) > MAX_ROWS:
            lines.append(f"... and {len(rows) - MAX_ROWS} more"[:max(1, width - 1)])
        text = self._home() if self._lines else "\r"
        self._write(text + "\n".join(line + "\x1b[K" for line in lines))
        self._lines = len(lines)

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            self.enabled = False


def pushed_progress(message: Any) -> tuple[str, int | None, int | None] | None:
    """``(phase, done, total)`` of a pushed ``env.progress`` envelope; ``None`` for anything
    else (another op, a malformed body)."""
    if getattr(message, "op", None) != PUSHED_OP or not isinstance(message.body, dict):
        return None
    body = message.body
    phase = body.get("phase")
    done, total = body.get("done"), body.get("total")
    if not isinstance(phase, str):
        return None
    as_int = lambda v: v if isinstance(v, int) and not isinstance(v, bool) else None  # noqa: E731
    return phase[:60], as_int(done), as_int(total)


@contextlib.contextmanager
def watching(client: Any, progress: Progress, phase: str) -> Iterator[None]:
    """While the body runs one ``client.call``, draw the host's pushed progress (starting
    with ``phase``) from a helper thread; the line is cleared on the way out. On a pipe it
    only sets nothing up."""
    if not progress.enabled:
        yield
        return
    progress.update(phase)
    stop = threading.Event()
    client.pushed = []

    def draw() -> None:
        seen = 0
        while not stop.wait(1 / REDRAW_PER_SECOND):
            messages = client.pushed or []
            for message in messages[seen:]:
                news = pushed_progress(message)
                if news is not None:
                    progress.update(*news)
            seen = len(messages)
            progress.tick()

    thread = threading.Thread(target=draw, name="zriver-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=1)
        client.pushed = None
        progress.close()
