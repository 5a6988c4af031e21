"""The single-file binary (``pyinstaller/build.sh`` -> ``dist/zriver``), smoke-tested alone.

The binary is built once per session and then run by itself: from a scratch working directory,
with no Python variables in its environment, ``ZRIVER_HOME`` and ``HOME`` in a temporary
directory, so nothing of the checkout or of the developer's ~/.zriver can leak in. Outside CI
the tests skip when PyInstaller is missing; under CI=true they fail instead.

One background cluster (``zriver up -d`` on ephemeral ports, with a host.toml/runner.toml of
the test's own: Docker image prefixes unique to this run) lives through the module's story, in
order: a native task, a Docker task, ``zriver shell`` and ``zriver top`` in a real terminal
(tmux), a VPS reached with ``zriver ssh``, the dashboard fetched over HTTP with the sign-in
link of ``zriver web --print``, then ``zriver down``. Tasks and the VPS print their environment:
none of the bundle's library directory or bootloader variables may reach them.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

import zriver
from zriver import dirlock
from docker_images import docker_available, ensure_busybox_image, ensure_sshd_image
from procs import missing, wait_until, write_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parent.parent
BINARY = REPO / "dist" / "zriver"
BUILD_SCRIPT = REPO / "pyinstaller" / "build.sh"
BUILD_TIMEOUT = 600
COMMAND_TIMEOUT = 90  # `up -d` waits up to 60 s for its node
STOP_TIMEOUT = 30
SCREEN_TIMEOUT = 30
TMUX = shutil.which("tmux")

# Variables that would let the binary find the checkout or this interpreter's packages.
_HIDDEN_PREFIXES = ("PYTHON", "ZRIVER_")
# XDG_CACHE_HOME too: the binary unpacks into $HOME/.cache/zriver, the sandbox's.
_HIDDEN = {"VIRTUAL_ENV", "CONDA_PREFIX", "PYINSTALLER_CONFIG_DIR", "XDG_CACHE_HOME"}
# What the onefile bootloader sets, and must stay in zriver (bundle.child_environment).
_BUNDLE_VARIABLE = re.compile(r"^(_PYI_\w*|_MEIPASS2|LD_LIBRARY_PATH_ORIG)=", re.M)


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="session")
def zriver_binary() -> Path:
    """Build dist/zriver with pyinstaller/build.sh (once per session) and return its path."""
    try:
        import PyInstaller  # noqa: F401
    except ImportError:
        missing("PyInstaller is not installed (pip install -e '.[build]')")
    env = dict(os.environ, PYTHON=sys.executable)
    try:
        result = subprocess.run(
            ["bash", str(BUILD_SCRIPT)], cwd=REPO, env=env, capture_output=True, text=True,
            timeout=BUILD_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"pyinstaller/build.sh took longer than {BUILD_TIMEOUT}s")
    if result.returncode != 0:
        pytest.fail(
            f"pyinstaller/build.sh exited {result.returncode}\n"
            f"--- stdout ---\n{_tail(result.stdout)}\n--- stderr ---\n{_tail(result.stderr)}"
        )
    if not (BINARY.is_file() and os.access(BINARY, os.X_OK)):
        pytest.fail(f"pyinstaller/build.sh succeeded but {BINARY} is not an executable file")
    return BINARY


@dataclass
class Sandbox:
    """A scratch directory to run the binary from, with its own ZRIVER_HOME and HOME."""

    root: Path
    env: dict[str, str]

    @property
    def zriver_home(self) -> Path:
        return Path(self.env["ZRIVER_HOME"])

    @property
    def home(self) -> Path:
        return Path(self.env["HOME"])

    def run(self, *args: str, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [str(BINARY), *args], cwd=self.root, env=self.env, stdin=subprocess.DEVNULL,
                capture_output=True, text=True, timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"`zriver {' '.join(args)}` did not finish within {timeout}s: {exc.stderr!r}")

    def ok(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``run`` that must exit 0."""
        result = self.run(*args)
        assert result.returncode == 0, (
            f"`zriver {' '.join(args)}` exited {result.returncode}\n"
            f"stdout={result.stdout!r}\nstderr={result.stderr!r}")
        return result


