"""Scheduling verbs: node drain/undrain, usage, and span (a sweep run locally, no cluster)."""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from zriver.bundle import child_environment
from zriver.client.registry import JSON, Context, arg, command
from zriver.client.render import as_json, table
from zriver.errors import InvalidArgument
from zriver.sizes import parse_duration
from zriver.sweep import expand

NODE = arg("name", help="node name", complete="node")


@command("node drain", "take no new tasks on a node; running ones finish", NODE,
         arg("--reason", default="", help="why (shown in zriver nodes)"))
def node_drain(ctx: Context, args) -> int:
    node = ctx.client.call("node.drain", {"name": args.name, "reason": args.reason})
    ctx.print(f"{node['name']}: drained ({node['drained']}); {node['cores_used']} cores still in use")
    return 0


@command("node undrain", "let a drained node take tasks again", NODE)
def node_undrain(ctx: Context, args) -> int:
    node = ctx.client.call("node.undrain", {"name": args.name})
    ctx.print(f"{node['name']}: taking tasks again")
    return 0


@command("usage", "core-hours, GPU-hours and task counts per user or node",
         arg("--since", default="7d", help="how far back, e.g. 24h, 7d, 30d (default 7d)"),
         arg("--by", choices=("user", "node"), default="user", help="group by (default user)"),
         JSON)
def usage(ctx: Context, args) -> int:
    since = time.time() - parse_duration(args.since)
    reply = ctx.client.call("usage.report", {"since": since, "by": args.by})
    if args.json:
        ctx.print(as_json(reply["rows"]))
        return 0
    ctx.print(table([args.by, "tasks", "failed", "core-hours", "gpu-hours"],
                    [[r[args.by], r["tasks"], r["failed"], f"{r['core_hours']:.2f}",
                      f"{r['gpu_hours']:.2f}"] for r in reply["rows"]]))
    return 0


@command("span", "run a sweep locally (no cluster), to try it before submitting",
         arg("--parallel", type=int, default=1, help="run this many at once (default 1)"),
         arg("--dry-run", action="store_true", help="only print the commands"),
         arg("command", nargs="...", help="the command with span:{a..b} / span:[x,y], after --"),
         needs_cluster=False)
def span(ctx: Context, args) -> int:
    """Expand span:{1..4} and span:[a,b] like submit does, and run each command here."""
    words = list(args.command)
    if words and words[0] == "--":
        words = words[1:]
    if not words:
        raise InvalidArgument("nothing to run: put the command after --")
    if args.parallel < 1:
        raise InvalidArgument("--parallel must be at least 1")
    commands = expand(words)
    if args.dry_run:
        for words in commands:
            ctx.print(" ".join(words))
        return 0
    if args.parallel == 1:
        codes = []
        for i, words in enumerate(commands, 1):
            ctx.print(f"[{i}/{len(commands)}] {' '.join(words)}")
            codes.append(_run(words, capture=False)[0])
    else:
        with ThreadPoolExecutor(args.parallel) as pool:
            results = list(pool.map(lambda w: _run(w, capture=True), commands))
        codes = []
        for i, (words, (code, output)) in enumerate(zip(commands, results), 1):
            ctx.print(f"[{i}/{len(commands)}] {' '.join(words)} (exit {code})")
            sys.stdout.write(output)
            codes.append(code)
    failed = sum(1 for code in codes if code)
    ctx.print(f"{len(codes) - failed} succeeded, {failed} failed")
    return 1 if failed else 0


def _run(words: list[str], capture: bool) -> tuple[int, str]:
    try:
        done = subprocess.run(words, capture_output=capture, text=True, env=child_environment())
    except FileNotFoundError:
        return 127, f"command not found: {words[0]}\n"
    return done.returncode, (done.stdout + done.stderr) if capture else ""
