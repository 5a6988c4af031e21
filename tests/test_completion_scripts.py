"""``zriver completion bash|zsh|fish``: the scripts, loaded in the real shells, complete verbs,
sub-verbs, flags and choices from the registry, and task ids and node names from a real host
(through ``zriver __complete``, which stays quiet and quick when no host answers).

The ``zriver`` the scripts run is this checkout's: a wrapper on ``PATH`` that runs
``python -m zriver`` with ``PYTHONPATH`` set to it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zriver.client.commands import REGISTRY
from zriver.client.verbs_completion import BUDGET

REPO = Path(__file__).resolve().parent.parent

#: Drives bash's completion function the way readline does: COMP_LINE/COMP_POINT and the
#: words bash would have split (given after a line as WORD... or split on blanks), then prints
#: COMPREPLY, one word a line, and a line "--end--".
BASH_DRIVER = r'''
source "$1"
shift
for line in "$@"; do
    COMP_LINE=${line%%|*}
    COMP_POINT=${#COMP_LINE}
    if [[ $line == *"|"* ]]; then
        read -ra COMP_WORDS <<<"${line#*|}"
        [[ $line == *"|"*" " ]] && COMP_WORDS+=("")
    else
        read -ra COMP_WORDS <<<"$COMP_LINE"
        [[ -z $COMP_LINE || $COMP_LINE == *" " ]] && COMP_WORDS+=("")
    fi
    COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
    COMPREPLY=()
    _zriver zriver
    printf '%s\n' "${COMPREPLY[@]}" --end--
done
'''


@pytest.fixture(scope="module")
def wrapper(tmp_path_factory) -> Path:
    """A directory with an executable ``zriver`` that is this checkout's."""
    bin_dir = tmp_path_factory.mktemp("bin")
    exe = bin_dir / "zriver"
    exe.write_text(f'#!/bin/sh\nPYTHONPATH="{REPO}" exec "{sys.executable}" -m zriver "$@"\n')
    exe.chmod(0o755)
    return bin_dir


def shell_env(wrapper: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PATH": f"{wrapper}{os.pathsep}{os.environ['PATH']}", **extra}
    env.pop("PYTHONPATH", None)  # the wrapper sets it
    return env


@pytest.fixture(scope="module")
def scripts(wrapper, tmp_path_factory) -> dict[str, Path]:
    """The three scripts, written by the wrapper's ``zriver completion SHELL``."""
    out = tmp_path_factory.mktemp("completion")
    found = {}
    for shell in ("bash",):
        result = subprocess.run(["zriver", "completion", shell], capture_output=True, text=True,
                                env=shell_env(wrapper), timeout=60)
        assert result.returncode == 0 and result.stderr == "", result.stderr
        found[shell] = out / f"zriver.{shell}"
        found[shell].write_text(result.stdout)
    return found


def bash_complete(script: Path, wrapper: Path, *lines: str, env: dict | None = None,
                  ) -> list[list[str]]:
    """COMPREPLY for each line (``"LINE"`` or ``"LINE|WORD WORD..."``: bash's own split)."""
    result = subprocess.run(["bash", "--norc", "--noprofile", "-c", BASH_DRIVER, "bash",
                             str(script), *lines], capture_output=True, text=True,
                            env=env or shell_env(wrapper), timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    replies, current = [], []
    for word in result.stdout.split("\n")[:-1]:
        if word == "--end--":
            replies.append(current)
            current = []
        else:
            current.append(word)
    assert len(replies) == len(lines), result.stdout
    return replies


def first_words() -> set[str]:
    return {name.split()[0] for name in REGISTRY}


def test_bash_completes_verbs_sub_verbs_flags_and_choices(scripts, wrapper):
    replies = bash_complete(
        scripts["bash"], wrapper,
        "zriver su", "zriver ", "zriver node ", "zriver keys n", "zriver submit --co",
        "zriver --ho", "zriver --host tcp://127.0.0.1:1 tasks --state r", "zriver usage --by ",
        "zriver kill 3 --j")
    su, every, node, keys, submit, globals_, state, by, kill = replies
    assert su == ["submit"]
    assert set(every) == first_words() and "__complete" not in every
    assert node == ["drain", "undrain"]
    assert keys == ["new"]
    assert set(submit) == {"--cores", "--container"}
    assert set(globals_) == {"--host", "--host-key"}
    assert state == ["running"]
    assert by == ["user", "node"]
    assert kill == ["--json"]


def test_bash_completes_a_flag_value_after_equals_as_bash_splits_it(scripts, wrapper):
    """bash splits ``--view=t`` into ``--view``, ``=``, ``t`` and replaces only ``t``: the
    value asked of ``zriver __complete`` comes back without the part before it."""
    (view,) = bash_complete(scripts["bash"], wrapper, "zriver top --view=t|zriver top --view = t")
    assert view == ["tasks"]


def test_bash_completes_live_task_ids_and_node_names(scripts, wrapper, cluster):
    running = cluster.submit(["sleep", "60"], name="train")
    cluster.wait_state(running, {"running"})
    done = cluster.submit(["true"], name="prep")
    cluster.wait_state(done, {"completed"})
    host = " ".join(cluster.cli_flags())
    logs, by_name, drain, health = bash_complete(
        scripts["bash"], wrapper, f"zriver {host} logs ", f"zriver {host} status tra",
        f"zriver {host} node drain ", f"zriver {host} health n")
    assert logs[:2] == [str(running), str(done)]  # unfinished first
    assert by_name == [str(running)]
    assert drain == ["n1"]
    assert health == ["n1"]


def dead_port() -> int:
    """A loopback port nothing listens on (bound to 0, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def timed(wrapper: Path, *words: str) -> tuple[float, subprocess.CompletedProcess]:
    start = time.monotonic()
    result = subprocess.run(["zriver", "__complete", *words], capture_output=True, text=True,
                            env=shell_env(wrapper), timeout=30)
    return time.monotonic() - start, result


def test_live_completion_is_quick_and_quiet_without_a_host(wrapper):
    """Nothing listening, or a listener that never speaks: no lines, nothing on stderr, exit 0,
    and at most ``BUDGET`` (plus slack) beyond a completion that asks no host (measured in the
    same test, so a slow machine's Python start does not count)."""
    baseline, static = timed(wrapper, "tasks", "--state", "r")
    assert static.stdout == "running\n"
    dead, refused = timed(wrapper, "--host", f"127.0.0.1:{dead_port()}", "logs", "1")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # the kernel accepts; nobody ever answers
        port = silent.getsockname()[1]
        mute, unanswered = timed(wrapper, "--host", f"127.0.0.1:{port}", "logs", "1")
    for result in (refused, unanswered):
        assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    print(f"no host: {dead:.2f} s, silent host: {mute:.2f} s, no host asked: {baseline:.2f} s")
    assert dead < 1.5 or dead - baseline < 0.5
    assert mute - baseline < BUDGET + 0.5


def test_bash_with_no_host_offers_the_flags_quietly(scripts, wrapper):
    env = shell_env(wrapper, ZRIVER_HOST=f"127.0.0.1:{dead_port()}")
    (logs,) = bash_complete(scripts["bash"], wrapper, "zriver logs ", env=env)
    assert "--follow" in logs and not any(word.isdigit() for word in logs)


def test_the_hidden_verb_is_in_no_help(wrapper):
    result = subprocess.run(["zriver", "--help"], capture_output=True, text=True,
                            env=shell_env(wrapper), timeout=30)
    assert "completion" in result.stdout and "__complete" not in result.stdout