def _sandbox(root: Path) -> Sandbox:
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(_HIDDEN_PREFIXES) and k not in _HIDDEN
    }
    for name in ("home", "zriver", "cwd"):
        (root / name).mkdir()
    env["HOME"] = str(root / "home")
    env["ZRIVER_HOME"] = str(root / "zriver")
    env["TERM"] = "xterm"
    return Sandbox(root=root / "cwd", env=env)


@pytest.fixture
def sandbox(zriver_binary: Path) -> Iterator[Sandbox]:
    # A short path (not pytest's tmp_path): socket paths under it must stay short.
    with tempfile.TemporaryDirectory(prefix="zriver-bin-") as tmp:
        yield _sandbox(Path(tmp))


def test_version(sandbox: Sandbox):
    result = sandbox.run("--version")
    assert result.returncode == 0, result.stderr
    assert re.search(r"\d+\.\d+", result.stdout), result.stdout
    assert zriver.__version__ in result.stdout


# ---- the one-time unpacking (pyinstaller/stub.sh) --------------------------------------------
def _archive_sha256() -> str:
    with BINARY.open("rb") as f:
        head = f.read(16384).decode(errors="replace")
    return re.search(r"^ZRIVER_SHA256=([0-9a-f]{64})$", head, re.M).group(1)


def _cache_entries(base: Path) -> tuple[list[str], list[str]]:
    """(published links, unpacked directories) under the cache base ``base``."""
    if not base.is_dir():
        return [], []
    links = sorted(p.name for p in base.iterdir() if p.is_symlink())
    dirs = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.is_symlink())
    return links, dirs


def test_first_start_unpacks_once_and_later_starts_exec_the_cache(sandbox: Sandbox):
    sha = _archive_sha256()
    cache = sandbox.home / ".cache" / "zriver"
    left = cache / f".{sha}.4194305"  # by a start that died unpacking (no such pid)
    (left / "zriver").mkdir(parents=True)
    assert sandbox.run("--version").returncode == 0
    links, dirs = _cache_entries(cache)
    assert links == [sha] and len(dirs) == 1 and dirs[0].startswith(f".{sha}."), (links, dirs)
    unpacked = cache / dirs[0]
    assert (unpacked / ".zriver-sha256").read_text().strip() == sha
    program = unpacked / "zriver" / "zriver"
    before = program.stat().st_mtime_ns
    again = sandbox.run("--version")
    assert again.returncode == 0 and zriver.__version__ in again.stdout, again.stderr
    assert _cache_entries(cache) == (links, dirs)  # nothing unpacked again
    assert program.stat().st_mtime_ns == before


def _old_version(cache: Path, sha: str, pid: int) -> Path:
    """A published earlier version in ``cache`` as the stub makes one (a link named after its
    sha256 to ``.<sha256>.<pid>``), its program a copy of ``sleep``; returns the program."""
    unpacked = cache / f".{sha}.{pid}"
    (unpacked / "zriver").mkdir(parents=True)
    program = unpacked / "zriver" / "zriver"
    shutil.copy2(shutil.which("sleep"), program)
    (unpacked / ".zriver-sha256").write_text(sha + "\n")
    (cache / sha).symlink_to(unpacked.name)
    return program


