"""The event loop every asyncio entry point runs on: uvloop when installed.

The roles (``zriver.roles``) and the client verbs that hold connections (``ssh``, ``connect``,
``forward``) share it, so what users run is what the tests run."""

from __future__ import annotations

import asyncio
import sys
from typing import Any


def new_loop() -> asyncio.AbstractEventLoop:
    """A new event loop: uvloop's when installed, else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(coro) -> Any:
    """Run ``coro`` to its end on a loop ``new_loop`` makes; returns its result."""
    if sys.version_info < (3, 11):  # pragma: no cover - no asyncio.Runner before 3.11
        loop = new_loop()
        asyncio.set_event_loop(loop)
        try:
            return loop.run_until_complete(coro)
        finally:
            loop.close()
    with asyncio.Runner(loop_factory=new_loop) as runner:
        return runner.run(coro)
