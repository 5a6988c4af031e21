"""systemd units for a host or a runner (``zriver init service``): pure text, no I/O.

Why the runner's unit says ``KillMode=process``: native tasks belong to the node's task keeper
(``zriver.runner.keeper``), which the runner starts and which detaches from it (its own
session, reparented to init) but, under systemd, stays in the unit's cgroup with every task it
spawns. systemd's default (``KillMode=control-group``) sends SIGTERM to every process of that
cgroup on ``systemctl stop`` and ``restart``: the keeper would end its tasks. With
``KillMode=process`` only the main process (the runner) gets SIGTERM (and SIGKILL after
``TimeoutStopSec``); the keeper and the tasks run on, and the next start, finding them in the
cgroup ("left-over process"), reconnects to the keeper and takes the tasks back.
``tests/test_service_units.py`` follows exactly that with real processes in a real cgroup.

The host starts no process that should outlive it, so its unit keeps the default kill mode.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from zriver import __version__

ROLES = ("host", "runner")


@dataclass(frozen=True)
class UnitSpec:
    """What a unit is made of: ``command`` runs zriver itself (``zriver_command``)."""

    role: str
    command: tuple[str, ...]
    config: str
    user: str
    home: str
    pythonpath: str | None = None
    """Where the ``zriver`` package lies, for a command that runs ``-m zriver``."""


def zriver_command(argv0: str | None = None, executable: str | None = None,
                   frozen: bool | None = None) -> tuple[str, ...]:
    """How this zriver was started, as an absolute command: the single-file binary
    (``bundle.binary_path()`` when frozen: the file the user ran, not its unpacked copy in the
    cache), an installed ``zriver`` script (``sys.argv[0]``), else this interpreter with
    ``-m zriver``."""
    from zriver.bundle import binary_path

    argv0 = sys.argv[0] if argv0 is None else argv0
    frozen_ = bool(getattr(sys, "frozen", False)) if frozen is None else frozen
    executable = (binary_path() if frozen_ else sys.executable) if executable is None else executable
    frozen = bool(getattr(sys, "frozen", False)) if frozen is None else frozen
    if frozen:
        return (str(Path(executable).absolute()),)
    script = Path(argv0)
    if script.name == "zriver" and script.is_file():
        return (str(script.absolute()),)
    return (str(Path(executable).absolute()), "-m", "zriver")


def package_root() -> str:
    """The folder that holds the ``zriver`` package (a ``-m zriver`` command's PYTHONPATH)."""
    return str(Path(__file__).absolute().parent.parent)


def quote(word: str) -> str:
    """One word of an ``ExecStart=`` line, as systemd splits and expands it: ``%`` and ``$``
    doubled, the word in double quotes when it holds a space, a quote or a backslash."""
    word = word.replace("%", "%%").replace("$", "$$")
    if any(c in word for c in ' \t"\'\\') or not word:
        word = '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return word


def quote_assignment(text: str) -> str:
    """An ``Environment=`` assignment: ``%`` doubled (systemd expands specifiers there, not
    ``$``), in double quotes when it holds a space, a quote or a backslash."""
    text = text.replace("%", "%%")
    if any(c in text for c in ' \t"\'\\'):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def exec_start(spec: UnitSpec) -> list[str]:
    """The argv the unit starts (before systemd's quoting)."""
    return [*spec.command, spec.role, "--config", spec.config]


def unit_name(role: str) -> str:
    return f"zriver-{role}.service"


def render(spec: UnitSpec) -> str:
    """The unit file for ``spec.role`` (``host`` or ``runner``)."""
    if spec.role not in ROLES:
        raise ValueError(f"no unit for role {spec.role!r}")
    runner = spec.role == "runner"
    name = unit_name(spec.role)
    header = [
        f"# {name}: zriver {spec.role}, written by `zriver init service --{spec.role}` "
        f"(zriver {__version__}).",
        f"# Install: copy to /etc/systemd/system/{name}, then",
        f"#   systemctl daemon-reload && systemctl enable --now {name}",
        f"# Logs: journalctl -u {name}. Deploying a cluster: docs/deploy.md.",
    ]
    if runner:
        header += [
            "# Stopping or restarting this unit never ends running tasks: KillMode=process",
            "# sends SIGTERM to the runner alone; native tasks stay with the node's task keeper",
            "# (a process of this unit's cgroup that outlives the runner), containers with",
            "# Docker, and the next start takes them back. `zriver runner --kill-tasks` in",
            "# ExecStart would end them on stop instead.",
        ]
    else:
        header += [
            "# Stopping or restarting the host never ends tasks: they run on the runners,",
            "# which keep their results until a host on the same data directory has them.",
        ]
    after = "network-online.target docker.service" if runner else "network-online.target"
    lines = header + [
        "",
        "[Unit]",
        f"Description=zriver {spec.role}" + (" (node agent)" if runner else " (coordinator)"),
        "Wants=network-online.target",
        f"After={after}",
        "",
        "[Service]",
        "Type=simple",
        f"User={spec.user}",
        "Environment=" + quote_assignment(f"ZRIVER_HOME={spec.home}"),
        *(["Environment=" + quote_assignment(f"PYTHONPATH={spec.pythonpath}")]
          if spec.pythonpath else []),
        "ExecStart=" + " ".join(quote(word) for word in exec_start(spec)),
        "KillMode=process" if runner else "KillMode=control-group",
        "Restart=on-failure",
        "RestartSec=5",
        "TimeoutStopSec=30",
    ]
    if not runner:
        lines.append("LimitNOFILE=65536")
    lines += ["", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)