def test_a_new_version_removes_the_old_ones_no_process_runs_from(sandbox: Sandbox):
    cache = sandbox.home / ".cache" / "zriver"
    cache.mkdir(parents=True)
    unused = _old_version(cache, "a" * 64, 11)
    running = _old_version(cache, "b" * 64, 12)
    keeper = subprocess.Popen([str(running), "60"])  # e.g. an old version's task keeper
    try:
        wait_until(lambda: Path(f"/proc/{keeper.pid}/exe").resolve() == running.resolve(), 10,
                   "the old version's process to run")
        (cache / "notes").write_text("not the stub's\n")
        (cache / "elsewhere").symlink_to("/tmp")  # not a link the stub makes: left alone
        assert sandbox.run("--version").returncode == 0
        links, dirs = _cache_entries(cache)
        sha = _archive_sha256()
        assert links == sorted([sha, "b" * 64, "elsewhere"]), links
        assert not unused.exists() and running.exists(), dirs
        assert (cache / "notes").exists()
        assert sandbox.run("--version").returncode == 0  # nothing more to do: no error
    finally:
        keeper.kill()
        keeper.wait()
    shutil.rmtree(cache / os.readlink(cache / sha))  # so the next start unpacks again,
    (cache / sha).unlink()  # and prunes again: nothing runs from the old version now
    assert sandbox.run("--version").returncode == 0
    assert not running.exists() and (cache / "elsewhere").is_symlink()


def test_a_service_unit_runs_the_binary_not_its_cached_copy(sandbox: Sandbox):
    unit = sandbox.ok("init", "service", "--runner").stdout
    exec_start = re.search(r"^ExecStart=(\S+)", unit, re.M)
    assert exec_start and exec_start.group(1) == str(BINARY), unit


def test_a_first_start_stopped_while_unpacking_leaves_nothing(sandbox: Sandbox):
    cache = sandbox.home / ".cache" / "zriver"
    start = subprocess.Popen([str(BINARY), "--version"], cwd=sandbox.root, env=sandbox.env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + COMMAND_TIMEOUT
    while not _cache_entries(cache)[1]:  # its own directory exists: it is unpacking
        assert start.poll() is None and time.monotonic() < deadline, "it never began unpacking"
        time.sleep(0.01)
    start.send_signal(signal.SIGTERM)
    assert start.wait(COMMAND_TIMEOUT) != 0
    assert _cache_entries(cache) == ([], [])


def test_concurrent_first_starts_publish_one_copy(sandbox: Sandbox):
    starts = [subprocess.Popen([str(BINARY), "--version"], cwd=sandbox.root, env=sandbox.env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(4)]
    for start in starts:
        out, err = start.communicate(timeout=COMMAND_TIMEOUT)
        assert start.returncode == 0 and zriver.__version__ in out, err
    links, dirs = _cache_entries(sandbox.home / ".cache" / "zriver")
    assert links == [_archive_sha256()] and len(dirs) == 1, (links, dirs)  # the losers cleaned up
    assert os.readlink(sandbox.home / ".cache" / "zriver" / links[0]) == dirs[0]


def test_an_unusable_cache_dir_falls_back_to_tmpdir_then_says_why(sandbox: Sandbox):
    blocker = sandbox.root / "a-file"
    blocker.write_text("")
    tmpdir = sandbox.root / "tmp"
    tmpdir.mkdir()
    env = dict(sandbox.env, ZRIVER_CACHE_DIR=str(blocker / "cache"), TMPDIR=str(tmpdir))
    ran = subprocess.run([str(BINARY), "--version"], env=env, capture_output=True, text=True,
                         timeout=COMMAND_TIMEOUT)
    assert ran.returncode == 0 and zriver.__version__ in ran.stdout, ran.stderr
    links, _ = _cache_entries(tmpdir / f"zriver-{os.getuid()}")
    assert links == [_archive_sha256()]
    env["TMPDIR"] = str(blocker / "tmp")
    refused = subprocess.run([str(BINARY), "--version"], env=env, capture_output=True, text=True,
                             timeout=COMMAND_TIMEOUT)
    assert refused.returncode == 1 and "cannot unpack itself" in refused.stderr, refused


def test_a_noexec_cache_dir_falls_back_to_tmpdir(sandbox: Sandbox):
    mountpoint = sandbox.root / "noexec"
    mountpoint.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "noexec,size=300m", "tmpfs",
                              str(mountpoint)], capture_output=True, text=True, timeout=30)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a noexec tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        tmpdir = sandbox.root / "tmp"
        tmpdir.mkdir()
        env = dict(sandbox.env, ZRIVER_CACHE_DIR=str(mountpoint / "cache"), TMPDIR=str(tmpdir))
        ran = subprocess.run([str(BINARY), "--version"], env=env, capture_output=True,
                             text=True, timeout=COMMAND_TIMEOUT)
        assert ran.returncode == 0 and zriver.__version__ in ran.stdout, ran.stderr
        assert _cache_entries(mountpoint / "cache") == ([], [])  # tried, then removed
        assert _cache_entries(tmpdir / f"zriver-{os.getuid()}")[0] == [_archive_sha256()]
    finally:
        subprocess.run(["umount", str(mountpoint)], capture_output=True, timeout=30)


