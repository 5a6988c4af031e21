"""Key verbs: ``init keys`` (on the host machine), ``keys new|host`` (local files),
``keys add|list|revoke`` (ops of the host, admins only). The flow is in docs/security.md."""

from __future__ import annotations

import shlex
from pathlib import Path

from zriver import config as cfg
from zriver import keys
from zriver.client.registry import JSON, Context, arg, command
from zriver.client.render import age, as_json, table
from zriver.client.verbs_sshkeys import read_public_key
from zriver.client.verbs_tasks import owner
from zriver.errors import InvalidArgument, NotFound
from zriver.principal import ROLES, RUNNER

_HOST_CONFIG = arg("--config", help="host.toml (default: $ZRIVER_HOME/host.toml when present)")


def _host_data_dir(config: str | None) -> Path:
    return Path(cfg.load(config, cfg.HostSettings, "host.toml").resolved().data_dir)


def _client_key_file(ctx: Context) -> Path:
    return keys.client_key_file(ctx.key)


@command(
    "init keys", "on the host machine: make the host's key pair and the local admin's",
    _HOST_CONFIG,
    arg("--name", help="the admin's name (default: your user name)"),
    needs_cluster=False,
)
def init_keys(ctx: Context, args) -> int:
    """Make (when missing) the host's pair under its data dir, your client pair, and
    <data_dir>/keys/admin.key, which the host trusts as an admin when it starts. Idempotent."""
    data_dir = _host_data_dir(args.config)
    server, made = keys.ensure_server_keys(data_dir)
    ctx.print(f"{'made' if made else 'kept'} the host key   {keys.host_secret_file(data_dir)}"
              f"  public {server.public}")
    name = keys.check_name(args.name or owner())
    secret = _client_key_file(ctx)
    public, made = keys.ensure_client_pair(secret, name, "admin")
    ctx.print(f"{'made' if made else 'kept'} your key       {secret}  public {public}")
    wrote = keys.ensure_admin_import(data_dir, public, name)
    ctx.print(f"{'wrote' if wrote else 'kept'} the admin import {keys.admin_public_file(data_dir)}"
              f"  ({name}, admin; a running host reads it when it next starts)")
    return 0


@command(
    "keys new", "make this machine's key pair; prints the public key to give an admin",
    arg("--runner", action="store_true",
        help="this node's runner key (runner.toml key, default $ZRIVER_HOME/keys/runner.key_secret)"),
    arg("--name", help="the name to add it under (default: your user name; the node name "
                       "with --runner)"),
    arg("--force", action="store_true",
        help="replace an existing pair (have the old key revoked: `zriver keys revoke`)"),
    needs_cluster=False,
)
def keys_new(ctx: Context, args) -> int:
    """Make (or show, when there is one) the pair this machine's client uses, or with
    --runner the pair its runner uses. The public key is printed on the first line."""
    if args.runner:
        settings = cfg.load(None, cfg.RunnerSettings, "runner.toml")
        secret = Path(keys.choose(ctx.key, "ZRIVER_KEY", settings.key)
                      or keys.runner_secret_file()).expanduser()
        name, role = args.name or settings.resolved().name, RUNNER
    else:
        secret = _client_key_file(ctx)
        name, role = args.name or owner(), "user"
    keys.check_name(name)
    public, made = keys.create_pair(secret, {"name": name, "role": role}, force=args.force)
    ctx.print(public)
    ctx.print(f"{'made' if made else 'kept (--force makes a new one)'}: {secret}")
    ctx.print("an admin adds it on the cluster with:")
    ctx.print(f"  zriver keys add --role {role} {name} -- {shlex.quote(public)}")
    return 0


@command("keys host", "print the host's public key (on the host machine)", _HOST_CONFIG,
         needs_cluster=False)
def keys_host(ctx: Context, args) -> int:
    data_dir = _host_data_dir(args.config)
    public_file = keys.host_public_file(data_dir)
    if public_file.exists():
        ctx.print(keys.load_public(public_file))
    elif keys.host_secret_file(data_dir).exists():
        ctx.print(keys.server_keys(data_dir).public)
    else:
        raise NotFound(f"no host key in {keys.host_keys_dir(data_dir)}: run `zriver init keys` "
                       f"(`zriver host` and `zriver up` make it too)")
    return 0


