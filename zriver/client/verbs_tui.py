"""The terminal faces: ``zriver shell`` (interactive prompt) and ``zriver top`` (dashboard).

Both are verbs of the one registry, so they run from the command line and ``top`` also from
inside the shell. prompt-toolkit is imported only when one of them runs: every other verb, and
the shell's own start, stay fast.
"""

from __future__ import annotations

from zriver.client.registry import Context, arg, command
from zriver.client.topmodel import VIEWS


@command("shell", "an interactive prompt on the cluster: every verb, with completion and history",
         arg("--no-history", action="store_true",
             help="do not read or write $ZRIVER_HOME/shell_history"))
def shell(ctx: Context, args) -> int:
    """Every verb without the `zriver` prefix; Tab completes verbs, flags, task ids, nodes and
    environments; a toolbar shows the cluster live; task endings are announced."""
    from zriver.client.shell import run_shell

    return run_shell(ctx, args)


@command("top", "a full-screen live dashboard: nodes, tasks, events; kill/pause/resume, logs",
         arg("--view", choices=VIEWS, default="nodes", help="the view to start in"),
         arg("--filter", default="", help="start with this filter on that view"),
         arg("--resync", type=float, default=15.0,
             help="seconds between full refreshes (a safety net; events drive the screen)"))
def top(ctx: Context, args) -> int:
    """Keys: 1/2/3 or Tab switch views, / filters, Enter follows a task's log (on a node: its
    tasks), k/p/r kill/pause/resume (y confirms), q quits."""
    from zriver.client.top import run_top

    return run_top(ctx, args)