def test_a_damaged_file_is_refused(sandbox: Sandbox):
    damaged = sandbox.root / "zriver"
    shutil.copyfile(BINARY, damaged)
    damaged.chmod(0o755)
    with damaged.open("r+b") as f:  # one byte of the archive, well past the stub
        f.seek(-100, os.SEEK_END)
        byte = f.read(1)
        f.seek(-100, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0xFF]))
    ran = subprocess.run([str(damaged), "--version"], env=sandbox.env, capture_output=True,
                         text=True, timeout=COMMAND_TIMEOUT)
    assert ran.returncode == 1 and "damaged" in ran.stderr, ran
    assert _cache_entries(sandbox.home / ".cache" / "zriver")[0] == []


# ---- the background cluster ----------------------------------------------------------------
@dataclass
class Story:
    """The module's ``zriver up -d`` cluster and what its tests learn along the way."""

    box: Sandbox
    prefix: str
    up_stdout: str = ""
    native_task: str = ""
    ids: dict[str, int] = field(default_factory=dict)

    def host_pid(self) -> int | None:
        """The pid holding the data dir's host lock (the background `up`), if any."""
        holder = dirlock.held(self.box.zriver_home, "host")
        return holder.get("pid") if holder else None


def _make_ssh_key(home: Path) -> None:
    """``~/.ssh/id_ed25519`` (what `zriver up` registers and `zriver ssh` uses by default)."""
    ssh = home / ".ssh"
    ssh.mkdir(mode=0o700)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "binary@test",
                    "-f", str(ssh / "id_ed25519")], check=True, capture_output=True, timeout=30)


def _zriver_processes(box: Sandbox) -> list[psutil.Process]:
    """Live processes of the binary (or of its unpacked copy under the sandbox's HOME) whose
    command line names this sandbox (keepers), or that run with its ZRIVER_HOME."""
    found = []
    for proc in psutil.process_iter(["exe", "cmdline", "status"]):
        try:
            exe = proc.info["exe"] or ""
            if proc.info["status"] == psutil.STATUS_ZOMBIE or not (
                    exe == str(BINARY) or exe.startswith(str(box.home))):
                continue
            named = any(str(box.zriver_home) in arg for arg in proc.info["cmdline"] or [])
            if named or proc.environ().get("ZRIVER_HOME") == str(box.zriver_home):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def _clean_up(story: Story) -> None:
    """`zriver down`, then SIGKILL whatever of this sandbox runs on (and the keeper's task
    groups), then every container and image this run made."""
    if story.host_pid():
        story.box.run("down")
    for proc in _zriver_processes(story.box):
        try:
            for child in proc.children():
                try:
                    os.killpg(child.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            proc.kill()
        except psutil.Error:
            pass
    if not docker_available():
        return
    import docker

    client = docker.from_env(timeout=120)
    try:
        ids = {p.read_text().strip() for p in story.box.zriver_home.rglob("runner-id")}
        for item in client.api.containers(all=True):
            labels = item.get("Labels") or {}
            names = [n.lstrip("/") for n in item.get("Names") or []]
            if labels.get("zriver.runner") in ids or any(n.startswith(story.prefix) for n in names):
                client.api.remove_container(item["Id"], force=True)
        for image in client.api.images():
            for tag in image.get("RepoTags") or []:
                if tag.startswith(story.prefix):
                    client.api.remove_image(tag, force=True)
    finally:
        client.close()


@pytest.fixture(scope="module")
def story(zriver_binary: Path) -> Iterator[Story]:
    """`dist/zriver up -d --port 0` (host with relay and web + runner), ready to take tasks."""
    if not docker_available():
        missing("no Docker daemon answers (tests/run.sh installs and starts one)")
    with tempfile.TemporaryDirectory(prefix="zriver-bin-") as tmp:
        box = _sandbox(Path(tmp))
        made = Story(box=box, prefix=f"zb{os.getpid()}{secrets.token_hex(3)}")
        _make_ssh_key(box.home)
        # Docker image prefixes of this run only (several sessions may share one daemon).
        write_config(box.zriver_home / "host.toml", {"env_image_prefix": f"{made.prefix}-host"})
        write_config(box.zriver_home / "runner.toml", {"image_prefix": f"{made.prefix}-n1",
                                                        "docker_probe_interval": 0.5})
        try:
            made.up_stdout = box.ok("up", "-d", "--port", "0", "--cores", "2",
                                    "--memory", "2G").stdout
            yield made
        finally:
            log = box.zriver_home / "up.log"
            if log.is_file():
                print(f"--- up.log ---\n{_tail(log.read_text(errors='replace'), 60)}")
            _clean_up(made)


def _environment_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if _BUNDLE_VARIABLE.match(line)
            or line.startswith("LD_LIBRARY_PATH=") or "_MEI" in line]


