"""Cluster verbs: nodes, health, the long-lived roles (up, host, runner) and init config."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from zriver import config as cfg
from zriver.client.registry import JSON, Context, arg, command
from zriver.client.render import age, as_json, size, table
from zriver.errors import Conflict, InvalidArgument
from zriver.keys import choose
from zriver.sizes import format_size


@command("nodes", "list nodes with their capacity and what is in use", JSON)
def nodes(ctx: Context, args) -> int:
    reply = ctx.client.call("node.list")
    warn_if_open(ctx, reply)
    rows = reply["nodes"]
    if args.json:
        ctx.print(as_json(rows))
        return 0
    ctx.print(table(
        ["node", "state", "cores", "memory", "numa", "gpus", "docker", "last seen"],
        [[n["name"], node_state(n), f"{n['cores_used']}/{n['cores']}",
          f"{size(n['memory_used'])}/{size(n['memory'])}", n["numa_zones"],
          f"{len(n.get('gpus_free', []))}/{len(n['gpus'])}" if n["gpus"] else "0",
          {True: "yes", False: "unavailable"}.get(n.get("docker"), "-"),
          age(n["last_seen"]) + " ago" if n["last_seen"] else "-"] for n in rows]))
    for n in rows:
        if n.get("docker") is False:
            ctx.print(f"{n['name']}: docker unavailable: {n.get('docker_error') or '?'}")
    return 0


OPEN_WARNING = ("warning: authentication is OFF on this host (security = \"none\"): anyone "
                "who can reach its ports can run anything on every node\n")


def warn_if_open(ctx: Context, reply: dict) -> None:
    """Say loudly, on stderr, that the host runs with ``security = "none"``."""
    if reply.get("security") == "none":
        ctx.err.write(OPEN_WARNING)


def node_state(node: dict) -> str:
    """``online``, ``online,drained``, ``degraded (GPU ... vanished)`` ..."""
    state = node["state"]
    if node.get("drained"):
        state += ",drained"
    if node.get("degraded"):
        state += f" ({node['degraded']})"
    return state


@command("health", "live CPU, memory, load, temperatures and GPUs from the last heartbeat",
         arg("node", nargs="?", help="one node (default: all)", complete="node"), JSON)
def health(ctx: Context, args) -> int:
    reply = ctx.client.call("node.health", {"name": args.node})
    warn_if_open(ctx, reply)
    if reply.get("dropped_publications") and not args.json:
        ctx.out.write(f"{reply['dropped_publications']} forged or misdirected publications "
                      f"dropped by the host\n")
    rows = reply["nodes"]
    if args.json:
        ctx.print(as_json(rows))
        return 0
    for n in rows:
        if "cpu_percent" not in n:
            ctx.print(f"{n['name']}: {n['state']}, no heartbeat yet")
            continue
        temps = ", ".join(f"{k} {v:.0f}°C" for k, v in sorted(n["temperatures"].items())[:4])
        ctx.print(f"{n['name']} ({n['state']}, heartbeat {age(n['last_seen'])} ago)")
        ctx.print(f"  cpu      {n['cpu_percent']:.0f}%   load {' '.join(map(str, n['load']))}"
                  f"   tasks running {n.get('running', 0)}")
        ctx.print(f"  memory   {format_size(n['memory_used'])} / {format_size(n['memory_total'])}"
                  f"   task memory limits by {n.get('memory_limit') or '?'}")
        ctx.print(f"  temps    {temps or 'no sensors'}")
        for gpu in n["gpus"] or []:
            ctx.print(f"  gpu {gpu['index']}    {gpu['utilization']}% busy, "
                      f"{format_size(gpu['memory_used'])} used, {gpu.get('temperature', '?')}°C")
        if not n["gpus"]:
            ctx.print("  gpus     none")
    return 0


@command(
    "up", "run a one-machine cluster (host + runner in this process, loopback only)",
    arg("--port", type=int, default=cfg.DEFAULT_ROUTER_PORT,
        help="router port; events use the next two, runner streams the third; the SSH "
             "relay its relay_port (0: any free ports, the relay's too)"),
    arg("--cores", type=int, default=0, help="cores to offer (default: all)"),
    arg("--memory", default="", help="memory to offer, e.g. 8G (default: all)"),
    arg("--kill-tasks", action="store_true",
        help="on stop, end the running native tasks (default: they run on and the next start "
             "re-adopts them)"),
    arg("--detach", "-d", action="store_true",
        help="run in the background (log: up.log in the data dir) and return once it "
             "answers; `zriver down` stops it"),
    needs_cluster=False,
)
def up(ctx: Context, args) -> int:
    """Start a host and a runner in one process on 127.0.0.1, data under $ZRIVER_HOME."""
    import asyncio

    from zriver.eventloop import run
    from zriver.roles import serve_both

    host = cfg.load(None, cfg.HostSettings, "host.toml")
    if args.detach:
        return up_detached(ctx, args, Path(host.resolved().data_dir))
    # --port 0: every port ephemeral (the relay too); else PORT..PORT+3 and the relay's own
    ports = ((0, 0, 0, 0) if args.port == 0 else
             (args.port, args.port + 1, args.port + 2, args.port + 3))
    relay_port = 0 if args.port == 0 and host.relay_port != -1 else host.relay_port
    web_port = 0 if args.port == 0 and host.web_port != -1 else host.web_port
    host = replace(host, bind_address="127.0.0.1", router_port=ports[0], xsub_port=ports[1],
                   xpub_port=ports[2], stream_port=ports[3], relay_port=relay_port,
                   web_port=web_port)
    runner = cfg.load(None, cfg.RunnerSettings, "runner.toml")
    runner = replace(runner, cores=args.cores or runner.cores,
                     memory=args.memory or runner.memory)

    def announce(h, r) -> None:
        ctx.print(f"zriver is up: host {h.endpoints['router']}, node {r.name} with "
                  f"{len(r.info['cores'])} cores and {format_size(r.info['memory'])}, "
                  f"data in {h.data_dir}. Ctrl-C (or `zriver down`) stops it"
                  + (" and ends its tasks." if args.kill_tasks else
                     " (running tasks carry on; the next start takes them back)."))
        if "docker" not in r.info.get("backends", []):
            docker = r.backends.get("docker")
            reason = docker.error if docker is not None else "no Docker support in this build"
            fallback = (f"; default_container {h.settings.default_container!r} is not used"
                        if h.settings.default_container else "")
            h.settings.default_container = ""
            ctx.print(f"Docker is not available here ({reason}): tasks run natively{fallback}.")
        if h.relay is not None:
            ctx.print(f"SSH relay on {h.endpoints['relay']}: zriver ssh/connect/forward ID, "
                      f"or ssh -p {h.relay.port} ID@127.0.0.1")
        announce_web(ctx, h, admin=True)
        registering = asyncio.ensure_future(register_ssh_keys(ctx, h))
        BACKGROUND.add(registering)  # the loop keeps only weak references to tasks
        registering.add_done_callback(BACKGROUND.discard)

    run(serve_both(host, runner, announce, args.kill_tasks))
    return 0


def up_detached(ctx: Context, args, data_dir: Path) -> int:
    """``zriver up -d``: the same ``up`` in the background (``zriver.client.background``)."""
    from zriver.client import background

    up_args = ["--port", str(args.port), "--cores", str(args.cores)]
    up_args += ["--memory", args.memory] if args.memory else []
    up_args += ["--kill-tasks"] if args.kill_tasks else []
    argv = (["--log-json"] if args.log_json else []) + ["up", *up_args]
    started = background.start(data_dir, argv, ctx.key, ctx.host_key)
    ctx.print(f"zriver is up in the background (pid {started.pid}): host {started.router}, "
              f"node {started.node}, data in {data_dir}; its output (the dashboard's sign-in "
              f"link too) goes to {started.log}. `zriver down` stops it.")
    return 0


@command("down", "stop the `zriver up` (or `zriver host`) of this machine's data dir",
         needs_cluster=False)
def down(ctx: Context, args) -> int:
    """Send SIGTERM to the process holding $ZRIVER_HOME (the host's data dir) and wait until
    it has stopped. Native tasks run on under the node's keeper (unless it was started with
    --kill-tasks); the next `zriver up` takes them back. Nothing running is not an error."""
    from zriver.client import background

    data_dir = Path(cfg.load(None, cfg.HostSettings, "host.toml").resolved().data_dir)
    stopped = background.stop(data_dir)
    if not stopped.pid:
        ctx.err.write(f"nothing to stop: no zriver up or zriver host runs on {data_dir}"
                      + ("; removed its stale endpoints.json" if stopped.stale else "") + "\n")
        return 0
    ctx.print(f"stopped {stopped.role} (pid {stopped.pid}) on {data_dir}; native tasks run on "
              f"under the node's keeper (`zriver up -d` takes them back)")
    return 0


BACKGROUND: set = set()
UP_LINK_TTL = 3600.0
"""How long the sign-in link ``zriver up`` prints stays good (``zriver web`` makes more)."""


def announce_web(ctx: Context, host, admin: bool = False) -> None:
    """Print the dashboard's URL; with ``admin`` (``zriver up``) a one-time sign-in link of
    the local admin instead, good for ``UP_LINK_TTL`` seconds."""
    if host.web is None:
        return
    if not admin:
        ctx.print(f"dashboard and HTTP API on {host.web.url} (sign in with a token from "
                  f"`zriver token create`, or a link from `zriver web`)")
        return
    from zriver.principal import ADMIN, Principal
    from zriver.roles import local_user

    link = host.web.login_link(Principal(local_user(), ADMIN), ttl=UP_LINK_TTL)
    ctx.print(f"dashboard on {host.web.url}; sign in once with {link} "
              f"(`zriver web` opens a new sign-in link)")


async def register_ssh_keys(ctx: Context, host) -> None:
    """``zriver up``: the local user's ``~/.ssh/*.pub`` keys registered for the local admin
    (zriver/host/localssh.py), said once: keys already registered are skipped silently."""
    from zriver.host.localssh import register_local_ssh_keys
    from zriver.roles import local_user

    added = await register_local_ssh_keys(host, local_user())
    if added:
        ctx.print(f"registered your SSH key{'s' if len(added) > 1 else ''} "
                  f"{', '.join(str(p) for p in added)} for {local_user()}: `zriver ssh ID`, "
                  f"`zriver connect ID` and `zriver forward` need nothing more")


@command("host", "run the coordinator (scheduling, state, the ZeroMQ hub)",
         arg("--config", help="host.toml (default: $ZRIVER_HOME/host.toml when present)"),
         needs_cluster=False)
def host(ctx: Context, args) -> int:
    from zriver.eventloop import run
    from zriver.roles import serve_host

    run(serve_host(cfg.load(args.config, cfg.HostSettings, "host.toml"),
                   lambda h: announce_web(ctx, h)))
    return 0


@command("runner", "run the node agent (connects to the host, runs tasks)",
         arg("--config", help="runner.toml (default: $ZRIVER_HOME/runner.toml when present)"),
         arg("--name", help="node name (overrides the config)"),
         arg("--connect", metavar="HOST", help="host address (overrides the config)"),
         arg("--kill-tasks", action="store_true",
             help="on SIGTERM/Ctrl-C, end the native tasks (default: they run on under the "
                  "node's keeper and the next start re-adopts them)"),
         needs_cluster=False)
def runner(ctx: Context, args) -> int:
    from zriver.eventloop import run
    from zriver.roles import serve_runner

    settings = cfg.load(args.config, cfg.RunnerSettings, "runner.toml")
    if args.name:
        settings = replace(settings, name=args.name)
    if args.connect:
        settings = replace(settings, host=args.connect)
    # CURVE: --key/--host-key, then $ZRIVER_KEY/$ZRIVER_HOST_KEY, then runner.toml
    settings = replace(settings, key=choose(ctx.key, "ZRIVER_KEY", settings.key),
                       host_key=choose(ctx.host_key, "ZRIVER_HOST_KEY", settings.host_key))
    run(serve_runner(settings, args.kill_tasks))
    return 0


@command(
    "init config", "write a commented default config file",
    arg("--host", dest="role", action="store_const", const="host", help="host.toml"),
    arg("--runner", dest="role", action="store_const", const="runner", help="runner.toml"),
    arg("--client", dest="role", action="store_const", const="client",
        help="client.toml (host address and keys)"),
    arg("--output", "-o", help="where to write (default: $ZRIVER_HOME/<role>.toml; - for stdout)"),
    arg("--force", action="store_true", help="overwrite an existing file"),
    needs_cluster=False,
)
def init_config(ctx: Context, args) -> int:
    role = args.role or "host"
    text = {"host": cfg.HOST_TEMPLATE, "runner": cfg.RUNNER_TEMPLATE,
            "client": cfg.CLIENT_TEMPLATE}[role]
    if args.output == "-":
        ctx.print(text.rstrip())
        return 0
    path = Path(args.output) if args.output else cfg.zriver_home() / f"{role}.toml"
    if path.exists() and not args.force:
        raise Conflict(f"{path} exists; use --force to overwrite it")
    if path.is_dir():
        raise InvalidArgument(f"{path} is a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    ctx.print(str(path))
    return 0
