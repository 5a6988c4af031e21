"""``docker exec`` with its start as an HTTP upgrade on the Docker unix socket, shared by the
runner's ``exec`` stream target (``zriver.runner.streamtargets``) and the dashboard's env shell
(``zriver.web.terminal``).

The exec is created with the Docker SDK (blocking: call those in a thread); its start is
``POST /exec/ID/start`` with ``Upgrade: tcp`` on the socket, which gives the raw stream (with a
TTY: the terminal's bytes; without: Docker's 8-byte multiplexing headers, ``MUX_HEADER``).
Refusals are ``ExecRefused`` with the sentence a person sees; ``what`` names the container's
owner in them ("task 7", "env bb").
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import struct
import time
from typing import Any

from zriver.streamproto import CHUNK

DEFAULT_DOCKER_SOCKET = "/var/run/docker.sock"
MUX_HEADER = struct.Struct(">BxxxL")
EXIT_WAIT = 10.0
"""Seconds an exec may still say Running after its output ended."""
SHELL_TEST = "if command -v bash >/dev/null; then echo bash; else echo sh; fi"


class ExecRefused(Exception):
    """Docker will not run the exec; ``args[0]`` is the sentence the person sees."""


def docker_socket(docker_host: str) -> str:
    """The unix socket of a Docker: ``docker_host`` when it is ``unix://...``."""
    return docker_host[len("unix://"):] if docker_host.startswith("unix://") else DEFAULT_DOCKER_SOCKET


# ---- blocking (threads) ----------------------------------------------------------------------
def create_exec(api, container: str, what: str, command: list[str], tty: bool,
                env: dict[str, str], stdin: bool = True) -> str:
    import docker.errors

    try:
        return api.exec_create(container, command, stdin=stdin, tty=tty,
                               environment=env or None)["Id"]
    except docker.errors.APIError as exc:
        reason = exc.explanation or str(exc)
        raise ExecRefused(f"cannot run a command in {what}: {reason}") from None


def login_shell(api, container: str, what: str) -> list[str]:
    """``bash -l`` when the container has bash, else ``sh -l`` (one ``sh -c`` test); refuses
    when there is no shell at all."""
    exec_id = create_exec(api, container, what, ["sh", "-c", SHELL_TEST], False, {}, stdin=False)
    output = api.exec_start(exec_id)
    if wait_exit(api, exec_id) != 0:  # 126/127: no sh to run the test
        raise ExecRefused(f"{what}'s container has no shell (no sh, no bash): "
                          f"give a command to run")
    return ["bash", "-l"] if output.strip() == b"bash" else ["sh", "-l"]


def wait_exit(api, exec_id: str, timeout: float = EXIT_WAIT) -> int | None:
    """The exec's exit code once Docker no longer says it runs (it may, just after EOF)."""
    deadline, delay = time.monotonic() + timeout, 0.005
    while True:
        state = api.exec_inspect(exec_id)
        if not state.get("Running"):
            return state.get("ExitCode")
        if time.monotonic() > deadline:
            return None
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def wait_pid(api, exec_id: str, timeout: float = EXIT_WAIT) -> int | None:
    """The exec's host PID: just after the start Docker may still say ``Pid: 0`` (a resize
    or a signal then would be lost); ``None`` once it has ended or after ``timeout``."""
    deadline, delay = time.monotonic() + timeout, 0.002
    while True:
        state = api.exec_inspect(exec_id)
        if state.get("Pid") or state.get("ExitCode") is not None or time.monotonic() > deadline:
            return state.get("Pid") or None
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def signal_exec(api, exec_id: str, name: str) -> None:
    pid = api.exec_inspect(exec_id).get("Pid")
    if pid:
        os.kill(int(pid), signal.Signals[f"SIG{name.upper().removeprefix('SIG')}"])