def test_up_detached_answers_from_the_binary(story: Story):
    box = story.box
    assert "up in the background" in story.up_stdout, story.up_stdout
    endpoints = json.loads((box.zriver_home / "endpoints.json").read_text())
    for name in ("router", "relay", "web"):
        assert endpoints.get(name), f"no {name} in endpoints.json: {endpoints}"
    assert ":8620" not in endpoints["router"], endpoints  # ephemeral, not the default ports
    pid = story.host_pid()
    assert pid and f"pid {pid}" in story.up_stdout, (pid, story.up_stdout)
    # It runs from the unpacked copy in the user's cache (HOME is the sandbox's).
    assert Path(psutil.Process(pid).exe()).is_relative_to(box.home / ".cache" / "zriver")
    nodes = json.loads(box.ok("nodes", "--json").stdout)
    assert [n["state"] for n in nodes] == ["online"], nodes
    assert "docker" in nodes[0].get("backends", []), nodes


def _submit_wait(box: Sandbox, *args: str) -> subprocess.CompletedProcess[str]:
    return box.run("submit", "--wait", *args)


def test_native_task_output_exit_code_and_clean_environment(story: Story):
    box = story.box
    result = _submit_wait(box, "--name", "bin-native", "--user", "root", "--",
                          "sh", "-c", "echo hello; env")
    assert result.returncode == 0, f"stdout={result.stdout!r} stderr={result.stderr!r}"
    task_id = result.stdout.split()[0]
    assert task_id.isdigit(), f"first stdout word is not a task id: {result.stdout!r}"
    story.native_task = task_id
    out = box.ok("logs", task_id).stdout
    assert "hello" in out.splitlines(), out
    # The bootloader's bundle directory and variables must not leak into tasks.
    expected = [f"LD_LIBRARY_PATH={box.env['LD_LIBRARY_PATH']}"] if "LD_LIBRARY_PATH" in box.env else []
    assert _environment_lines(out) == expected, out
    failed = _submit_wait(box, "--user", "root", "--", "sh", "-c", "exit 3")
    assert failed.returncode == 3, f"stdout={failed.stdout!r} stderr={failed.stderr!r}"


def test_docker_task_runs_in_its_environment(story: Story):
    box = story.box
    box.ok("env", "create", "tiny", "--image", ensure_busybox_image())
    result = _submit_wait(box, "--name", "bin-docker", "--container", "tiny", "--",
                          "sh", "-c", "echo in-docker; env")
    assert result.returncode == 0, f"stdout={result.stdout!r} stderr={result.stderr!r}"
    task_id = result.stdout.split()[0]
    out = box.ok("logs", task_id).stdout
    assert "in-docker" in out.splitlines(), out
    assert _environment_lines(out) == [], out


