"""Progress of long client work on one terminal line of stderr; nothing at all when piped.

``format_line`` is the pure part: one line for a phase, with a bar, the percentage, bytes done
and total (``zriver.sizes`` style) and a rate when the total is known, else a spinner with the
elapsed time; never wider than ``width - 1`` (the terminal does not wrap it).

``Progress`` draws it: only when its stream is a terminal (``isatty``, and ``TERM`` is not
``dumb``), at most ``REDRAW_PER_SECOND`` times a second, and ``close()`` clears the line, so
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
PUSHED_OP = "env.progress"
CLEAR = "\r\x1b[K"


def format_line(phase: str, done: int | None, total: int | None, elapsed: float,
                rate: float | None, width: int, frame: int = 0) -> str:
    """The progress line (no control characters), at most ``width - 1`` characters.

    ``total`` known (> 0): ``saving [#####-----]  42%  252M/600M  31.5M/s``, the percentage
    capped at 100 and a done past the total taken as the total; else ``saving | 12.3s``
    (``frame`` turns the spinner), plus the bytes done when known."""
    room = max(1, width - 1)
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


def is_terminal(stream: TextIO) -> bool:
    """Whether progress may be drawn on ``stream``: a terminal that can clear a line."""
    try:
        return stream.isatty() and os.environ.get("TERM", "") != "dumb"
    except (AttributeError, ValueError):
        return False


class Progress:
    """One progress line on ``stream`` (drawn only on a terminal). Thread-safe: a watcher
    thread and the caller may both ``update``."""

    def __init__(self, stream: TextIO, *, enabled: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.enabled = is_terminal(stream) if enabled is None else enabled
        self._clock = clock
        self._lock = threading.Lock()
        self._phase = ""
        self._done: int | None = None
        self._total: int | None = None
        self._phase_started = clock()
        self._samples: collections.deque[tuple[float, int]] = collections.deque()
        self._drawn_at = float("-inf")
        self._frame = 0
        self._shown = False

    def update(self, phase: str, done: int | None = None, total: int | None = None) -> None:
        """Now in ``phase`` with ``done`` of ``total`` bytes (either may be unknown); redrawn
        at once on a new phase, else at most ``REDRAW_PER_SECOND`` times a second."""
        if not self.enabled:
            return
        with self._lock:
            now = self._clock()
            if phase != self._phase:
                self._phase, self._phase_started = phase, now
                self._samples.clear()
                self._drawn_at = float("-inf")
            self._done, self._total = done, total
            if done is not None:
                self._samples.append((now, done))
                while len(self._samples) > 2 and now - self._samples[0][0] > RATE_WINDOW:
                    self._samples.popleft()
            self._draw(now)

    def tick(self) -> None:
        """Redraw (when due) without news: the spinner turns, the elapsed time moves."""
        if not self.enabled or not self._phase:
            return
        with self._lock:
            self._draw(self._clock())

    def close(self) -> None:
        """Clear the line (when something was drawn); later updates draw nothing."""
        with self._lock:
            if self._shown:
                self._write(CLEAR)
            self._shown = False
            self.enabled = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _rate(self) -> float | None:
        if len(self._samples) < 2:
            return None
        (t0, d0), (t1, d1) = self._samples[0], self._samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else None

    def _draw(self, now: float) -> None:
        if now - self._drawn_at < 1 / REDRAW_PER_SECOND:
            return
        self._drawn_at = now
        self._frame += 1
        width = shutil.get_terminal_size((80, 24)).columns
        line = format_line(self._phase, self._done, self._total, now - self._phase_started,
                           self._rate(), width, self._frame)
        self._write("\r" + line + "\x1b[K")
        self._shown = True

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
