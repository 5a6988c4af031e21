"""Start-up time of the single binary against the installed package, in one run.

Usage (from the repository root, after ``bash pyinstaller/build.sh``)::

    python3 pyinstaller/measure_start.py [--runs N] [--compare OTHER_BINARY]

In a private HOME and ZRIVER_HOME it starts ``dist/zriver up -d`` on ephemeral ports, then
times, interleaved, ``zriver --version`` and ``zriver tasks`` (against that host) from the
package (this interpreter, ``-m zriver``), from ``dist/zriver`` and from ``--compare`` (e.g. a
PyInstaller ``--onefile`` build), plus the binary's first start with an empty cache. It prints
the minimum and median of each (seconds) and the ratio of each minimum to the package's, then
stops the cluster. Bounded: ``--runs`` times each command, 60 s each at most.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BINARY = REPO / "dist" / "zriver"
TIMEOUT = 60


def timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, check=True,
                   timeout=TIMEOUT)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--compare", help="another binary to time the same way")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="zriver-start-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ZRIVER_", "PYTHON"))}
        env.update(HOME=f"{tmp}/home", ZRIVER_HOME=f"{tmp}/zriver")
        os.makedirs(env["HOME"])
        package = dict(env, PYTHONPATH=str(REPO))
        cache = Path(env["HOME"]) / ".cache" / "zriver"
        first = []
        for _ in range(3):  # the first start: an empty cache each time
            shutil.rmtree(cache, ignore_errors=True)
            first.append(timed([str(BINARY), "--version"], env))
        subprocess.run([str(BINARY), "up", "-d", "--port", "0", "--cores", "1", "--memory", "1G"],
                       env=env, capture_output=True, check=True, timeout=TIMEOUT)
        try:
            commands = {"package": [sys.executable, "-m", "zriver"], "binary": [str(BINARY)]}
            if args.compare:
                commands["compare"] = [args.compare]
            results = {f"{name} {verb}": [] for verb in ("--version", "tasks")
                       for name in commands}
            for _ in range(args.runs):
                for key in results:
                    name, verb = key.split(" ")
                    results[key].append(timed(commands[name] + [verb],
                                              package if name == "package" else env))
        finally:
            subprocess.run([str(BINARY), "down"], env=env, capture_output=True, timeout=TIMEOUT)
    size = BINARY.stat().st_size / 1e6
    print(f"dist/zriver: {size:.1f} MB; first start (empty cache, --version): "
          f"min {min(first):.3f} s, median {statistics.median(first):.3f} s")
    for key, values in results.items():
        base = min(results[f"package {key.split(' ')[1]}"])
        print(f"{key:20s} min {min(values):.3f} s  median {statistics.median(values):.3f} s  "
              f"{min(values) / base:.2f}x the package")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