# ---- a real terminal -------------------------------------------------------------------------
class Terminal:
    """The binary run in a ``120x32`` window of a private tmux server (no user config)."""

    def __init__(self, box: Sandbox, *args: str) -> None:
        if TMUX is None:
            missing("needs tmux (a real terminal emulator)")
        self.dir = Path(tempfile.mkdtemp(prefix="zrbin"))  # short: a socket path has a limit
        self.sock = str(self.dir / "s")
        conf = self.dir / "tmux.conf"
        conf.write_text("set -g remain-on-exit on\nset -g status off\n")
        script = self.dir / "run.sh"
        script.write_text(f"#!/bin/sh\n{shlex.join([str(BINARY), *args])}\n"
                          f"echo \"[exited $?]\"\n")
        script.chmod(0o755)
        subprocess.run([TMUX, "-S", self.sock, "-f", str(conf), "new-session", "-d", "-x", "120",
                        "-y", "32", "-c", str(box.root), str(script)], env=box.env, check=True,
                       timeout=30)

    def tmux(self, *args: str) -> str:
        return subprocess.run([TMUX, "-S", self.sock, *args], capture_output=True, text=True,
                              check=True, timeout=30).stdout

    def text(self) -> str:
        return self.tmux("capture-pane", "-p", "-S", "-")

    def wait(self, check: Callable[[str], bool], what: str, timeout: float = SCREEN_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.text()
            if check(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"the screen never showed {what}; it shows:\n{screen}")
            time.sleep(0.05)

    def exit_status(self) -> int:
        found = re.search(r"^\[exited (\d+)\]", self.wait(
            lambda s: re.search(r"^\[exited \d+\]", s, re.M) is not None, "the command's end"), re.M)
        return int(found.group(1))

    def close(self) -> None:
        subprocess.run([TMUX, "-S", self.sock, "kill-server"], capture_output=True, timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def terminal(story: Story) -> Iterator[Callable[..., Terminal]]:
    opened: list[Terminal] = []

    def open_(*args: str) -> Terminal:
        opened.append(Terminal(story.box, *args))
        return opened[-1]

    yield open_
    for term in opened:
        term.close()


def test_shell_answers_a_command(story: Story, terminal):
    assert story.native_task, "needs the native task of the test before"
    term = terminal("shell")
    term.wait(lambda s: "1/1 nodes online" in s, "the toolbar with the node online")
    term.tmux("send-keys", "-l", "--", "tasks --all")
    term.tmux("send-keys", "Enter")
    term.wait(lambda s: re.search(rf"^\s*{story.native_task}\b.*bin-native", s, re.M) is not None,
              f"task {story.native_task} (bin-native) listed")
    term.tmux("send-keys", "-l", "--", "exit")
    term.tmux("send-keys", "Enter")
    assert term.exit_status() == 0, term.text()


def test_top_shows_the_cluster(story: Story, terminal):
    box = story.box
    [node] = json.loads(box.ok("nodes", "--json").stdout)
    sleeper = box.ok("submit", "--name", "bin-sleeper", "--user", "root", "--", "sleep", "600")
    sleeper_id = sleeper.stdout.split()[0]
    try:
        term = terminal("top")
        term.wait(lambda s: re.search(rf"^\s*{re.escape(node['name'])}\b.*online", s, re.M)
                  is not None, f"node {node['name']} online (the nodes view)")
        term.tmux("send-keys", "2")  # the tasks view
        term.wait(lambda s: re.search(rf"^\s*{sleeper_id}\b.*bin-sleeper", s, re.M) is not None,
                  f"task {sleeper_id} (bin-sleeper) in the tasks view")
        term.tmux("send-keys", "q")
        assert term.exit_status() == 0, term.text()
    finally:
        box.ok("kill", sleeper_id)


# ---- a VPS over zriver ssh -------------------------------------------------------------------
def test_vps_reached_with_zriver_ssh(story: Story):
    box = story.box
    box.ok("env", "create", "dev", "--image", ensure_sshd_image())
    made = box.ok("vps", "create", "--container", "dev", "--name", "box", "--cores", "1",
                  "--memory", "256M", "--wait")
    vps = re.search(r"\b(\d+)\b", made.stdout).group(1)
    story.ids["vps"] = int(vps)
    deadline = time.monotonic() + COMMAND_TIMEOUT
    while True:  # running, with the host key its sshd made (what `zriver ssh` pins)
        rows = json.loads(box.ok("vps", "list", "--json").stdout)
        rows = rows["vps"] if isinstance(rows, dict) else rows
        row = next(r for r in rows if str(r["id"]) == vps)
        if row["state"] == "running" and row.get("host_key"):
            break
        assert time.monotonic() < deadline, f"VPS {vps} not running with a host key: {row}"
        time.sleep(0.2)
    run = box.run("ssh", vps, "--", "sh", "-c", "id -u; env; exit 5")
    assert run.returncode == 5, f"stdout={run.stdout!r} stderr={run.stderr!r}"
    assert run.stdout.splitlines()[0] == "0", run.stdout
    assert _environment_lines(run.stdout) == [], run.stdout


# ---- the dashboard ---------------------------------------------------------------------------
def test_dashboard_served_with_the_sign_in_link(story: Story):
    box = story.box
    web = json.loads((box.zriver_home / "endpoints.json").read_text())["web"]
    up_log = (box.zriver_home / "up.log").read_text(errors="replace")
    assert re.search(rf"sign in once with {re.escape(web)}/login\?code=\S+", up_log), up_log
    printed = box.ok("web", "--print").stdout
    link = re.search(rf"{re.escape(web)}/login\?code=\S+", printed)
    assert link, printed
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    with opener.open(link.group(0), timeout=30) as page:  # sets the cookie, then redirects to /
        assert page.status == 200 and page.url.rstrip("/") == web
        html = page.read().decode()
    assert "<title>zriver</title>" in html, html[:500]
    scripts = re.findall(r'src="(/static/[^"]+)"', html)
    assert scripts, html[:500]
    for path in scripts:  # the page's own files come out of the bundle
        with opener.open(f"{web}{path}", timeout=30) as script:
            assert script.status == 200 and script.read(), path
    with opener.open(f"{web}/api/v1/nodes", timeout=30) as reply:  # signed in
        nodes = json.loads(reply.read())
    nodes = nodes.get("nodes", nodes) if isinstance(nodes, dict) else nodes
    assert [n["state"] for n in nodes] == ["online"], nodes


# ---- down --------------------------------------------------------------------------------------
def _state(box: Sandbox, task_id: str) -> str:
    status = json.loads(box.ok("status", task_id, "--json").stdout)
    return (status.get("task") or status)["state"]


def test_down_stops_it_and_the_next_up_takes_back_a_running_task(story: Story):
    box = story.box
    sleeper = box.ok("submit", "--name", "bin-survivor", "--user", "root", "--", "sleep", "600")
    task_id = sleeper.stdout.split()[0]
    deadline = time.monotonic() + COMMAND_TIMEOUT
    while _state(box, task_id) != "running":
        assert time.monotonic() < deadline, f"task {task_id} never ran"
        time.sleep(0.1)
    pid = story.host_pid()
    assert pid, "no zriver up holds the data dir"
    down = box.ok("down")
    assert f"pid {pid}" in down.stdout, down.stdout
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not (box.zriver_home / "endpoints.json").exists()
    assert "nothing to stop" in box.ok("down").stderr
    # The task ran on under the node's keeper (the binary's `_keeper`, from the cache)...
    assert any("_keeper" in p.cmdline() for p in _zriver_processes(box)), "no keeper runs on"
    box.ok("up", "-d", "--port", "0", "--cores", "2", "--memory", "2G")
    assert _state(box, task_id) == "running"  # ...and the next start took it back
    box.ok("kill", task_id)
    box.ok("down")
    assert story.host_pid() is None
