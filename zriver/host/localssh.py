"""``zriver up`` needs no SSH set-up: the local user's ``~/.ssh/*.pub`` keys are registered for
the local admin once the host has started, so ``zriver ssh``/``connect``/``forward`` work at
once.

``register_local_ssh_keys(host, admin)`` adds, through the host's own op seam (``Host.call``:
the same checks and store writes as ``zriver ssh-key add``), every public key file in
``ssh_dir`` that parses and that no one has registered yet (a key registered to anyone already
is left as it is: a key belongs to one principal). It returns the files it registered, so
``up`` says so once: the next start finds them registered and says nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zriver.errors import ZriverError
from zriver.host.sshkeys import parse_public_key
from zriver.principal import ADMIN, Principal

SSH_DIR = "~/.ssh"


def local_public_keys(ssh_dir: str | Path = SSH_DIR) -> list[tuple[Path, str, str]]:
    """(file, text, fingerprint) of each ``*.pub`` in ``ssh_dir`` holding one public key."""
    found = []
    for path in sorted(Path(ssh_dir).expanduser().glob("*.pub")):
        try:
            text = path.read_text()
            fingerprint, _, _ = parse_public_key(text)
        except (OSError, UnicodeDecodeError, ZriverError):
            continue
        found.append((path, text, fingerprint))
    return found


async def register_local_ssh_keys(host: Any, admin: str,
                                  ssh_dir: str | Path = SSH_DIR) -> list[Path]:
    """Register the unregistered keys of ``ssh_dir`` for admin ``admin``; the files added."""
    principal = Principal(admin, ADMIN)
    added = []
    for path, text, fingerprint in local_public_keys(ssh_dir):
        if host.ssh_keys.principal_of(fingerprint) is not None:
            continue
        try:
            await host.call(principal, "ssh_key.add", {"public_key": text})
        except ZriverError:  # registered meanwhile, or refused: never stops `up`
            continue
        added.append(path)
    return added
