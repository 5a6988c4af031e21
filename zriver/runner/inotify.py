"""Linux inotify through ctypes: which watched files were written to, as a readable fd.

``Inotify()`` opens a non-blocking instance (``inotify_init1``); ``add(path)`` watches a file
for ``IN_MODIFY`` and returns its watch descriptor (the same one again for the same inode);
``remove(wd)`` stops it; ``read()`` returns the descriptors of the events waiting (empty when
none), for the caller to map back to its files. ``fileno()`` goes on an event loop
(``add_reader``). The kernel merges repeated events of one file that were not read yet, so a
burst of writes wakes the reader once.

``Inotify()`` raises ``OSError`` where inotify is missing (not Linux, no libc symbol, or the
instance limit reached); ``add`` raises ``OSError`` for a missing file or when the watch limit
(``fs.inotify.max_user_watches``) is reached: callers fall back to polling then.
"""

from __future__ import annotations

import ctypes
import os
import struct

IN_MODIFY = 0x00000002
IN_IGNORED = 0x00008000
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)
_BUFFER = 64 * 1024

_libc = None


def _lib():
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(None, use_errno=True)  # the process's own symbols: libc's too
        for name in ("inotify_init1", "inotify_add_watch", "inotify_rm_watch"):
            if not hasattr(libc, name):
                raise OSError(f"no {name} in this C library: inotify is unavailable")
        libc.inotify_add_watch.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
        libc.inotify_rm_watch.argtypes = (ctypes.c_int, ctypes.c_int)
        _libc = libc
    return _libc


def _fail(what: str) -> OSError:
    errno = ctypes.get_errno()
    return OSError(errno, f"{what}: {os.strerror(errno)}")


class Inotify:
    """One inotify instance (see the module docstring); ``close`` releases it."""

    def __init__(self) -> None:
        self._libc = _lib()
        fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise _fail("inotify_init1")
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def add(self, path: str) -> int:
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(path), IN_MODIFY)
        if wd < 0:
            raise _fail(f"inotify_add_watch {path}")
        return wd

    def remove(self, wd: int) -> None:
        self._libc.inotify_rm_watch(self._fd, wd)  # EINVAL for a watch already gone: fine

    def read(self) -> set[int]:
        """The watch descriptors of the events waiting (removed watches left out), from one
        ``read`` of at most 64 KiB: what does not fit keeps the fd readable for the next."""
        try:
            data = os.read(self._fd, _BUFFER)
        except BlockingIOError:
            return set()
        if len(data) == _EVENT.size:  # the usual case: one file, no name
            wd, mask, _cookie, _length = _EVENT.unpack(data)
            return set() if mask & IN_IGNORED else {wd}
        wds: set[int] = set()
        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            offset += _EVENT.size + length
            if not mask & IN_IGNORED:
                wds.add(wd)
        return wds

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
