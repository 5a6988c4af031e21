"""VPS verbs: ``vps create``, ``vps list``, ``vps stop``, ``vps restart``, ``vps commit``.

A VPS is a task of kind ``vps`` (a persistent container, see docs/vps.md): ``vps create``
submits it through the usual submit path (``task.submit``, one idempotency key) with an empty
command, the SSH public keys for its ``authorized_keys`` and the idle stop; the other verbs are
the host's ``vps.*`` ops. People reach a VPS with ``zriver ssh``/``connect``/``forward``
(verbs_ssh.py), all through the host's SSH relay.
"""

from __future__ import annotations

import time

from zriver.client.progress import Progress, watching
from zriver.client.registry import JSON, Context, arg, command
from zriver.client.render import age, as_json, size, table
from zriver.client.verbs_sshkeys import DEFAULT_PUBLIC_KEYS, read_public_key
from zriver.client.verbs_tasks import TASK_ID, owner
from zriver import lifecycle as lc
from zriver.errors import InvalidArgument, NotFound, ZriverError
from zriver.sizes import format_duration, parse_duration, parse_size
from zriver.spec import VPS

LONG = 3600.0
RUNNING = lc.RUNNING


def public_keys(files: list[str], lines: list[str]) -> list[str]:
    """The OpenSSH public key lines for ``authorized_keys``: every ``--public-key-file`` and
    ``--public-key``; with neither, ``~/.ssh/id_ed25519.pub`` then ``~/.ssh/id_rsa.pub``."""
    texts = [read_public_key(path) for path in files] + list(lines)
    if not texts:
        texts = [read_public_key(None)]
    return [check_public_key(text) for text in texts]


def check_public_key(text: str) -> str:
    """One public key line in OpenSSH form; ``InvalidArgument`` for anything else."""
    if "PRIVATE KEY" in text:
        raise InvalidArgument("that is a private key: give the .pub file (or line)")
    import asyncssh  # here, not at start-up: only this needs it

    try:
        key = asyncssh.import_public_key(text.strip())
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise InvalidArgument(f"not an SSH public key ({exc}): give a line like "
                              f"'ssh-ed25519 AAAA... you@machine'") from None
    line = key.export_public_key("openssh").decode().strip()
    comment = key.get_comment()
    return f"{line} {comment}" if comment and comment not in line else line


def backend(container: str | None) -> dict:
    """``--container ENV`` -> docker with that env; none: the host's default (``auto``)."""
    if container:
        return {"backend": "docker", "container": container}
    return {"backend": "auto"}


def vps_spec(args) -> dict:
    """The task spec ``vps create`` submits."""
    return {"kind": VPS, "name": args.name, "cores": args.cores,
            "memory": parse_size(args.memory) if args.memory else None, "gpus": args.gpus,
            "owner": owner(), "command": [], "target": args.target, "workdir": None,
            "ssh_keys": public_keys(args.public_key_file, args.public_key),
            "idle_stop": parse_duration(args.idle_stop) if args.idle_stop else None,
            **backend(args.container)}


def how_to_connect(vps: dict) -> str:
    """What a person types to get in: ``zriver ssh ID`` with an sshd, else ``connect``."""
    return f"zriver ssh {vps['id']}" if vps.get("host_key") else f"zriver connect {vps['id']}"


def vps_rows(ctx: Context) -> list[dict]:
    return ctx.client.call("vps.list")["vps"]


def find_vps(ctx: Context, ref: int | str, rows: list[dict] | None = None) -> dict:
    """The ``vps.list`` row (of ``rows``, else asked for) of ``ref``: an id, or a name unique
    among the VPSes you see; ``NotFound`` when it is none of yours."""
    rows = vps_rows(ctx) if rows is None else rows
    text = str(ref)
    found = [r for r in rows if (r["id"] == int(text) if text.isdigit() else r["name"] == text)]
    if len(found) > 1:
        raise InvalidArgument(f"{len(found)} VPSes are called {text!r} (ids "
                              f"{', '.join(str(r['id']) for r in found)}): give the id")
    if not found:
        raise NotFound(f"no VPS {text} of yours (`zriver vps list` shows them)")
    return found[0]


