"""The single-file binary (``pyinstaller/build.sh`` -> ``dist/zriver``), smoke-tested alone.

The binary is built once per session and then run by itself: from a scratch working directory,
with no Python variables in its environment, ``ZRIVER_HOME`` and ``HOME`` in a temporary
directory, so nothing of the checkout or of the developer's ~/.zriver can leak in. Outside CI
the tests skip when PyInstaller is missing; under CI=true they fail instead.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import zriver

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parent.parent
BINARY = REPO / "dist" / "zriver"
BUILD_SCRIPT = REPO / "pyinstaller" / "build.sh"
BUILD_TIMEOUT = 600
COMMAND_TIMEOUT = 60
READY_TIMEOUT = 90
STOP_TIMEOUT = 30

# Variables that would let the binary find the checkout or this interpreter's packages.
_HIDDEN_PREFIXES = ("PYTHON", "ZRIVER_")
_HIDDEN = {"VIRTUAL_ENV", "CONDA_PREFIX", "PYINSTALLER_CONFIG_DIR"}


def _under_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="session")
def zriver_binary() -> Path:
    """Build dist/zriver with pyinstaller/build.sh (once per session) and return its path."""
    try:
        import PyInstaller  # noqa: F401
    except ImportError:
        if _under_ci():
            pytest.fail("PyInstaller is not installed (pip install -e '.[build]'); CI must build the binary")
        pytest.skip("PyInstaller is not installed (pip install -e '.[build]')")
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

    def run(self, *args: str, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [str(BINARY), *args], cwd=self.root, env=self.env, stdin=subprocess.DEVNULL,
                capture_output=True, text=True, timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"`zriver {' '.join(args)}` did not finish within {timeout}s: {exc.stderr!r}")


def _sandbox(root: Path) -> Sandbox:
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(_HIDDEN_PREFIXES) and k not in _HIDDEN
    }
    (root / "home").mkdir()
    (root / "zriver").mkdir()
    (root / "cwd").mkdir()
    env["HOME"] = str(root / "home")
    env["ZRIVER_HOME"] = str(root / "zriver")
    return Sandbox(root=root / "cwd", env=env)


@pytest.fixture
def sandbox(zriver_binary: Path) -> Iterator[Sandbox]:
    # A short path (not pytest's tmp_path): socket paths under it must stay short.
    with tempfile.TemporaryDirectory(prefix="zriver-bin-") as tmp:
        yield _sandbox(Path(tmp))


@dataclass
class UpProcess:
    sandbox: Sandbox
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _stop(process: subprocess.Popen[bytes]) -> bool:
    """SIGTERM, then SIGKILL (to its whole group) after STOP_TIMEOUT. True when it stopped by itself."""
    if process.poll() is not None:
        return True
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT)
        return True
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=STOP_TIMEOUT)
        return False


def _wait_until_ready(up: UpProcess) -> None:
    """Poll `zriver nodes --json` until the one node of `up` is online (bounded)."""
    deadline = time.monotonic() + READY_TIMEOUT
    last = "no answer yet"
    while time.monotonic() < deadline:
        if up.process.poll() is not None:
            pytest.fail(
                f"`zriver up` exited with {up.process.returncode} before it was ready:\n"
                f"{_tail(up.output())}"
            )
        result = up.sandbox.run("nodes", "--json", timeout=COMMAND_TIMEOUT)
        if result.returncode == 0:
            try:
                nodes = json.loads(result.stdout)
            except json.JSONDecodeError:
                last = f"not JSON: {result.stdout!r}"
            else:
                if (
                    isinstance(nodes, list) and len(nodes) == 1
                    and isinstance(nodes[0], dict) and nodes[0].get("state") == "online"
                ):
                    return
                last = f"nodes: {nodes!r}"
        else:
            last = f"exit {result.returncode}: {result.stderr.strip()}"
        time.sleep(0.5)
    pytest.fail(
        f"`zriver up` had no online node within {READY_TIMEOUT}s (last: {last})\n"
        f"--- zriver up output ---\n{_tail(up.output())}"
    )


@pytest.fixture(scope="module")
def up_cluster(zriver_binary: Path) -> Iterator[UpProcess]:
    """`dist/zriver up` (host + runner in one process on loopback), ready to take tasks."""
    with tempfile.TemporaryDirectory(prefix="zriver-bin-") as tmp:
        box = _sandbox(Path(tmp))
        log = Path(tmp) / "up.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                # --port 0: any free ports (clients find them in $ZRIVER_HOME/endpoints.json).
                [str(BINARY), "up", "--port", "0"], cwd=box.root, env=box.env, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        up = UpProcess(sandbox=box, process=process, log=log)
        try:
            _wait_until_ready(up)
            assert (box.zriver_home / "endpoints.json").is_file(), "no endpoints.json under ZRIVER_HOME"
            yield up
        finally:
            stopped = _stop(process)
        if not stopped:
            pytest.fail(
                f"`zriver up` did not stop within {STOP_TIMEOUT}s of SIGTERM and was killed\n"
                f"{_tail(up.output())}"
            )


def test_version(sandbox: Sandbox):
    result = sandbox.run("--version")
    assert result.returncode == 0, result.stderr
    assert re.search(r"\d+\.\d+", result.stdout), result.stdout
    assert zriver.__version__ in result.stdout


def _submit_wait(up: UpProcess, script: str) -> subprocess.CompletedProcess[str]:
    return up.sandbox.run("submit", "--wait", "--user", "root", "--", "sh", "-c", script)


def test_task_output_and_clean_environment(up_cluster: UpProcess):
    up = up_cluster
    result = _submit_wait(up, "echo hello; echo LD=${LD_LIBRARY_PATH:-unset}")
    assert result.returncode == 0, f"stdout={result.stdout!r} stderr={result.stderr!r}"
    lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    assert lines, f"submit printed no task id; stderr={result.stderr!r}"
    task_id = lines[0]
    assert task_id and not re.search(r"\s", task_id), f"first stdout line is not a task id: {task_id!r}"

    logs = up.sandbox.run("logs", task_id)
    assert logs.returncode == 0, logs.stderr
    out = logs.stdout.splitlines()
    assert "hello" in out, logs.stdout
    # The bootloader's bundle directory must not leak into tasks: they see what we had.
    expected = up.sandbox.env.get("LD_LIBRARY_PATH") or "unset"
    assert f"LD={expected}" in out, logs.stdout


def test_task_exit_code_is_submit_exit_code(up_cluster: UpProcess):
    up = up_cluster
    result = _submit_wait(up, "exit 3")
    assert result.returncode == 3, f"stdout={result.stdout!r} stderr={result.stderr!r}"
