"""Getting into tasks through the host's SSH relay: ``ssh``, ``connect``, ``forward``,
``ssh-config``.

* ``zriver ssh ID [-- CMD]``: to the relay as ``zriver`` (the jump user), then through it to
  the VPS's own sshd at ``vps-ID:22`` as ``root``; both host keys pinned (the relay's from
  ``cluster.hello``, the VPS's from ``vps.list``). Needs an sshd in the image.
* ``zriver connect ID [-- CMD]``: to the relay as user ``ID``: the relay runs the shell or
  command in the container itself (``docker exec`` on the runner), so any running container
  task works, with no sshd. ``--ide``: the terminal IDE (zriver/client/ide.py).
* ``zriver forward ID PORT``: a local port reaching a port inside the container (forward.py).
* ``zriver ssh-config``: an OpenSSH config block (and the known_hosts file it names) for plain
  ``ssh vps-ID``, scp, rsync and VS Code Remote-SSH.

Both sessions share terminal.py (raw mode, resize, Ctrl-C, exit status). Client keys:
``--identity FILE``, else ``~/.ssh/id_ed25519``, ``~/.ssh/id_rsa`` (sshclient.py); the public
half must be registered to you (``zriver ssh-key add``; ``zriver up`` does it for you).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from zriver.client.registry import Context, arg, command
from zriver.client.verbs_vps import RUNNING, find_vps, refresh_known_hosts, vps_rows
from zriver.config import zriver_home
from zriver.errors import InvalidArgument

if TYPE_CHECKING:
    from zriver.client import sshclient as sc

# asyncio, asyncssh and the modules built on them are imported by the verbs that use them, not
# when the CLI starts (every other verb would pay their import time).

TASK_REF = arg("id", metavar="ID", complete="task",
               help="the task's id (or its name, unique among your live tasks)")
IDENTITY = arg("--identity", "-i", metavar="FILE",
               help="your SSH private key (default ~/.ssh/id_ed25519, then ~/.ssh/id_rsa)")
TTY = (arg("-t", dest="tty", action="store_const", const=True,
           help="ask for a terminal even with a command"),
       arg("-T", dest="tty", action="store_const", const=False,
           help="no terminal even for a shell"))
NO_STDIN = arg("-n", dest="no_stdin", action="store_true",
               help="read nothing from stdin (the command gets EOF), as ssh -n")
COMMAND = arg("command", nargs="...", help="a command to run instead of a shell, after --")
IDE = arg("--ide", action="store_true",
          help="a terminal IDE instead: file tree, editor, shell pane")


def flags_after_id(args, *items) -> None:
    """The flags typed after ID and before ``--`` (``connect 5 --ide``, ``ssh 5 -t -- top``):
    argparse's remainder took them as the command; parse them as the verb's ``items`` and
    leave the command (``ssh 5 ls -l`` keeps ``ls -l``)."""
    words = list(args.command)
    flags = []
    while words and words[0] != "--" and words[0].startswith("-"):
        flags.append(words.pop(0))
        if flags[-1] in ("-i", "--identity") and words:
            flags.append(words.pop(0))
    if flags:
        parser = argparse.ArgumentParser(prog=f"zriver {args.verb}", add_help=False)
        for item in items:
            parser.add_argument(*item.flags, **item.options)
        parser.parse_args(flags, namespace=args)
    args.command = words


NOT_RUNNING = {
    "pending": "it has not started yet (`zriver vps list` shows when it runs)",
    "assigned": "it is starting",
    "unreachable": "its node is unreachable now; it runs again when its runner is back",
    "paused": "`zriver resume` it first",
}


def run_remote(ctx: Context, session) -> int:
    """Run ``session`` (a coroutine giving an exit status) on a fresh loop; a connection
    that breaks on the way (the host restarting, the network) is said on stderr and gives
    255, as OpenSSH does."""
    import asyncssh

    from zriver.client.terminal import LOST
    from zriver.eventloop import run

    try:
        return run(session)  # uvloop, as the roles
    except (asyncssh.Error, ConnectionError) as exc:
        reason = getattr(exc, "reason", "") or str(exc) or type(exc).__name__
        ctx.err.write(f"zriver: the connection through the relay was lost: {reason}\n")
        return LOST


def ssh_target(ctx: Context, ref: str) -> dict:
    """The ``vps.list`` row of a VPS ``zriver ssh`` can reach; says why when it cannot. The
    known_hosts file of ``ssh-config`` is refreshed on the way (new VPS keys appear in it)."""
    rows = vps_rows(ctx)
    refresh_known_hosts(ctx, rows)
    vps = find_vps(ctx, ref, rows)
    task_id = vps["id"]
    if vps["state"] != RUNNING:
        why = NOT_RUNNING.get(vps["state"], f"`zriver status {task_id}` says why")
        raise InvalidArgument(f"VPS {task_id} is {vps['state']}, not running: {why}")
    if not vps.get("host_key"):
        raise InvalidArgument(f"VPS {task_id} has no sshd (or has not reported its host key "
                              f"yet): `zriver connect {task_id}` needs none")
    return vps


@command("ssh", "a shell (or one command) in a VPS, through its sshd and the host's relay",
         TASK_REF, IDENTITY, *TTY, NO_STDIN, COMMAND)
def ssh(ctx: Context, args) -> int:
    """SSH into VPS ID as root (asyncssh: no OpenSSH needed); the exit status is the remote's."""
    from zriver.client import sshclient as sc
    from zriver.client.terminal import remote_command, want_tty

    flags_after_id(args, IDENTITY, *TTY, NO_STDIN)
    keys = sc.client_keys(args.identity)  # a missing key is said before any network
    vps = ssh_target(ctx, args.id)
    relay = sc.relay_of(ctx.client)
    command_line = remote_command(args.command)
    return run_remote(ctx, _ssh(relay, vps, keys, command_line,
                                want_tty(command_line, args.tty), not args.no_stdin))


