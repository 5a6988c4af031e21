"""Running the long-lived roles: ``zriver host``, ``zriver runner`` and ``zriver up`` (both).

Each role runs on one asyncio loop (uvloop when installed) until SIGINT or SIGTERM, then stops
in order: the runner first (it ends its native tasks and records their end), then the host.

Before anything is opened, each role locks its data directory (``zriver.dirlock``): a second
host or runner on a directory in use raises ``DirectoryInUse`` having touched nothing (no
store, no endpoints.json, no ledger, no task killed). The locks are held until the role has
stopped, and released by the kernel if the process dies.
"""

from __future__ import annotations

import asyncio
import getpass
import signal
from dataclasses import replace
from pathlib import Path
from typing import Awaitable, Callable

import structlog

from zriver import dirlock, gctune
from zriver import keys as keyfiles
from zriver.config import HostSettings, RunnerSettings
from zriver.errors import BadVersion, error_from_reply
from zriver.host.service import Host
from zriver.runner.agent import Runner

log = structlog.get_logger("zriver")


def port_of(endpoint: str) -> int:
    """``tcp://127.0.0.1:8620`` -> ``8620``."""
    return int(endpoint.rsplit(":", 1)[1])


def runner_for(host: Host, settings: RunnerSettings, embedded: bool = False) -> Runner:
    """A runner of ``host`` in this process: wired to its actual (possibly ephemeral) ports
    on loopback, or, ``embedded``, speaking to it over an in-process link
    (``Host.runner_link``; its byte streams still use the stream port)."""
    return Runner(replace(settings, host="127.0.0.1" if host.settings.bind_address in
                          ("0.0.0.0", "*") else host.settings.bind_address,
                          router_port=port_of(host.endpoints["router"]),
                          xsub_port=port_of(host.endpoints["xsub"])),
                  link=host.runner_link() if embedded else None)


async def _until_signalled(started: Callable[[], Awaitable[None]],
                           stopping: Callable[[], Awaitable[None]],
                           failed: Callable[[], asyncio.Event] | None = None) -> None:
    """Start, then settle the collector (``gctune``), then run until SIGINT/SIGTERM or until
    ``failed()`` is set; always stop."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await started()
    gctune.settle()
    waits = [asyncio.ensure_future(stop.wait())]
    if failed is not None:
        waits.append(asyncio.ensure_future(failed().wait()))
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waits:
            waiter.cancel()
        await stopping()


def lock_host_dir(settings: HostSettings, role: str) -> dirlock.DirLock:
    """Lock the host's (resolved) data dir for ``role``; ``DirectoryInUse`` when taken."""
    return dirlock.acquire(settings.resolved().data_dir, "host", role)


def lock_runner_dir(settings: RunnerSettings, role: str) -> dirlock.DirLock:
    """Lock the runner's (resolved) data dir for ``role``; ``DirectoryInUse`` when taken."""
    return dirlock.acquire(settings.resolved().data_dir, "runner", role)


async def serve_host(settings: HostSettings,
                     announce: Callable[[Host], None] | None = None) -> None:
    """Run a host until signalled (``announce(host)`` once it has started); raise
    ``DirectoryInUse`` (nothing started) when its data dir is locked by another process."""
    with lock_host_dir(settings, "zriver host"):
        host = Host(settings)

        async def start() -> None:
            await host.start()
            if announce is not None:
                announce(host)

        await _until_signalled(start, host.stop)


async def serve_runner(settings: RunnerSettings, kill_tasks: bool = False) -> None:
    """Run a runner until signalled; its native tasks run on under the node's keeper unless
    ``kill_tasks``. Raise what made it give up (``BadVersion`` when the host speaks another
    protocol, ``Conflict`` when another live runner holds its node name), and
    ``DirectoryInUse`` (nothing opened, no task touched) when its data dir is locked."""
    with lock_runner_dir(settings, "zriver runner"):
        runner = Runner(settings)
        await _until_signalled(runner.start, lambda: runner.stop(kill_tasks),
                               lambda: runner.failed)
    if runner.fatal:
        raise error_from_reply(runner.fatal_code or BadVersion.code, runner.fatal)


async def serve_both(host_settings: HostSettings, runner_settings: RunnerSettings,
                     announce: Callable[[Host, Runner], None], kill_tasks: bool = False) -> None:
    """``zriver up``: a host and one runner in this process, on one loop, the runner
    speaking to the host over an in-process link (``zriver.inproc``), not loopback sockets.

    Locks both data dirs (the host's, then the runner's) before starting anything; raises
    ``DirectoryInUse`` when either is taken (the other is released again)."""
    with lock_host_dir(host_settings, "zriver up"), lock_runner_dir(runner_settings, "zriver up"):
        await _serve_both(host_settings, runner_settings, announce, kill_tasks)


def local_keys(host_settings: HostSettings,
               runner_settings: RunnerSettings) -> tuple[list, RunnerSettings]:
    """``zriver up`` needs no set-up: with authentication on, make (once) the host's key pair,
    an admin key for the local user (where local clients look for it) and the embedded
    runner's key; return the keys the host trusts at start, and the runner's settings with
    its key and the host's. With ``security = "none"``: nothing, and a plain runner."""
    if host_settings.resolved().security == "none":
        return [], replace(runner_settings, key="none")
    resolved = runner_settings.resolved()
    made = keyfiles.ensure_local_cluster(
        host_settings.resolved().data_dir, local_user(), keyfiles.client_key_file(),
        resolved.name, Path(runner_settings.key or keyfiles.runner_secret_file()))
    return made.bootstrap, replace(runner_settings, key=str(made.runner_key_file),
                                   host_key=made.server.public)


def local_user() -> str:
    """The local account's name, as the admin key of ``zriver up`` is called."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "admin"


async def _serve_both(host_settings: HostSettings, runner_settings: RunnerSettings,
                      announce: Callable[[Host, Runner], None], kill_tasks: bool) -> None:
    """``serve_both`` once the data dirs are locked."""
    bootstrap, runner_settings = local_keys(host_settings, runner_settings)
    host = Host(host_settings, bootstrap=bootstrap)
    runner: Runner | None = None

    async def started() -> None:
        nonlocal runner
        await host.start()
        runner = runner_for(host, runner_settings, embedded=True)
        await runner.start()
        await asyncio.wait_for(runner.registered.wait(), 30)
        announce(host, runner)

    async def stopping() -> None:
        if runner is not None:
            await runner.stop(kill_tasks)
        await host.stop()

    await _until_signalled(started, stopping)
