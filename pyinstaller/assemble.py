"""Assemble the single file: ``pyinstaller/stub.sh`` with the archive's sha256 and offset filled
in, followed by the archive (a gzip'd tar of the one-folder build).

Usage: ``python assemble.py STUB ARCHIVE OUTPUT``. The offset is the 1-based byte position of
the archive in OUTPUT (what ``tail -c +OFFSET`` takes); both fields have a fixed width, so the
stub's length does not depend on them.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

SHA_FIELD = "@SHA256@"
OFFSET_FIELD = "@OFFSET@"
OFFSET_WIDTH = 12


def assemble(stub: Path, archive: Path, output: Path) -> None:
    digest = hashlib.sha256()
    with archive.open("rb") as data:
        for block in iter(lambda: data.read(1 << 20), b""):
            digest.update(block)
    text = stub.read_text()
    if SHA_FIELD not in text or OFFSET_FIELD not in text:
        raise SystemExit(f"{stub}: the {SHA_FIELD} or {OFFSET_FIELD} field is missing")
    text = text.replace(SHA_FIELD, digest.hexdigest())
    # Trailing spaces after the number keep the width fixed (sh ignores them).
    length = len(text.replace(OFFSET_FIELD, " " * OFFSET_WIDTH).encode())
    text = text.replace(OFFSET_FIELD, str(length + 1).ljust(OFFSET_WIDTH))
    head = text.encode()
    assert len(head) == length
    tmp = output.with_name(f".{output.name}.tmp")
    with tmp.open("wb") as out, archive.open("rb") as data:
        out.write(head)
        for block in iter(lambda: data.read(1 << 20), b""):
            out.write(block)
    os.chmod(tmp, 0o755)
    tmp.replace(output)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    assemble(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
