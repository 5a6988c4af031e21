"""Docker helpers for the tests (not a test module).

``ensure_busybox_image()`` makes, once per machine, a tiny local image with no registry access:
Debian's static busybox (package ``busybox-static``, installed by ``tests/run.sh``) with its
applets linked under ``/bin``, imported with ``docker import``. Tests import it as
``from docker_images import ensure_busybox_image, docker_available`` (pytest puts ``tests/`` on
``sys.path``), typically from a session-scoped fixture.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
DEFAULT_IMAGE = "zriver-test-busybox"
APPLETS = (
    "sh", "true", "false", "echo", "cat", "sleep", "ls", "env", "id", "head", "tail", "dd",
    "wc", "grep", "mkdir", "rm", "printf", "kill", "yes", "seq",
)
CONTENT_LABEL = "org.zriver.test.content"
_DOCKER_TIMEOUT = 120

_PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
_GROUP = "root:x:0:\nnogroup:x:65534:\n"


def docker_available(timeout: float = 20) -> bool:
    """True when a docker CLI is on PATH and its daemon answers."""
    if shutil.which("docker") is None:
        return False
    try:
        result = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"],
            capture_output=True, text=True, timeout=timeout,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and bool(result.stdout.strip())


def _is_static_elf(path: Path) -> bool:
    """True for a 64-bit little-endian ELF file without a program interpreter (PT_INTERP)."""
    with path.open("rb") as f:
        header = f.read(64)
        if len(header) < 64 or header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
            return False
        phoff, = struct.unpack_from("<Q", header, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    for i in range(phnum):
        p_type, = struct.unpack_from("<I", table, i * phentsize)
        if p_type == 3:  # PT_INTERP: dynamically linked
            return False
    return True


def _content_digest(busybox: Path) -> str:
    digest = hashlib.sha256(busybox.read_bytes())
    digest.update(" ".join(APPLETS).encode())
    digest.update(_PASSWD.encode() + _GROUP.encode())
    return digest.hexdigest()[:16]


def _image_label(name: str) -> str | None:
    """The content label of local image ``name``, "" when it has none, None when it is absent."""
    result = subprocess.run(
        ["docker", "image", "inspect", "--format", f'{{{{index .Config.Labels "{CONTENT_LABEL}"}}}}', name],
        capture_output=True, text=True, timeout=_DOCKER_TIMEOUT,
    )
    if result.returncode != 0:
        return None
    value = result.stdout.strip()
    return "" if value == "<no value>" else value


def _make_rootfs(root: Path, busybox: Path) -> None:
    for d in ("bin", "etc", "tmp", "proc", "sys", "dev", "root", "work"):
        (root / d).mkdir()
    (root / "tmp").chmod(0o1777)
    shutil.copy2(busybox, root / "bin" / "busybox")
    (root / "bin" / "busybox").chmod(0o755)
    for applet in APPLETS:
        os.symlink("busybox", root / "bin" / applet)
    (root / "etc" / "passwd").write_text(_PASSWD)
    (root / "etc" / "group").write_text(_GROUP)


def ensure_busybox_image(name: str = DEFAULT_IMAGE) -> str:
    """Build local image ``name`` from Debian's static busybox unless it is already current.

    The image has ``PATH=/bin`` and the applets in ``APPLETS``; a label records a digest of its
    content so a changed busybox or applet list rebuilds it. Returns ``name``. Raises
    ``RuntimeError`` with the reason when it cannot be built.
    """
    if not BUSYBOX.is_file():
        raise RuntimeError(f"{BUSYBOX} is missing: install Debian's busybox-static (tests/run.sh does)")
    if not _is_static_elf(BUSYBOX):
        raise RuntimeError(f"{BUSYBOX} is dynamically linked: install busybox-static instead of busybox")
    digest = _content_digest(BUSYBOX)
    if _image_label(name) == digest:
        return name
    with tempfile.TemporaryDirectory(prefix="zriver-busybox-") as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        _make_rootfs(root, BUSYBOX)
        tar = subprocess.Popen(
            ["tar", "--numeric-owner", "--owner=0", "--group=0", "-C", str(root), "-c", "."],
            stdout=subprocess.PIPE,
        )
        try:
            result = subprocess.run(
                ["docker", "import", "-c", "ENV PATH=/bin", "-c", f"LABEL {CONTENT_LABEL}={digest}",
                 "-", name],
                stdin=tar.stdout, capture_output=True, text=True, timeout=_DOCKER_TIMEOUT,
            )
        finally:
            assert tar.stdout is not None
            tar.stdout.close()
            tar_rc = tar.wait(timeout=_DOCKER_TIMEOUT)
    if tar_rc != 0 or result.returncode != 0:
        raise RuntimeError(
            f"could not build image {name}: tar exited {tar_rc}, docker import exited "
            f"{result.returncode}: {result.stderr.strip()}"
        )
    return name
