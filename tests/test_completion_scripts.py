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


#: Loads the zsh script with the real compinit, says which function it registered, then calls
#: it for each line with zsh's completion variables set (``words``, ``CURRENT``). What it
#: offers is captured by standing in for ``_describe``/``compadd``/``_files`` (which print
#: it, ``WORD:DESCRIPTION`` a line, and ``--end--`` after each line): outside a real Tab
#: press those cannot add matches, and zsh's own prefix matching is not under test.
ZSH_DRIVER = r'''
autoload -U compinit && compinit -u -D
source "$1"
shift
print -r -- "registered: ${_comps[zriver]}"
_describe() { print -rl -- "${(@P)4}" }
compadd() { [[ $1 == -a ]] && print -rl -- "${(@P)2}" }
_files() { print -r -- "<files>" }
for line in "$@"; do
    words=(${(z)line})
    [[ $line == *" " ]] && words+=("")
    CURRENT=$#words
    _zriver
    print -r -- --end--
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
    for shell in ("bash", "zsh", "fish"):
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
    return _replies(result.stdout.split("\n")[:-1], len(lines))


def zsh_complete(script: Path, wrapper: Path, home: Path, *lines: str,
                 **env: str) -> tuple[str, list[list[str]]]:
    """The function the zsh script registered for ``zriver``, and what it offers per line."""
    result = subprocess.run(["zsh", "-f", "-c", ZSH_DRIVER, "zsh", str(script), *lines],
                            capture_output=True, text=True, timeout=60,
                            env=shell_env(wrapper, HOME=str(home), **env))
    assert result.returncode == 0 and result.stderr == "", result.stderr
    out = result.stdout.split("\n")
    return out[0], _replies(out[1:-1], len(lines))


def fish_complete(script: Path, wrapper: Path, home: Path, *lines: str,
                  **env: str) -> list[list[str]]:
    """What fish's own ``complete -C LINE`` offers (``WORD<TAB>DESCRIPTION``) per line."""
    program = f"source {script}\n" + "".join(
        f"complete -C {fish_word(line)}\necho --end--\n" for line in lines)
    result = subprocess.run(["fish", "--no-config", "-c", program], capture_output=True,
                            text=True, timeout=60, env=shell_env(wrapper, HOME=str(home), **env))
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return _replies(result.stdout.split("\n")[:-1], len(lines))


def fish_word(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _replies(out: list[str], count: int) -> list[list[str]]:
    replies, current = [], []
    for line in out:
        if line == "--end--":
            replies.append(current)
            current = []
        else:
            current.append(line)
    assert len(replies) == count, out
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


def test_zsh_script_registers_and_offers_verbs_with_their_summaries(scripts, wrapper, tmp_path):
    registered, (every, node, flags, state, files) = zsh_complete(
        scripts["zsh"], wrapper, tmp_path, "zriver su", "zriver node ", "zriver submit --co",
        "zriver tasks --state ", "zriver submit -- ")
    assert registered == "registered: _zriver"
    assert {line.split(":")[0] for line in every} == first_words()
    assert f"submit:{REGISTRY['submit'].summary}" in every
    assert [line.split(":")[0] for line in node] == ["drain", "undrain"]
    assert "--cores:cores to allocate and pin (default 1)" in flags
    assert "running" in state and "killed_oom" in state
    assert files == ["<files>"]


def test_zsh_autoloads_the_script_from_fpath(scripts, wrapper, tmp_path):
    """Installed as ``_zriver`` in ``$fpath``: compinit registers it without loading it, and
    the first call loads it and completes at once (``loadautofunc``)."""
    functions = tmp_path / "zfunc"
    functions.mkdir()
    (functions / "_zriver").write_text(scripts["zsh"].read_text())
    program = (f"fpath=({functions} $fpath)\nautoload -U compinit && compinit -u -D\n"
               "print -r -- ${_comps[zriver]} ${+functions[_zriver_ask]}\n"
               "_describe() { print -rl -- \"${(@P)4}\" }\n"
               "words=(zriver node '')\nCURRENT=3\n_zriver\n")
    result = subprocess.run(["zsh", "-f", "-c", program], capture_output=True, text=True,
                            timeout=60, env=shell_env(wrapper, HOME=str(tmp_path)))
    assert result.stderr == ""
    first, *offered = result.stdout.splitlines()
    assert first == "_zriver 0"  # registered, not yet loaded
    assert [line.split(":")[0] for line in offered] == ["drain", "undrain"]


def test_fish_offers_verbs_sub_verbs_flags_and_choices(scripts, wrapper, tmp_path):
    su, node, flags, state, view = fish_complete(
        scripts["fish"], wrapper, tmp_path, "zriver su", "zriver node ", "zriver submit --co",
        "zriver tasks --state r", "zriver top --view=t")
    assert su == [f"submit\t{REGISTRY['submit'].summary}"]
    assert [line.split("\t")[0] for line in node] == ["drain", "undrain"]
    assert {line.split("\t")[0] for line in flags} == {"--cores", "--container"}
    assert state == ["running"]
    assert view == ["--view=tasks"]


def test_live_task_ids_and_node_names_in_bash_zsh_and_fish(scripts, wrapper, cluster, tmp_path):
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
    # zsh and fish show each id with its name and state; the host comes from the environment
    env = {"ZRIVER_HOST": cluster.endpoint, "ZRIVER_KEY": str(cluster.admin_key),
           "ZRIVER_HOST_KEY": cluster.server_keys.public}
    _, (zsh_logs, zsh_node) = zsh_complete(scripts["zsh"], wrapper, tmp_path, "zriver logs ",
                                           "zriver node undrain ", **env)
    assert zsh_logs[:2] == [f"{running}:train · running", f"{done}:prep · completed"]
    assert zsh_node == ["n1:online"]
    fish_logs, fish_node = fish_complete(scripts["fish"], wrapper, tmp_path, "zriver kill ",
                                         "zriver submit --target ", **env)
    assert f"{running}\ttrain · running" in fish_logs
    assert "n1\tonline" in fish_node


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
