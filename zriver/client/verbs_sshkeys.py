"""``zriver ssh-key add|list|rm``: the SSH public keys registered to your identity (the SSH
relay lets you in with them). An admin may act for others with ``--name``."""

from __future__ import annotations

from pathlib import Path

from zriver.client.registry import JSON, Context, arg, command
from zriver.client.render import age, as_json, table
from zriver.errors import InvalidArgument

DEFAULT_PUBLIC_KEYS = ("~/.ssh/id_ed25519.pub", "~/.ssh/id_rsa.pub")


def read_public_key(path: str | None) -> str:
    """The text of ``path``, or of the first of ``~/.ssh/id_ed25519.pub``, ``id_rsa.pub``."""
    candidates = [path] if path else list(DEFAULT_PUBLIC_KEYS)
    for candidate in candidates:
        file = Path(candidate).expanduser()
        if file.is_file():
            return file.read_text()
    if path:
        raise InvalidArgument(f"no such file: {path}")
    raise InvalidArgument("no SSH public key found (~/.ssh/id_ed25519.pub, ~/.ssh/id_rsa.pub): "
                          "make one with `ssh-keygen -t ed25519`, or give its file")


@command("ssh-key add", "register an SSH public key to your identity (for the SSH relay)",
         arg("file", nargs="?", help="a .pub file (default ~/.ssh/id_ed25519.pub, then id_rsa.pub)"),
         arg("--name", help="register it for this principal instead (admins only)"), JSON)
def ssh_key_add(ctx: Context, args) -> int:
    body = {"public_key": read_public_key(args.file)}
    if args.name:
        body["name"] = args.name
    reply = ctx.client.call("ssh_key.add", body)
    ctx.print(as_json(reply) if args.json else
              f"registered {reply['fingerprint']} ({reply['comment'] or 'no comment'}) "
              f"for {reply['name']}")
    return 0


@command("ssh-key list", "the SSH public keys registered to you (an admin: anyone's)",
         arg("--name", help="whose keys (admins only, for others)"), JSON)
def ssh_key_list(ctx: Context, args) -> int:
    body = {"name": args.name} if args.name else {}
    keys = ctx.client.call("ssh_key.list", body)["keys"]
    if args.json:
        ctx.print(as_json(keys))
        return 0
    ctx.print(table(["FINGERPRINT", "NAME", "COMMENT", "ADDED"],
                    [[k["fingerprint"], k["name"], k["comment"], age(k["added_at"]) + " ago"]
                     for k in keys]))
    return 0


@command("ssh-key rm", "unregister an SSH public key",
         arg("fingerprint", help="as `zriver ssh-key list` shows it (SHA256:...)"))
def ssh_key_rm(ctx: Context, args) -> int:
    reply = ctx.client.call("ssh_key.remove", {"fingerprint": args.fingerprint})
    ctx.print(f"removed {reply['fingerprint']} of {reply['name']}")
    return 0
