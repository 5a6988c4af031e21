"""Task verbs: submit, tasks, status, logs, kill, pause, resume, wait."""

from __future__ import annotations

import getpass
import json
import os
import sys

from zriver.client.follow import follow
from zriver.client.registry import JSON, Context, arg, command
from zriver.client.render import age, as_json, shorten, size, table, when
from zriver.client.syncwait import wait_showing_sync
from zriver.errors import InvalidArgument
from zriver import lifecycle as lc
from zriver.sizes import parse_duration, parse_size
from zriver.sweep import parse as parse_sweep

TASK_ID = arg("id", type=int, help="task id", complete="task")
TASK_IDS = arg("ids", type=int, nargs="+", metavar="ID", help="task ids", complete="task")


def exit_status(summary: dict) -> int:
    """The shell exit status that stands for a finished task."""
    if summary["state"] == lc.COMPLETED:
        return 0
    code = summary.get("exit_code")
    return code if isinstance(code, int) and 0 < code < 256 else 1


def owner() -> str:
    try:
        return os.environ.get("ZRIVER_USER") or getpass.getuser()
    except (KeyError, OSError):
        return f"uid{os.getuid()}"


def backend_fields(args) -> dict:
    """``--native``/``--container NULL`` -> native; ``--container X`` -> docker env X; neither:
    the host decides (its ``default_container`` when it has one, else native)."""
    if args.native or (args.container or "").upper() == "NULL":
        if args.mount or args.privileged:
            raise InvalidArgument("--mount and --privileged need a container")
        return {"backend": "native"}
    if args.container:
        return {"backend": "docker", "container": args.container, "mounts": args.mount,
                "privileged": args.privileged}
    return {"backend": "auto", "mounts": args.mount, "privileged": args.privileged}


def default_workdir(args) -> str | None:
    """``--workdir``, else the current directory for native tasks (like Slurm); a container
    starts in its image's own working directory unless told otherwise."""
    if args.workdir:
        return args.workdir
    return None if args.container and args.container.upper() != "NULL" else os.getcwd()


