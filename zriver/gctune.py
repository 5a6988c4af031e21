"""The cyclic garbage collector's settings for a long-lived role process.

A role allocates a few small objects per message and per task (dicts, lists, bound methods)
that reference counting frees, yet every 700 allocations the collector walks the young
generation, and its older generations hold every module, class and function imported at
start (some 50,000 objects under ``zriver up``), which a full collection walks again. With
``settle`` called once the role has started, start-up's survivors sit in the permanent
generation (``gc.freeze``: never walked again, still freed when their last reference goes)
and the young generation collects every ``YOUNG_THRESHOLD`` allocations: on a 1,000-task
batch under ``zriver up``, the collector's share falls from ~27 to ~10 us of CPU per task
(docs/performance.md, "The two dispatch targets, measured again"). Reference cycles made
later are still found, only a little later.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 20_000
"""Allocations (net of frees) between two collections of the young generation (Python's
default is 700)."""


def settle() -> None:
    """Call once, when the role's start-up is over: collect, freeze the survivors, raise the
    young generation's threshold (the older two keep theirs)."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
