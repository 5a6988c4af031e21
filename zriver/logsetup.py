"""structlog set-up: human-readable lines by default, one JSON object per line with --log-json.

One event name per thing that happened (``task.started``, ``node.state`` ...), key=value context.
Logs go to stderr so that stdout stays for command output (task ids, tables, JSON).

``configure`` sets structlog up now. ``configure_when_imported`` does the same the moment
something first imports structlog (at once when it already is): a client verb that never logs
then never pays for importing it (about 40 ms, with the ``asyncio`` it imports).
"""

from __future__ import annotations

import logging
import sys

from zriver.importhooks import when_imported


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
    when_imported("structlog", lambda _module: configure(json_output, level))