def hang_up(api, exec_id: str) -> None:
    try:
        state = api.exec_inspect(exec_id)
        if state.get("Running") and state.get("Pid"):
            os.kill(int(state["Pid"]), signal.SIGHUP)
    except Exception:
        pass


# ---- the upgrade -----------------------------------------------------------------------------
async def start_exec(socket_path: str, exec_id: str, tty: bool, what: str):
    """The HTTP upgrade of ``POST /exec/ID/start`` on the Docker socket: ``(reader, writer)``
    of the raw stream."""
    reader, writer = await asyncio.open_unix_connection(socket_path, limit=CHUNK)
    body = json.dumps({"Detach": False, "Tty": tty}).encode()
    writer.write(b"POST /exec/%s/start HTTP/1.1\r\nHost: docker\r\n"
                 b"Content-Type: application/json\r\nConnection: Upgrade\r\n"
                 b"Upgrade: tcp\r\nContent-Length: %d\r\n\r\n%s"
                 % (exec_id.encode(), len(body), body))
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        writer.close()
        raise ExecRefused(f"Docker ended the exec in {what} at once: {exc}") from None
    status = head.split(b"\r\n", 1)[0].split(b" ", 2)
    if len(status) < 2 or status[1] not in (b"101", b"200"):
        detail = (await reader.read(4096)).decode(errors="replace").strip()
        writer.close()
        raise ExecRefused(f"Docker refused the exec in {what}: "
                          f"{head.splitlines()[0].decode(errors='replace')} {detail}")
    return reader, writer


class TtyExec:
    """An interactive exec with a TTY as a stream: ``read`` (``b""`` at its end), ``write``,
    ``resize``, ``wait_closed`` (``{"exit": code}``) and ``close`` (hangs the process up while
    it runs). ``await TtyExec.open(...)`` creates, starts and sizes it."""

    def __init__(self, api, exec_id: str, reader, writer) -> None:
        self.api, self.exec_id, self.reader, self.writer = api, exec_id, reader, writer
        self._resizes: list[asyncio.Future] = []
        self._in_order = asyncio.Lock()

    @classmethod
    async def open(cls, api, socket_path: str, container: str, what: str,
                   command: list[str] | None = None, term: str = "xterm",
                   cols: int = 80, rows: int = 24, env: dict[str, str] | None = None
                   ) -> "TtyExec":
        if command is None:
            command = await asyncio.to_thread(login_shell, api, container, what)
        env = {"TERM": term, **(env or {})}
        exec_id = await asyncio.to_thread(create_exec, api, container, what, command, True, env)
        reader, writer = await start_exec(socket_path, exec_id, True, what)
        self = cls(api, exec_id, reader, writer)
        await asyncio.to_thread(wait_pid, api, exec_id)
        await self._resize(cols, rows)  # before the first byte: the first command sees it
        return self

    async def _resize(self, cols: int, rows: int) -> None:
        async with self._in_order:  # tasks take the lock in the order they were made
            try:
                await asyncio.to_thread(self.api.exec_resize, self.exec_id, height=rows,
                                        width=cols)
            except Exception:  # the exec may have ended meanwhile
                pass

    async def read(self) -> bytes:
        return await self.reader.read(CHUNK)

    async def write(self, data: bytes) -> None:
        if self._resizes:  # input after a resize reaches the TTY after it, in that size
            resizes, self._resizes = self._resizes, []
            await asyncio.gather(*resizes, return_exceptions=True)
        self.writer.write(data)
        await self.writer.drain()

    def resize(self, cols: int, rows: int) -> None:
        self._resizes.append(asyncio.ensure_future(self._resize(cols, rows)))

    async def wait_closed(self) -> dict[str, Any]:
        return {"exit": await asyncio.to_thread(wait_exit, self.api, self.exec_id)}

    def close(self) -> None:
        for resize in self._resizes:
            resize.cancel()
        self.writer.close()
        asyncio.get_running_loop().run_in_executor(None, hang_up, self.api, self.exec_id)