async def _ssh(relay: sc.Relay, vps: dict, keys: list, command_line: str | None,
               tty: bool, stdin: bool) -> int:
    from zriver.client import sshclient as sc
    from zriver.client.terminal import run_session

    async with await sc.connect_relay(relay, sc.JUMP_USER, keys) as jump:
        async with await sc.connect_vps(jump, vps["id"], vps["host_key"], keys) as conn:
            return await run_session(conn, command_line, tty, stdin=stdin)


@command("connect", "a shell (full terminal) or one command in any running container task",
         TASK_REF, IDENTITY, *TTY, NO_STDIN, IDE, COMMAND)
def connect(ctx: Context, args) -> int:
    """A shell in task ID's container through the relay (no sshd needed in the image)."""
    from zriver.client import sshclient as sc
    from zriver.client.terminal import remote_command, want_tty

    flags_after_id(args, IDENTITY, *TTY, NO_STDIN, IDE)
    keys = sc.client_keys(args.identity)
    relay = sc.relay_of(ctx.client)
    if args.ide:
        from zriver.client.ide import run_ide

        return run_remote(ctx, run_ide(relay, args.id, keys))
    command_line = remote_command(args.command)
    return run_remote(ctx, _connect(relay, args.id, keys, command_line,
                                    want_tty(command_line, args.tty), not args.no_stdin))


async def _connect(relay: sc.Relay, ref: str, keys: list, command_line: str | None,
                   tty: bool, stdin: bool) -> int:
    from zriver.client import sshclient as sc
    from zriver.client.terminal import run_session

    async with await sc.connect_relay(relay, ref, keys) as conn:
        return await run_session(conn, command_line, tty, stdin=stdin)


@command("forward", "reach a port inside a container task from this machine, via the relay",
         TASK_REF, arg("port", type=int, help="the port inside the container"),
         arg("--local", type=int, metavar="L",
             help="the local port on 127.0.0.1 (default: the same; 0: any free one)"),
         arg("--udp", action="store_true", help="forward UDP datagrams instead of TCP"),
         IDENTITY)
