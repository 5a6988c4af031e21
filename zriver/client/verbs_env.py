"""Environment verbs: env create, env build, env shell, env commit, env sync, env list, env rm.

An env lives on the host's Docker (see docs/environments.md). Files a verb needs on the host (a
root filesystem tarball, a build context) are uploaded in chunks (``env.upload``), so these
verbs work from any machine; ``env shell`` alone needs the host's Docker and therefore runs on
the host machine: it asks the host for the env container and replaces itself with
``docker exec -it`` (a real terminal: editors, ``htop``, resizing all work).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from zriver.bundle import child_environment
from zriver.client.progress import Progress, bar_phase, watching
from zriver.client.registry import JSON, Context, arg, command
from zriver.client.render import age, as_json, size, table
from zriver.errors import InvalidArgument, Unavailable

ENV_NAME = arg("name", help="env name (lowercase letters, digits, _ . -)", complete="env")
NO_COMMIT = arg("--no-commit", action="store_true",
                help="do not publish a first version now (`zriver env commit` does it later)")
UPLOAD_CHUNK = 4 << 20
LONG = 3600.0
SYNC_POLL = 0.25
"""Seconds between two looks at where an ``env sync`` stands."""
SYNC_SILENCE = 60.0
"""A node asked to sync that says nothing for this long counts as failed (an older runner)."""
SHELL = ["/bin/sh", "-c",
         "if command -v bash >/dev/null 2>&1; then exec bash -l; else exec sh -l; fi"]


def _long(ctx: Context) -> float:
    """The timeout of an op that answers only when slow Docker work is done (a commit, a
    build); the host is checked first with the normal timeout, so a dead host fails fast."""
    ctx.client.hello()
    return max(ctx.timeout, LONG)


def upload(ctx: Context, path: Path, progress: Progress | None = None) -> str:
    """Send ``path`` to the host in chunks; return the upload token. ``progress`` shows
    the bytes sent (phase ``uploading``)."""
    ctx.client.hello()  # fail fast when there is no host, before minutes of chunks
    token = secrets.token_hex(16)
    offset = 0
    total = path.stat().st_size
    report = progress.update if progress is not None else lambda *_: None
    with open(path, "rb") as handle:
        while True:
            report("uploading", offset, total)
            chunk = handle.read(UPLOAD_CHUNK)
            if not chunk and offset:
                break
            offset = ctx.client.call("env.upload", {"token": token, "offset": offset,
                                                    "data": chunk}, timeout=120)["size"]
            if not chunk:
                break
    return token


def _slow_call(ctx: Context, progress: Progress, op: str, body: dict, phase: str) -> dict:
    """``op`` (a create or commit that answers when Docker is done), drawing the host's
    progress meanwhile on a terminal; the host is asked to push it only then."""
    timeout = _long(ctx)
    if progress.enabled:
        body = {**body, "progress": True}
    with watching(ctx.client, progress, phase):
        return ctx.client.call(op, body, timeout=timeout)


def _created(ctx: Context, args, reply: dict) -> int:
    if args.json:
        ctx.print(as_json(reply))
        return 0
    line = (f"env {reply['name']} created from {reply['source']} "
            f"(container {reply['container'][:12]})")
    version = reply.get("version")
    if version:
        line += f"; version {version['version']} ({size(version['size'])}) published"
    ctx.print(line)
    ctx.print(f"next: zriver env shell {reply['name']}   (then zriver env commit {reply['name']})")
    return 0


@command(
    "env create", "make a Docker environment on the host from an image or a rootfs tarball",
    ENV_NAME,
    arg("--image", help="an image in the host's Docker (pulled when missing and reachable)"),
    arg("--from-tar", metavar="FILE", help="a root filesystem tarball (no registry needed)"),
    NO_COMMIT, JSON,
)
def create(ctx: Context, args) -> int:
    """Create a persistent env container on the host and publish its first version."""
    if (args.image is None) == (args.from_tar is None):
        raise InvalidArgument("give exactly one of --image IMAGE or --from-tar FILE")
    body = {"name": args.name, "commit": not args.no_commit}
    with Progress(ctx.err) as progress:
        if args.image:
            body["image"] = args.image
        else:
            path = Path(args.from_tar)
            if not path.is_file():
                raise InvalidArgument(f"{path} is not a file")
            body["upload"] = upload(ctx, path, progress)
        reply = _slow_call(ctx, progress, "env.create", body, "creating")
    return _created(ctx, args, reply)


@command(
    "env build", "make a Docker environment on the host from a Dockerfile",
    ENV_NAME,
    arg("-f", "--file", dest="dockerfile", required=True, help="the Dockerfile"),
    arg("--context", help="the build context folder (default: the Dockerfile's folder)"),
    NO_COMMIT, JSON,
)
def build(ctx: Context, args) -> int:
    """Build the Dockerfile on the host (its context is uploaded) into a new env."""
    dockerfile = Path(args.dockerfile).resolve()
    context = Path(args.context).resolve() if args.context else dockerfile.parent
    if not dockerfile.is_file():
        raise InvalidArgument(f"{dockerfile} is not a file")
    if not context.is_dir():
        raise InvalidArgument(f"{context} is not a folder")
    with Progress(ctx.err) as progress:
        with tempfile.TemporaryDirectory(prefix="zriver-build-") as tmp:
            archive = Path(tmp) / "context.tar"
            inside = _context_tar(archive, context, dockerfile)
            token = upload(ctx, archive, progress)
        reply = _slow_call(ctx, progress, "env.create",
                           {"name": args.name, "upload": token, "dockerfile": inside,
                            "commit": not args.no_commit}, "building")
    return _created(ctx, args, reply)


def _context_tar(archive: Path, context: Path, dockerfile: Path) -> str:
    """Tar ``context`` (plus the Dockerfile when it lies outside); return its path inside."""
    with tarfile.open(archive, "w") as tar:
        tar.add(context, arcname=".")
        try:
            return str(dockerfile.relative_to(context))
        except ValueError:
            tar.add(dockerfile, arcname=".zriver.Dockerfile")
            return ".zriver.Dockerfile"


@command(
    "env shell", "an interactive shell in an env's container (run it on the host machine)",
    ENV_NAME,
    arg("command", nargs="...", help="a command to run instead of a shell, after --"),
)
def shell(ctx: Context, args) -> int:
    """Open a full terminal in the env container (`docker exec -it`); install what you need,
    exit, then `zriver env commit NAME` publishes it to every node."""
    reply = ctx.client.call("env.shell", {"name": args.name}, timeout=max(ctx.timeout, 120))
    docker = shutil.which("docker")
    where = reply["hostname"]
    if docker is None:
        raise Unavailable(f"env shell needs the docker CLI of the host machine: run "
                          f"`zriver env shell {args.name}` on {where}")
    env = child_environment()
    if reply.get("docker_host"):
        env["DOCKER_HOST"] = reply["docker_host"]
    container = reply["container"]
    try:
        check = subprocess.run([docker, "container", "inspect", "--format", "{{.Id}}",
                                container], env=env, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Unavailable(f"the local docker CLI did not answer: {exc}") from None
    if check.returncode != 0:
        raise Unavailable(f"the container of env {args.name} is in the Docker of the host "
                          f"machine ({where}), which this machine does not reach: run "
                          f"`zriver env shell {args.name}` on {where}")
    command_line = list(args.command)
    if command_line and command_line[0] == "--":
        command_line = command_line[1:]
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    argv = [docker, "exec", "-it" if interactive else "-i",
            "-e", f"TERM={os.environ.get('TERM', 'xterm')}", container,
            *(command_line or SHELL)]
    if not command_line:
        print(f"zriver: a shell in env {args.name} (container {container[:12]}); when done, "
              f"`zriver env commit {args.name}` publishes the changes", file=sys.stderr,
              flush=True)
    ctx.close()
    os.execvpe(docker, argv, env)
    return 0  # not reached


@command(
    "env commit", "snapshot an env into a new version and publish it to every node",
    ENV_NAME,
    arg("--message", "-m", default="", help="a note kept with the version"),
    JSON,
)
def commit(ctx: Context, args) -> int:
    with Progress(ctx.err) as progress:
        reply = _slow_call(ctx, progress, "env.commit",
                           {"name": args.name, "message": args.message}, "committing")
    if args.json:
        ctx.print(as_json(reply))
        return 0
    ctx.print(f"env {args.name} version {reply['version']} ({size(reply['size'])}, sha256 "
              f"{reply['sha256'][:16]}) published")
    if reply.get("pruned"):
        ctx.print(f"pruned old versions: {', '.join(reply['pruned'])}")
    return 0


@command(
    "env sync", "load an env version on nodes now, so that tasks need not wait for it",
    ENV_NAME,
    arg("--version", help="this version (default: the newest)"),
    arg("--node", action="append", dest="nodes", metavar="NODE",
        help="only this node (repeatable; default: every online node with Docker)"),
    JSON,
)
def sync(ctx: Context, args) -> int:
    """Ask the nodes to load the version and wait until each has it or failed; on a
    terminal, one progress line per node meanwhile. Exit 1 when a node failed."""
    body = {"name": args.name, "version": args.version, "nodes": args.nodes or []}
    reply = ctx.client.call("env.sync", {**body, "start": True}, timeout=max(ctx.timeout, 30))
    deadline = time.monotonic() + max(ctx.timeout, LONG)
    with Progress(ctx.err) as progress:
        while not _sync_over(reply["nodes"]) and time.monotonic() < deadline:
            for node, state in reply["nodes"].items():
                progress.update(bar_phase(state["phase"], state.get("total")),
                                state.get("done"), state.get("total"), row=node,
                                ended=state["state"] in ("done", "failed"))
            time.sleep(SYNC_POLL)
            reply = ctx.client.call("env.sync", {**body, "version": reply["version"],
                                                 "start": False})
    if args.json:
        ctx.print(as_json(reply))
    else:
        for node, state in sorted(reply["nodes"].items()):
            ctx.print(f"{node}: {_sync_outcome(reply, state)}")
    return 0 if all(s["state"] == "done" for s in reply["nodes"].values()) else 1


def _sync_over(nodes: dict) -> bool:
    return all(s["state"] in ("done", "failed")
               or (s["state"] == "waiting" and (s.get("seconds") or 0) > SYNC_SILENCE)
               for s in nodes.values())


def _sync_outcome(reply: dict, state: dict) -> str:
    what = f"env {reply['name']} version {reply['version']}"
    if state["state"] == "done":
        return f"has {what}"
    if state["state"] == "failed":
        return f"{what} {state['phase']}"
    if state["state"] == "waiting":
        return (f"{what}: no answer for {int(state.get('seconds') or 0)}s (an older runner "
                f"cannot sync without a task)")
    return f"{what} still {state['phase']} (gave up waiting)"


@command(
    "env list", "envs, their versions, and which nodes have which version",
    arg("name", nargs="?", help="one env (default: all)", complete="env"),
    JSON,
)
def list_envs(ctx: Context, args) -> int:
    reply = ctx.client.call("env.list", {"name": args.name}, timeout=60)
    if args.json:
        ctx.print(as_json(reply))
        return 0
    rows = []
    for env in reply["envs"]:
        for i, v in enumerate(env["versions"] or [None]):
            if v is None:
                rows.append([env["name"], "-", "-", "-", "-", "-", _nodes(env, None)])
                continue
            label = v["version"] + (" (newest)" if i == 0 else "")
            rows.append([env["name"] if i == 0 else "", label, age(v["created_at"]) + " ago",
                         size(v["size"]), v["sha256"][:16], v["tasks"],
                         _nodes(env, v["version"])])
    ctx.print(table(["env", "version", "created", "size", "sha256", "tasks", "nodes"], rows))
    for env in reply["envs"]:
        ctx.print(f"{env['name']}: container {env['container_state']}, from {env['source']}")
    if not reply["docker"]["available"]:
        ctx.print(f"warning: the host's Docker does not answer: {reply['docker'].get('error')}")
    return 0


def _nodes(env: dict, version: str | None) -> str:
    names = []
    for node, have in sorted(env["nodes"].items()):
        syncing = have.get("syncing")
        if syncing and syncing.get("version") == version:
            names.append(f"{node} (syncing: {syncing.get('phase')})")
        elif version in have.get("versions", []):
            names.append(node)
    return ", ".join(names) or "-"


@command(
    "env rm", "remove an env, or one of its versions (refused while tasks need it)",
    ENV_NAME,
    arg("--version", help="remove only this version"),
)
def remove(ctx: Context, args) -> int:
    reply = ctx.client.call("env.rm", {"name": args.name, "version": args.version},
                            timeout=_long(ctx))
    what = f"env {args.name}" if not args.version else f"version {args.version} of {args.name}"
    removed = reply.get("removed") or []
    ctx.print(f"removed {what}" + (f" ({len(removed)} versions)" if not args.version else ""))
    return 0