def parse_ids(text: str) -> list[int]:
    """``"41,42"`` -> ``[41, 42]``."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InvalidArgument(f"bad task id list {text!r}: use e.g. 41,42") from None


def parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"bad --env {pair!r}: use KEY=VALUE")
        env[key] = value
    return env


@command(
    "submit", "submit a command as a task (prints its id)",
    arg("--name", default="", help="a name to recognise the task by"),
    arg("--cores", type=int, default=1, help="cores to allocate and pin (default 1)"),
    arg("--memory", help="memory limit, e.g. 512M or 4G (default: none)"),
    arg("--env", action="append", default=[], metavar="KEY=VALUE",
        help="environment variable for the task (repeatable)"),
    arg("--workdir", help="working directory (default: the current one; in a container: "
                          "the image's)"),
    arg("--target", action="append", default=[], complete="target",
        help="NODE, NODE:NUMA_ZONE or NODE::GPU[,GPU] (repeatable: one task per target)"),
    arg("--gpus", type=int, default=0, help="GPUs for the task, on any node that has them free"),
    arg("--priority", type=int, default=0, help="higher runs first (default 0)"),
    arg("--after", default="", metavar="ID[,ID]", help="start after these tasks completed"),
    arg("--after-any", default="", metavar="ID[,ID]", help="start after these tasks ended"),
    arg("--time-limit", metavar="DURATION", help="kill after this long, e.g. 90m, 2h (state timeout)"),
    arg("--retries", type=int, default=0, help="run again this many times on failure or loss"),
    arg("--max-parallel", type=int, default=0, help="at most this many of the batch at once"),
    arg("--user", metavar="ACCOUNT",
        help="run a native task as this Unix account on the node (admins only; root allowed)"),
    arg("--container", complete="env",
        help="run in this Docker environment (default: the cluster's default_container; "
             "NULL: native)"),
    arg("--native", action="store_true", help="run without a container (= --container NULL)"),
    arg("--mount", action="append", default=[], metavar="HOST:CONTAINER[:ro]",
        help="bind mount into the container (repeatable)"),
    arg("--privileged", action="store_true",
        help="privileged container (only where the runner config allows it)"),
    arg("--wait", action="store_true", help="wait for the end; exit with the task's status"),
    arg("--follow", "-f", action="store_true", help="print its output live until it ends"),
    JSON,
    arg("command", nargs="...", help="the command, after --"),
)
def submit(ctx: Context, args) -> int:
    """Submit a command. Everything after `--` is the command and its arguments."""
    command_line = list(args.command)
    if command_line and command_line[0] == "--":
        command_line = command_line[1:]
    if not command_line:
        raise InvalidArgument("nothing to run: put the command after --, "
                              "e.g. zriver submit -- python train.py")
    base = {"name": args.name, "cores": args.cores,
            "memory": parse_size(args.memory) if args.memory else None,
            "env": parse_env(args.env), "workdir": default_workdir(args),
            "owner": owner(), "gpus": args.gpus, "priority": args.priority,
            "after": parse_ids(args.after), "after_any": parse_ids(args.after_any),
            "time_limit": parse_duration(args.time_limit) if args.time_limit else None,
            "retries": args.retries, "max_parallel": args.max_parallel, "user": args.user,
            **backend_fields(args)}
    targets = args.target or [None]
    if parse_sweep(command_line).has_spans or len(targets) > 1:
        # the host expands the spans: the message stays small whatever the sweep's size
        reply = ctx.client.submit_sweep({**base, "command": command_line}, targets)
    else:
        reply = ctx.client.submit([{**base, "command": command_line, "target": targets[0]}])
    ids = reply["ids"]  # (either way: one idempotency key, resent on silence)
    if args.json and not (args.wait or args.follow):
        ctx.print(as_json({"ids": ids, "batch_id": reply["batch_id"]}))
        return 0
    ctx.print("\n".join(map(str, ids)))
    if args.follow and len(ids) > 1:
        raise InvalidArgument("--follow takes one task; this submit made a batch "
                              f"(batch {reply['batch_id']}): use zriver logs -f ID")
    if not (args.wait or args.follow):
        return 0
    try:
        if args.follow:
            follow(ctx.client, ids[0], {"stdout": sys.stdout.buffer,
                                        "stderr": sys.stderr.buffer})
            summaries = ctx.client.wait(ids)
        else:  # on a terminal, a lone container task's env sync is drawn meanwhile
            summaries = wait_showing_sync(ctx.client, ids, ctx.err)
    except KeyboardInterrupt:
        return interrupted(ctx, ids, reply["batch_id"])
    if args.json:
        ctx.print(as_json(summaries))
    return max(exit_status(s) for s in summaries)


INTERRUPTED = 130
"""The exit status after Ctrl-C (128 + SIGINT), as a shell reports it."""


def interrupted(ctx: Context, ids: list[int], batch: int | None = None,
                doing: str = "following") -> int:
    """Ctrl-C while following or waiting: say on stderr that the tasks run on and how to
    stop them; return ``INTERRUPTED``."""
    if len(ids) == 1:
        what, stop = f"task {ids[0]} keeps running", f"zriver kill {ids[0]}"
    elif batch is not None:  # a submit's tasks: consecutive ids
        what, stop = f"tasks {ids[0]}..{ids[-1]} keep running", f"zriver kill --batch {batch}"
    else:
        listed = " ".join(map(str, ids))
        what, stop = f"tasks {listed} keep running", f"zriver kill {listed}"
    ctx.err.write(f"\nzriver: stopped {doing}; {what} (`{stop}` stops "
                  f"{'it' if len(ids) == 1 else 'them'}, `zriver logs -f {ids[0]}` follows "
                  f"again)\n")
    ctx.err.flush()
    return INTERRUPTED


TASK_COLUMNS = ["id", "name", "state", "node", "cores", "mem", "age", "exit", "detail"]
#: Rows per page that ``--all`` asks for (the host's most).
ALL_PAGE = 1000


@command(
    "tasks", "list tasks, newest first, a page at a time (pending ones say why they wait)",
    arg("--state", action="append", choices=lc.ALL_STATES, help="only this state (repeatable)"),
    arg("--batch", type=int, help="only this batch (sweep) id"),
    arg("--user", help="only tasks of this owner"),
    arg("--node", complete="node", help="only tasks placed on this node"),
    arg("--name", help="only tasks whose name contains this"),
    arg("--limit", type=int, default=50, help="rows in the page (default 50, at most 1000)"),
    arg("--before", type=int, metavar="ID", help="only ids below ID (the next page)"),
    arg("--all", action="store_true",
        help="every matching row, page after page as they arrive (--json: one JSON array, "
             "a task a line)"),
    JSON,
)
def tasks(ctx: Context, args) -> int:
    """One page (``--limit`` rows from ``--before``), then how many more match and how to see
    them; ``--all`` prints page after page until the last (a table whose header comes once, or
    with ``--json`` one JSON array written as the pages arrive, a task a line). Without
    ``--all``, ``--json`` prints the page as one array (the "more" line goes to stderr)."""
    body = {"states": args.state, "batch": args.batch, "owner": args.user,
            "node": args.node, "name": args.name}
    if args.all:
        return _all_pages(ctx, body, args.before, args.json)
    reply = ctx.client.call("task.list", {**body, "limit": args.limit, "before": args.before})
    rows = reply["tasks"]
    if args.json:
        ctx.print(as_json(rows))
    else:
        ctx.print(table(TASK_COLUMNS, (_cells(t) for t in rows)))
    hint = more_line(reply)
    if hint and args.json:
        print(hint, file=sys.stderr, flush=True)
    elif hint:
        ctx.print(hint)
    return 0


def more_line(reply: dict) -> str:
    """``... 19,800 more: zriver tasks --all, or --before ID`` (empty on the last page; a
    count the host capped reads ``10,000+``)."""
    after = reply.get("next")
    if after is None:
        return ""
    more = f"{reply.get('more', 0):,}{'' if reply.get('more_exact', True) else '+'}"
    return f"... {more} more: zriver tasks --all, or --before {after}"


def _all_pages(ctx: Context, body: dict, before: int | None, as_json: bool) -> int:
    widths: list[int] = []
    separator = "["  # --json: one array, streamed (the same document a single page gives)
    for _ in range(1 << 40):  # ends on the last page (ids only go down)
        reply = ctx.client.call("task.list", {**body, "limit": ALL_PAGE, "before": before})
        if as_json:
            for row in reply["tasks"]:
                ctx.print(separator + json.dumps(row, sort_keys=True, default=str))
                separator = ","
        else:
            widths = _print_rows(ctx, [_cells(t) for t in reply["tasks"]], widths)
        before = reply.get("next")
        if before is None or not reply["tasks"]:
            break
    if as_json:
        ctx.print("[]" if separator == "[" else "]")
    return 0


def _print_rows(ctx: Context, rows: list[list], widths: list[int]) -> list[int]:
    """Rows of the tasks table, in columns at least as wide as the pages before (``widths``;
    the header is printed with the first page); returns the widths used."""
    cells = [["-" if v is None else str(v) for v in row] for row in rows]
    first = not widths
    widths = widths or [len(h) for h in TASK_COLUMNS]
    for row in cells:
        widths = [max(w, len(v)) for w, v in zip(widths, row)]
    lines: list[str] = []
    if first:
        lines.append("  ".join(h.upper().ljust(w) for h, w in zip(TASK_COLUMNS, widths)).rstrip())
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    if lines:
        ctx.print("\n".join(lines))
    return widths


def _cells(t: dict) -> list:
    return [t["id"], t["name"] or "-", t["state"], t["node"], t["cores"], size(t["memory"]),
            age(t["submitted_at"]), t["exit_code"], shorten(t["detail"] or "", 60)]


@command("status", "every field of one task, with its state history", TASK_ID, JSON)
def status(ctx: Context, args) -> int:
    reply = ctx.client.call("task.get", {"id": args.id})
    if args.json:
        ctx.print(as_json({**reply["task"], "events": reply["events"]}))
        return 0
    task = reply["task"]
    width = max(map(len, task)) + 2  # the longest "key:" and one space
    for key, value in task.items():
        if key.endswith("_at"):
            value = when(value)
        elif key == "memory":
            value = size(value)
        elif key == "command":
            value = " ".join(value)
        ctx.print(f"{key + ':':{width}}{'-' if value in (None, '', [], {}) else value}")
    ctx.print("history:")
    for event in reply["events"]:
        ctx.print(f"  {when(event['at'])}  {event['state']:<10} {event['detail']}")
    return 0


@command(
    "logs", "print a task's output (-f: follow it live until it ends)",
    TASK_ID,
    arg("--stderr", action="store_true", help="the standard error instead of the output"),
    arg("--follow", "-f", action="store_true", help="keep printing until the task ends"),
)
def logs(ctx: Context, args) -> int:
    stream = "stderr" if args.stderr else "stdout"
    out = sys.stdout.buffer
    if args.follow:
        try:
            follow(ctx.client, args.id, {stream: out})
        except KeyboardInterrupt:
            return interrupted(ctx, [args.id])
        return 0
    offset = 0
    while True:
        reply = ctx.client.call("task.logs", {"id": args.id, "stream": stream, "offset": offset})
        if not reply["data"]:
            break
        out.write(reply["data"])
        offset += len(reply["data"])
    out.flush()
    return 0


def _signal_verb(op: str):
    def run(ctx: Context, args) -> int:
        for task_id in args.ids:
            reply = ctx.client.call(op, {"id": task_id})
            ctx.print(f"{task_id}: {op.split('.')[1]} requested ({reply['state']})")
        return 0

    return run


@command(
    "kill", "kill tasks (TERM, then KILL after the grace period)",
    arg("ids", type=int, nargs="*", metavar="ID", help="task ids", complete="task"),
    arg("--batch", type=int, action="append", default=[], metavar="BATCH",
        help="every live task of this batch (a sweep's `batch_id`; repeatable)"),
    JSON,
)
def kill(ctx: Context, args) -> int:
    """Kill the tasks that are still live among IDs and the batches; report the others (already
    final, not yours, unknown). Exit status 0 when something was killed and every id was known;
    1 when nothing could be killed, or an id or batch is unknown."""
    if not args.ids and not args.batch:
        raise InvalidArgument("kill what? give task ids, or --batch BATCH")
    killed, skipped = [], []
    batches = args.batch or [None]
    for n, batch in enumerate(batches):
        body = {"ids": args.ids if n == 0 else []}
        if batch is not None:
            body["batch"] = batch
        reply = ctx.client.call("task.kill", body)
        killed += reply["killed"]
        skipped += reply["skipped"]
    if args.json:
        ctx.print(as_json({"killed": killed, "skipped": skipped}))
    else:
        for task in killed:
            ctx.print(f"{task['id']}: kill requested ({task['state']})")
        for task in skipped:
            ctx.err.write(f"zriver: not killed: {task['reason']}\n")
    if not killed and not skipped:
        ctx.err.write(f"zriver: nothing to kill: every task of batch "
                      f"{', '.join(map(str, args.batch))} has already ended\n")
    unknown = any(task["state"] == "unknown" for task in skipped)
    return 1 if unknown or not killed else 0


command("pause", "pause running tasks", TASK_IDS)(_signal_verb("task.pause"))
command("resume", "resume paused tasks", TASK_IDS)(_signal_verb("task.resume"))


@command("wait", "wait until tasks end; exit with the first failure's status", TASK_IDS, JSON)
def wait(ctx: Context, args) -> int:
    try:
        summaries = ctx.client.wait(args.ids)
    except KeyboardInterrupt:
        return interrupted(ctx, args.ids, doing="waiting")
    if args.json:
        ctx.print(as_json(summaries))
    else:
        for s in summaries:  # a task that never ran (a failed dependency) has no exit code
            code = "" if s["exit_code"] is None else f" (exit {s['exit_code']})"
            ctx.print(f"{s['id']}: {s['state']}{code}")
    failures = [exit_status(s) for s in summaries if exit_status(s)]
    return failures[0] if failures else 0