def forward(ctx: Context, args) -> int:
    """Listen on 127.0.0.1 and forward every connection (or datagram) until Ctrl-C."""
    from zriver.client import sshclient as sc

    for port in (args.port, args.local):
        if port is not None and not 0 <= port <= 65535:
            raise InvalidArgument(f"bad port {port}: 1-65535 (0: any free local one)")
    keys = sc.client_keys(args.identity)
    relay = sc.relay_of(ctx.client)
    local = args.port if args.local is None else args.local
    return run_remote(ctx, _forward(ctx, relay, keys, args.id, args.port, local, args.udp))


async def _forward(ctx: Context, relay: sc.Relay, keys: list, ref: str, port: int,
                   local: int, udp: bool) -> int:
    import asyncio

    from zriver.client import forward as fwd
    from zriver.client import sshclient as sc

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
    serve = fwd.forward_udp if udp else fwd.forward_tcp
    try:
        async with await sc.connect_relay(relay, sc.JUMP_USER, keys) as conn:
            return await serve(conn, ref, port, local, ctx.print, stop)
    except OSError as exc:  # the local port
        raise InvalidArgument(f"cannot listen on {fwd.LOOPBACK}:{local}: {exc.strerror or exc}"
                              f" (--local 0 takes any free port)") from None
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(RuntimeError, ValueError):
                loop.remove_signal_handler(signum)


# ---- ssh-config ----------------------------------------------------------------------------
RELAY_ALIAS = "zriver-relay"


def known_hosts_file() -> Path:
    """The known_hosts file ``ssh-config`` writes: ``$ZRIVER_HOME/ssh/known_hosts``."""
    return zriver_home() / "ssh" / "known_hosts"


def write_known_hosts(ctx: Context, rows: list[dict] | None = None) -> Path:
    """(Re)write ``known_hosts_file()``: the relay's key and every VPS key ``vps.list`` shows."""
    from zriver.client import sshclient as sc

    relay = sc.relay_of(ctx.client)
    text = sc.known_hosts_text(relay, vps_rows(ctx) if rows is None else rows)
    path = known_hosts_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def config_text(relay: sc.Relay, known_hosts: Path, identity: str | None) -> str:
    """The ``Host zriver-relay`` and ``Host vps-*`` blocks (see the module docstring)."""
    from zriver.client import sshclient as sc

    pinned = [f"    UserKnownHostsFile {known_hosts}", "    StrictHostKeyChecking yes"]
    if identity:
        pinned += [f"    IdentityFile {Path(identity).expanduser().resolve()}",
                   "    IdentitiesOnly yes"]
    lines = [f"# zriver: VPSes of the host at {relay.address} (`zriver ssh-config`; the host "
             f"keys are pinned in {known_hosts}, refreshed by `zriver vps list`)",
             f"Host {RELAY_ALIAS}", f"    HostName {relay.address}", f"    Port {relay.port}",
             f"    User {sc.JUMP_USER}", *pinned,
             "Host vps-*", f"    ProxyJump {RELAY_ALIAS}", f"    User {sc.VPS_USER}", *pinned]
    return "\n".join(lines)


@command("ssh-config", "an OpenSSH config block: then `ssh vps-ID`, scp, rsync, VS Code work",
         arg("--identity", "-i", metavar="FILE",
             help="the private key OpenSSH should use (default: its own defaults)"))
def ssh_config(ctx: Context, args) -> int:
    """Print a `Host vps-*` block (append it to ~/.ssh/config) and write the known_hosts file
    it points at, with the relay's and every VPS's host key pinned: no prompt, ever."""
    from zriver.client import sshclient as sc

    relay = sc.relay_of(ctx.client)
    ctx.print(config_text(relay, write_known_hosts(ctx), args.identity))
    return 0
