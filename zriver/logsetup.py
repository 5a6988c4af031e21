"""structlog set-up: human-readable lines by default, one JSON object per line with --log-json.

One event name per thing that happened (``task.started``, ``node.state`` ...), key=value context.
Logs go to stderr so that stdout stays for command output (task ids, tables, JSON).
"""

from __future__ import annotations

import logging
import sys

import structlog


def configure(json_output: bool = False, level: str = "info") -> None:
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
