"""structlog set-up: human-readable lines by default, one JSON object per line with --log-json.

One event name per thing that happened (``task.started``, ``node.state`` ...), key=value context.
Logs go to stderr so that stdout stays for command output (task ids, tables, JSON).

``configure`` sets structlog up now. ``configure_when_imported`` does the same the moment
something first imports structlog (at once when it already is): a client verb that never logs
then never pays for importing it (about 40 ms, with the ``asyncio`` it imports).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import sys
from typing import Any, Callable


def configure(json_output: bool = False, level: str = "info") -> None:
    import structlog

    renderer = (structlog.processors.JSONRenderer() if json_output
                else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=False),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, level.upper(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


def configure_when_imported(json_output: bool = False, level: str = "info") -> None:
    """``configure(json_output, level)`` once structlog is imported: now if it is, else right
    after its first import finishes (before the importer gets it), whoever imports it."""
    if "structlog" in sys.modules:
        configure(json_output, level)
        return
    sys.meta_path.insert(0, _ConfigureOnImport(lambda: configure(json_output, level)))


class _ConfigureOnImport(importlib.abc.MetaPathFinder):
    """A one-shot finder: for ``structlog`` only, the real spec with a loader that runs
    ``after`` once the module has executed; it removes itself at that first import."""

    def __init__(self, after: Callable[[], None]) -> None:
        self._after = after

    def find_spec(self, name: str, path: Any = None, target: Any = None):
        if name != "structlog":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _ThenRun(spec.loader, self._after)
        return spec


class _ThenRun(importlib.abc.Loader):
    """``loader``, with ``after()`` run once ``exec_module`` has finished."""

    def __init__(self, loader: Any, after: Callable[[], None]) -> None:
        self._loader = loader
        self._after = after

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        self._after()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)
