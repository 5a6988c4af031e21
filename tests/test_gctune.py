"""The collector settings of a role process (``zriver.gctune``), in a fresh interpreter (a
freeze in the test process would keep the suite's garbage)."""

from __future__ import annotations

import subprocess
import sys

from tests.procs import role_environment


def test_settle_freezes_start_up_and_raises_the_young_threshold(tmp_path):
    script = ("import gc; from zriver import gctune; before = gc.get_threshold(); "
              "gctune.settle(); after = gc.get_threshold(); "
              "print(gc.get_freeze_count() > 1000, after[0] == gctune.YOUNG_THRESHOLD, "
              "after[1:] == before[1:])")
    out = subprocess.run([sys.executable, "-c", script], env=role_environment(tmp_path),
                         capture_output=True, text=True, timeout=60, check=True).stdout.split()
    assert out == ["True", "True", "True"]
