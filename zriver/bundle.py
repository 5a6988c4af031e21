"""Running from the single binary (``pyinstaller/``: a ``sh`` stub and a PyInstaller
one-folder build, unpacked once into the user's cache and run from there).

PyInstaller's bootloader prepends the build's directory to ``LD_LIBRARY_PATH`` so the bundled
shared libraries load, keeping the caller's original value in ``LD_LIBRARY_PATH_ORIG`` (absent
when there was none). Every child process zriver starts (tasks, docker, numactl, ssh, ...)
would otherwise inherit the bundle's library directory and load the bundle's libraries instead
of the system's, so each spawn takes its environment from :func:`child_environment`. The
bootloader also sets variables of its own (``_PYI_*``, and ``_MEIPASS2`` in older releases)
that tell a zriver binary started with them that it is this process's child, and the stub sets
``_ZRIVER_BINARY``: children never get them either, so a task that runs ``zriver`` runs a
fresh one.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

__all__ = ["binary_path", "child_environment", "is_frozen"]

_LD = "LD_LIBRARY_PATH"
_LD_ORIG = "LD_LIBRARY_PATH_ORIG"
_BOOTLOADER_PREFIX = "_PYI_"
_BOOTLOADER_NAMES = frozenset({"_MEIPASS2"})
_BINARY = "_ZRIVER_BINARY"
"""Set by ``pyinstaller/stub.sh``: the absolute path of the file the user ran (the binary's
program itself runs from its unpacked copy in the cache, which ``sys.executable`` names)."""


def is_frozen() -> bool:
    """True when this interpreter runs inside a PyInstaller bundle."""
    return bool(getattr(sys, "frozen", False))


def binary_path() -> str:
    """The single binary as the user has it (what a service unit should run): the stub's
    ``_ZRIVER_BINARY`` when that names an existing file, else ``sys.executable``."""
    path = os.environ.get(_BINARY, "")
    return path if path and os.path.isfile(path) else sys.executable


def child_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``base`` (default: ``os.environ``) fit for spawning child processes.

    Inside a bundle, ``LD_LIBRARY_PATH`` gets back the value it had before the bootloader ran
    (from ``LD_LIBRARY_PATH_ORIG``), or is removed when it had none, and
    ``LD_LIBRARY_PATH_ORIG`` itself is dropped, and so are the bootloader's own variables
    (``_PYI_*``, ``_MEIPASS2``) and the stub's ``_ZRIVER_BINARY``. Outside a bundle the copy
    is returned as is.
    """
    env = dict(os.environ if base is None else base)
    if not is_frozen():
        return env
    for name in [k for k in env if k.startswith(_BOOTLOADER_PREFIX) or k in _BOOTLOADER_NAMES
                 or k == _BINARY]:
        del env[name]
    original = env.pop(_LD_ORIG, None)
    if original is None:
        env.pop(_LD, None)
    else:
        env[_LD] = original
    return env
