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
    "wc", "grep", "mkdir", "rm", "printf", "kill", "yes", "seq", "nc", "httpd", "stty", "tty",
    "sha256sum", "wget",
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
        _import_rootfs(root, name, ["ENV PATH=/bin", f"LABEL {CONTENT_LABEL}={digest}"])
    return name


# ---- the sshd image -------------------------------------------------------------------------
SSHD_IMAGE = "zriver-test-sshd"
SSHD = Path("/usr/sbin/sshd")
SFTP_SERVER = Path("/usr/lib/openssh/sftp-server")
_SSHD_PASSWD = ("root:x:0:0:root:/root:/bin/sh\n"
                "sshd:x:100:65534::/run/sshd:/bin/false\n"
                "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
# "*" (no password, not locked): sshd refuses even key logins to a locked ("!") account
_SSHD_SHADOW = "root:*:19000:0:99999:7:::\nsshd:*:19000:0:99999:7:::\n"
_SSHD_CONFIG = f"""\
Port 22
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
PrintMotd no
PrintLastLog no
AuthorizedKeysFile .ssh/authorized_keys
PidFile /run/sshd.pid
Subsystem sftp {SFTP_SERVER}
"""


def _shared_libraries(binary: Path) -> list[Path]:
    """The shared libraries ``ldd`` names for ``binary`` (the loader included), as the paths
    the dynamic loader looks for (symlinks are resolved when copying)."""
    result = subprocess.run(["ldd", str(binary)], capture_output=True, text=True,
                            timeout=_DOCKER_TIMEOUT)
    if result.returncode != 0:
        raise RuntimeError(f"ldd {binary} failed: {result.stderr.strip()}")
    libraries = []
    for line in result.stdout.splitlines():
        words = line.split()
        if "=>" in words and len(words) > words.index("=>") + 1:
            path = words[words.index("=>") + 1]
        elif words and words[0].startswith("/"):
            path = words[0]
        else:
            continue  # linux-vdso: in the kernel
        if path.startswith("/"):
            libraries.append(Path(path))
    return libraries


def _sshd_inputs() -> list[Path]:
    """Every host file the sshd image is made of: busybox, sshd, sftp-server, their libraries."""
    for path, package in ((BUSYBOX, "busybox-static"), (SSHD, "openssh-server"),
                          (SFTP_SERVER, "openssh-server")):
        if not path.is_file():
            raise RuntimeError(f"{path} is missing: install Debian's {package} (tests/run.sh does)")
    if not _is_static_elf(BUSYBOX):
        raise RuntimeError(f"{BUSYBOX} is dynamically linked: install busybox-static instead of busybox")
    libraries = sorted({lib for binary in (SSHD, SFTP_SERVER) for lib in _shared_libraries(binary)})
    return [BUSYBOX, SSHD, SFTP_SERVER, *libraries]


def _busybox_applets() -> list[str]:
    """All applets the installed busybox offers (the sshd image is for people to work in)."""
    result = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True,
                            timeout=_DOCKER_TIMEOUT)
    return [name for name in result.stdout.split() if name and "/" not in name]


def _sshd_digest(inputs: list[Path], applets: list[str]) -> str:
    digest = hashlib.sha256()
    for path in inputs:
        digest.update(str(path).encode() + b"\0" + path.read_bytes())
    digest.update(" ".join(applets).encode())
    digest.update((_SSHD_PASSWD + _SSHD_SHADOW + _GROUP + _SSHD_CONFIG).encode())
    return digest.hexdigest()[:16]


def _make_sshd_rootfs(root: Path, inputs: list[Path], applets: list[str]) -> None:
    """busybox with ``applets`` under /bin, sshd and sftp-server with their libraries at the
    paths ``ldd`` gave, the accounts and directories sshd needs; no host keys."""
    for d in ("bin", "etc/ssh", "tmp", "proc", "sys", "dev", "root", "run/sshd", "var/empty",
              "var/log", "usr/sbin", "work"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    (root / "root").chmod(0o700)
    (root / "var/empty").chmod(0o755)
    for path in inputs:
        target = root / ("bin/busybox" if path == BUSYBOX else str(path).lstrip("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)  # follows symlinks: the real library under the ldd name
        target.chmod(0o755)
    for applet in applets:
        if not (root / "bin" / applet).exists():
            os.symlink("busybox", root / "bin" / applet)
    (root / "etc/passwd").write_text(_SSHD_PASSWD)
    (root / "etc/group").write_text(_GROUP)
    (root / "etc/shadow").write_text(_SSHD_SHADOW)
    (root / "etc/shadow").chmod(0o640)
    (root / "etc/ssh/sshd_config").write_text(_SSHD_CONFIG)


def _import_rootfs(root: Path, name: str, changes: list[str]) -> None:
    """``tar`` the directory ``root`` into ``docker import`` as image ``name``."""
    tar = subprocess.Popen(
        ["tar", "--numeric-owner", "--owner=0", "--group=0", "-C", str(root), "-c", "."],
        stdout=subprocess.PIPE,
    )
    try:
        command = ["docker", "import"]
        for change in changes:
            command += ["-c", change]
        result = subprocess.run([*command, "-", name], stdin=tar.stdout, capture_output=True,
                                text=True, timeout=_DOCKER_TIMEOUT)
    finally:
        assert tar.stdout is not None
        tar.stdout.close()
        tar_rc = tar.wait(timeout=_DOCKER_TIMEOUT)
    if tar_rc != 0 or result.returncode != 0:
        raise RuntimeError(
            f"could not build image {name}: tar exited {tar_rc}, docker import exited "
            f"{result.returncode}: {result.stderr.strip()}"
        )


def ensure_sshd_image(name: str = SSHD_IMAGE) -> str:
    """Build local image ``name`` (an OpenSSH server on static busybox) unless it is current.

    The image holds Debian's static busybox (every applet under ``/bin``), this machine's
    ``/usr/sbin/sshd`` and ``sftp-server`` (so OpenSSH 9's scp works) with the shared libraries
    ``ldd`` names, ``/etc/passwd`` with ``root`` (shell ``/bin/sh``) and the ``sshd`` privilege
    separation user, ``/run/sshd``, ``/var/empty`` and an ``/etc/ssh/sshd_config`` that lets
    root in by key only (``HostKey /etc/ssh/ssh_host_ed25519_key``, ``Subsystem sftp``). It has
    no host keys: whoever starts sshd in it writes ``/etc/ssh/ssh_host_ed25519_key`` first.
    ``PATH`` is ``/bin:/usr/sbin``. A label records a digest of all of that, so a changed
    package rebuilds it. Returns ``name``; raises ``RuntimeError`` with the reason when it
    cannot be built (e.g. ``openssh-server`` not installed: ``tests/run.sh`` installs it).
    """
    inputs = _sshd_inputs()
    applets = _busybox_applets()
    digest = _sshd_digest(inputs, applets)
    if _image_label(name) == digest:
        return name
    with tempfile.TemporaryDirectory(prefix="zriver-sshd-") as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        _make_sshd_rootfs(root, inputs, applets)
        _import_rootfs(root, name, ["ENV PATH=/bin:/usr/sbin", f"LABEL {CONTENT_LABEL}={digest}"])
    return name