@command(
    "keys add", "trust a public key: a person's (user, admin) or a node's (runner)",
    arg("name", help="the person's name; for a runner key, the node's name"),
    # dest public_key, not key: the global --key (your key file) is dest "key" too
    arg("public_key", nargs="?", metavar="KEY",
        help="the z85 public key `zriver keys new` printed: quote it (it may hold shell "
             "characters) and put it last, after -- (it may start with -)"),
    arg("--role", required=True, choices=list(ROLES), help="what the key may do"),
    arg("--file", help="read the public key from this .key file instead"),
    arg("--ssh-key", metavar="FILE", help="also register this SSH public key (.pub) to them"),
    JSON,
)
def keys_add(ctx: Context, args) -> int:
    """Add a key (admins only) and print the lines its holder puts in client.toml (people)
    or runner.toml (nodes)."""
    if (args.public_key is None) == (args.file is None):
        raise InvalidArgument("give the public key, or --file FILE (not both)")
    public = (keys.check_public_key(args.public_key) if args.public_key
              else keys.load_public(args.file))
    reply = ctx.client.call("key.add", {"name": args.name, "role": args.role,
                                        "public_key": public})
    if args.ssh_key:
        reply["ssh_key"] = ctx.client.call("ssh_key.add", {
            "name": args.name, "public_key": read_public_key(args.ssh_key)})
    if args.json:
        ctx.print(as_json(reply))
        return 0
    ctx.print(f"added {reply['name']} ({reply['role']}) {reply['public_key']}")
    if "ssh_key" in reply:
        ctx.print(f"and SSH key {reply['ssh_key']['fingerprint']}")
    config = reply.get("config", {})
    if args.role == RUNNER:
        ctx.print("in runner.toml on that node:")
        lines = runner_lines(config, ctx.client.endpoint)
    else:
        ctx.print("in $ZRIVER_HOME/client.toml on that person's machine:")
        lines = client_lines(config, ctx.client.endpoint)
    for line in lines:
        ctx.print(line)
    return 0


def _address(endpoint: str, reached: str) -> tuple[str, int]:
    """(address, port) of ``tcp://A:P``; a wildcard address is replaced by the one the admin
    reached the host at (``reached``)."""
    rest = endpoint.split("://", 1)[-1]
    address, _, port = rest.rpartition(":")
    if address in ("", "*", "0.0.0.0", "[::]", "::"):
        address = reached.split("://", 1)[-1].rpartition(":")[0] or "127.0.0.1"
    return address, int(port or cfg.DEFAULT_ROUTER_PORT)


def client_lines(config: dict, reached: str) -> list[str]:
    address, port = _address(config.get("host") or reached, reached)
    return [f'host = "tcp://{address}:{port}"', f'host_key = "{config.get("host_key", "")}"']


def runner_lines(config: dict, reached: str) -> list[str]:
    address, port = _address(config.get("host") or reached, reached)
    lines = [f'host = "{address}"']
    if port != cfg.DEFAULT_ROUTER_PORT:
        lines.append(f"router_port = {port}")
    if config.get("xsub"):
        _, xsub = _address(config["xsub"], reached)
        if xsub != cfg.DEFAULT_XSUB_PORT:
            lines.append(f"xsub_port = {xsub}")
    lines.append(f'host_key = "{config.get("host_key", "")}"')
    return lines


@command("keys list", "the keys the host trusts (and those it revoked)", JSON)
def keys_list(ctx: Context, args) -> int:
    rows = ctx.client.call("key.list")["keys"]
    if args.json:
        ctx.print(as_json(rows))
        return 0
    ctx.print(table(
        ["name", "role", "state", "added", "public key"],
        [[k["name"], k["role"],
          "live" if k["revoked_at"] is None else f"revoked {age(k['revoked_at'])} ago",
          age(k["added_at"]) + " ago", k["public_key"]] for k in rows]))
    return 0


@command("keys revoke", "stop trusting a key, at once (also on open connections)",
         arg("name", help="the key's name (`zriver keys list`)"), JSON)
def keys_revoke(ctx: Context, args) -> int:
    reply = ctx.client.call("key.revoke", {"name": args.name})
    if args.json:
        ctx.print(as_json(reply))
        return 0
    ctx.print(f"revoked {reply['name']} ({reply['role']}) {reply['public_key']}")
    return 0
