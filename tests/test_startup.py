"""What a client start imports: ``--version`` nothing of the CLI, a client verb neither
asyncssh nor prompt-toolkit nor structlog, and structlog, once something imports it, set up as
``configure`` would have (``logsetup.configure_when_imported``). Each case runs in a fresh
interpreter, so what an earlier test imported cannot hide an import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZRIVER_")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60, cwd=REPO)


LOADED = "import json, sys; print(json.dumps(sorted(sys.modules)), file=sys.stderr)"


def loaded_after(argv: list[str]) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    ran = run_python(f"from zriver.cli import main\nmain({argv!r})\n{LOADED}")
    assert ran.returncode == 0, ran.stderr
    return set(json.loads(ran.stderr.strip().splitlines()[-1])), ran


def test_version_imports_nothing_of_the_cli():
    loaded, ran = loaded_after(["--version"])
    assert ran.stdout.startswith("zriver "), ran.stdout
    heavy = {"zmq", "structlog", "asyncio", "asyncssh", "prompt_toolkit", "zriver.client"}
    assert not loaded & heavy, loaded & heavy


def test_a_client_verb_leaves_ssh_terminal_and_logging_unimported():
    loaded, _ = loaded_after(["completion", "bash"])
    assert "zriver.client.commands" in loaded  # the registry was built
    assert not loaded & {"asyncssh", "prompt_toolkit", "structlog"}, loaded


def test_structlog_imported_later_is_configured_as_for_the_verb():
    ran = run_python(
        "from zriver.cli import main\nmain(['completion', 'bash'])\n"
        "import structlog\nlog = structlog.get_logger('t')\n"
        "log.info('quiet-info')\nlog.warning('loud-warning', k=1)\n")
    assert ran.returncode == 0, ran.stderr
    assert "loud-warning" in ran.stderr and "k=1" in ran.stderr, ran.stderr
    assert "quiet-info" not in ran.stderr + ran.stdout  # the verb's level: warning
    assert "loud-warning" not in ran.stdout  # to stderr, as configure does
