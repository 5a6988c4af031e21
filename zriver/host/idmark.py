"""The highest task id the host ever gave, kept beside its database (``host.db.ids``).

A restored backup (``docs/operations.md``) holds fewer tasks than the host gave out before
it; ids counted from that database alone would be given again, and a new task's log files
would replace those of the task that first had its id. So the store notes the last id it
gives in this small file too, which replacing ``host.db`` leaves alone, and the next id is
above both. The mark is written in place (a fixed-width line, one ``pwrite``, no fsync) in
the tick that gives the ids. A mark that cannot be read (missing, torn by a crash, another
machine's restore) counts as 0: the database is then the floor, as it always is.
"""

from __future__ import annotations

import os
from pathlib import Path

import structlog

log = structlog.get_logger("zriver.host")

#: Bytes of the one line the file holds (an id right-aligned, then a newline).
WIDTH = 21


class IdMark:
    """``value``: the highest id noted (0: none); ``note(last)`` raises it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.value = self._read()
        self._fd: int | None = None

    def _read(self) -> int:
        try:
            return max(0, int(self.path.read_text().strip() or 0))
        except (OSError, ValueError):
            return 0

    def note(self, last_id: int) -> None:
        """Ids up to ``last_id`` have been given (a lower one changes nothing)."""
        if last_id <= self.value:
            return
        self.value = last_id
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.pwrite(self._fd, f"{last_id:>{WIDTH - 1}}\n".encode(), 0)
        except OSError as exc:  # the database still holds every id it gave
            log.warning("host.id_mark_unwritten", path=str(self.path), error=str(exc))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
