"""Run a zriver role under cProfile with a CPU-time clock of the calling thread.

``python bench/cpuprof.py OUT.prof host --config host.toml`` runs ``zriver host ...`` and writes
the profile when the role returns (SIGINT/SIGTERM stop the roles cleanly). Unlike
``python -m cProfile`` (wall clock), time spent waiting (for a CPU, in ``epoll``, behind a
``vfork`` child) is not counted, so the figures add up to the main thread's CPU time; zmq's
I/O thread is not included. Each call costs a little more than under the wall clock, so read
small, frequent functions as upper bounds. Used by ``bench/dispatch.py --profile cputime``.
"""

from __future__ import annotations

import cProfile
import sys
import time


def main() -> int:
    out, args = sys.argv[1], sys.argv[2:]
    from zriver.cli import main as zriver_main

    profiler = cProfile.Profile(time.thread_time)
    profiler.enable()
    try:
        return zriver_main(args)
    finally:
        profiler.disable()
        profiler.dump_stats(out)


if __name__ == "__main__":
    sys.exit(main())
