"""SSH public keys registered to principals (what the SSH relay will authenticate people by):
people register their own, admins anyone's, through the real client and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import asyncssh
import pytest

from zriver.errors import Conflict, Forbidden, InvalidArgument, NotFound


def ssh_pair(tmp_path, name: str):
    key = asyncssh.generate_private_key("ssh-ed25519", comment=f"{name}@lab")
    public = tmp_path / f"{name}.pub"
    public.write_text(key.export_public_key().decode())
    return key, public


def test_people_register_their_own_ssh_keys_and_admins_anyones(cluster, tmp_path):
    alice = cluster.client(key=cluster.key_for("alice", "user"))
    bob = cluster.client(key=cluster.key_for("bob", "user"))
    key, public = ssh_pair(tmp_path, "alice")
    added = alice.call("ssh_key.add", {"public_key": public.read_text()})
    assert added["name"] == "alice" and added["comment"] == "alice@lab"
    assert added["fingerprint"] == key.get_fingerprint("sha256")
    assert [k["fingerprint"] for k in alice.call("ssh_key.list")["keys"]] == [added["fingerprint"]]
    assert bob.call("ssh_key.list")["keys"] == []
    with pytest.raises(Forbidden, match="only an admin"):
        bob.call("ssh_key.list", {"name": "alice"})
    with pytest.raises(Forbidden, match="only an admin"):
        bob.call("ssh_key.remove", {"fingerprint": added["fingerprint"]})
    with pytest.raises(Forbidden, match="only an admin"):
        alice.call("ssh_key.add", {"public_key": ssh_pair(tmp_path, "x")[1].read_text(),
                                   "name": "bob"})
    with pytest.raises(Conflict, match="registered already"):
        bob.call("ssh_key.add", {"public_key": public.read_text()})
    with pytest.raises(InvalidArgument, match="never a private key"):
        alice.call("ssh_key.add", {"public_key": key.export_private_key().decode()})
    with pytest.raises(InvalidArgument, match="not an SSH public key"):
        alice.call("ssh_key.add", {"public_key": "ssh-ed25519 garbage"})
    admin = cluster.client()
    _, bobs = ssh_pair(tmp_path, "bob")
    admin.call("ssh_key.add", {"public_key": bobs.read_text(), "name": "bob"})
    assert {k["name"] for k in admin.call("ssh_key.list")["keys"]} == {"alice", "bob"}
    assert cluster.call_soon(lambda: cluster.host.ssh_keys.principal_of(
        added["fingerprint"])) == "alice"
    alice.call("ssh_key.remove", {"fingerprint": added["fingerprint"]})
    with pytest.raises(NotFound):
        alice.call("ssh_key.remove", {"fingerprint": added["fingerprint"]})


def test_the_cli_registers_lists_and_removes(cluster, tmp_path):
    _, public = ssh_pair(tmp_path, "me")

    def zriver(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "zriver", *cluster.cli_flags(), *args],
                              capture_output=True, text=True, timeout=60)

    added = zriver("ssh-key", "add", str(public))
    assert added.returncode == 0 and "registered SHA256:" in added.stdout, added.stderr
    listed = json.loads(zriver("ssh-key", "list", "--json").stdout)
    assert [k["comment"] for k in listed] == ["me@lab"]
    shown = zriver("ssh-key", "list").stdout.splitlines()
    assert shown[0].split() == ["FINGERPRINT", "NAME", "COMMENT", "ADDED"]
    assert shown[1].endswith(" ago") and "me@lab" in shown[1]  # an age, as every listing says it
    removed = zriver("ssh-key", "rm", listed[0]["fingerprint"])
    assert removed.returncode == 0 and "removed" in removed.stdout
    missing = zriver("ssh-key", "add", str(tmp_path / "nope.pub"))
    assert missing.returncode != 0 and "no such file" in missing.stderr