@command(
    "vps create", "create a VPS: a persistent container you SSH into (prints its id)",
    arg("--target", complete="target", help="NODE, NODE:NUMA_ZONE or NODE::GPU[,GPU]"),
    arg("--cores", type=int, default=1, help="cores to hold for it (default 1)"),
    arg("--memory", help="memory limit, e.g. 32G (default: none)"),
    arg("--gpus", type=int, default=0, help="GPUs to hold for it"),
    arg("--container", complete="env",
        help="the Docker environment (default: the cluster's default_container)"),
    arg("--public-key-file", action="append", default=[], metavar="FILE",
        help=f"a .pub file for its authorized_keys (repeatable; default "
             f"{' then '.join(DEFAULT_PUBLIC_KEYS)})"),
    arg("--public-key", action="append", default=[], metavar="LINE",
        help="a public key line, 'ssh-ed25519 AAAA...' (repeatable)"),
    arg("--name", default="", help="a name to recognise it by"),
    arg("--idle-stop", metavar="DURATION",
        help="stop it after this long with no session and under 5%% CPU, e.g. 30m, 2h, 1d"),
    arg("--wait", action="store_true", help="wait until it runs"),
    JSON,
)
def vps_create(ctx: Context, args) -> int:
    """Submit a VPS task; it runs until `zriver vps stop` (or its idle stop)."""
    reply = ctx.client.submit([vps_spec(args)])
    task_id = reply["ids"][0]
    row = wait_running(ctx, task_id) if args.wait else None
    if args.json:
        ctx.print(as_json({"id": task_id, "vps": row}))
        return 0
    ctx.print(str(task_id))
    state = row["state"] if row else "submitted"
    ctx.err.write(f"VPS {task_id} {state}. Get in with `zriver ssh {task_id}` (its sshd) or "
                  f"`zriver connect {task_id}` (any image); `zriver ssh-config >> "
                  f"~/.ssh/config` makes `ssh vps-{task_id}` work too.\n")
    return 0


def wait_running(ctx: Context, task_id: int, timeout: float = 600.0) -> dict:
    """Wait (on the host's event stream) until VPS ``task_id`` runs and return its
    ``vps.list`` row; raise when it ended instead, or after ``timeout``."""
    deadline = time.monotonic() + timeout
    events = ctx.client.subscribe([f"evt.task.{task_id}"])
    try:
        while True:
            state = ctx.client.call("task.get", {"id": task_id})["task"]  # after subscribing
            if state["state"] == RUNNING:
                return find_vps(ctx, task_id)
            if lc.is_final(state["state"]):
                raise InvalidArgument(f"VPS {task_id} ended: {state['state']} "
                                      f"({state.get('detail') or 'no detail'})")
            if time.monotonic() > deadline:
                raise InvalidArgument(f"VPS {task_id} is still {state['state']} after "
                                      f"{format_duration(timeout)}")
            if events.poll(1000):
                while events.poll(0):
                    events.recv_multipart()
    finally:
        events.close(linger=0)


def resources(vps: dict) -> str:
    parts = [f"{vps['cores']}c"]
    if vps.get("memory"):
        parts.append(size(vps["memory"]))
    if vps.get("gpus"):
        parts.append(f"{vps['gpus']}gpu")
    return " ".join(parts)


def idle_for(vps: dict) -> str:
    if vps.get("streams"):
        return f"in use ({vps['streams']})"
    return age(vps.get("idle_since")) if vps.get("idle_since") else "-"


@command("vps list", "your VPSes (an admin: all): where, state, resources, how to get in", JSON)
def vps_list(ctx: Context, args) -> int:
    rows = vps_rows(ctx)
    refresh_known_hosts(ctx, rows)
    if args.json:
        ctx.print(as_json(rows))
        return 0
    ctx.print(table(
        ["id", "name", "owner", "node", "state", "resources", "uptime", "idle for", "connect"],
        [[v["id"], v["name"] or "-", v["owner"], v["node"] or "-", v["state"], resources(v),
          age(v.get("started_at")) if v["state"] == RUNNING else "-", idle_for(v),
          how_to_connect(v)] for v in rows]))
    return 0


def refresh_known_hosts(ctx: Context, rows: list[dict]) -> None:
    """Rewrite the known_hosts file of ``zriver ssh-config`` when there is one (new VPS keys
    appear in it without running ssh-config again)."""
    from zriver.client.verbs_ssh import known_hosts_file, write_known_hosts

    if known_hosts_file().exists():
        try:
            write_known_hosts(ctx, rows)
        except (ZriverError, OSError):  # the relay may be off: the list still prints
            pass


def _vps_op(op: str, done: str):
    def run(ctx: Context, args) -> int:
        reply = ctx.client.call(op, {"id": args.id})
        ctx.print(f"VPS {args.id}: {done} ({reply.get('state', 'ok')})")
        return 0

    return run


command("vps stop", "stop a VPS: its container ends (and its disk with it)", TASK_ID)(
    _vps_op("vps.stop", "stop requested"))
command("vps restart", "restart a VPS: same node, same container and disk", TASK_ID)(
    _vps_op("vps.restart", "restart requested"))


@command("vps commit", "the VPS's filesystem now becomes a new version of env NAME",
         TASK_ID, arg("--env", required=True, complete="env", help="the env to publish to"),
         JSON)
def vps_commit(ctx: Context, args) -> int:
    ctx.client.hello()  # a dead host fails fast, before the long wait
    with Progress(ctx.err) as progress, watching(ctx.client, progress, "committing"):
        reply = ctx.client.call("vps.commit", {"id": args.id, "env": args.env},
                                timeout=max(ctx.timeout, LONG))
    if args.json:
        ctx.print(as_json(reply))
    else:
        ctx.print(f"env {reply['env']} version {reply['version']} published from VPS {args.id}")
    return 0

