"""Running code right after a module's first import, whoever imports it.

``when_imported(name, then)`` calls ``then(module)`` at once when ``name`` is imported already,
else right after its first import has executed it (before the importer gets it back). A
one-shot finder on ``sys.meta_path`` handles that one name and removes itself at that import.
``logsetup.configure_when_imported`` sets structlog up this way (a client verb that never logs
never imports it); ``bench/timeline.py`` wraps the functions it times this way in the roles.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from types import ModuleType
from typing import Any, Callable


def when_imported(name: str, then: Callable[[ModuleType], None]) -> None:
    """``then(module)`` once module ``name`` has been imported (now, if it has been)."""
    module = sys.modules.get(name)
    if module is not None:
        then(module)
        return
    sys.meta_path.insert(0, _AfterImport(name, then))


class _AfterImport(importlib.abc.MetaPathFinder):
    """For ``name`` only: the real spec, with a loader that calls ``then`` once the module
    has executed; the finder leaves ``sys.meta_path`` at that first import."""

    def __init__(self, name: str, then: Callable[[ModuleType], None]) -> None:
        self._name = name
        self._then = then

    def find_spec(self, name: str, path: Any = None, target: Any = None):
        if name != self._name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _ThenRun(spec.loader, self._then)
        return spec


class _ThenRun(importlib.abc.Loader):
    """``loader``, with ``then(module)`` called once ``exec_module`` has finished."""

    def __init__(self, loader: Any, then: Callable[[ModuleType], None]) -> None:
        self._loader = loader
        self._then = then

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        self._then(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)
