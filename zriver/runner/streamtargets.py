"""Stream targets in container tasks: ``tcp``, ``udp`` and ``exec`` handlers for
``zriver.runner.streams.StreamEndpoint`` (``ContainerTargets(...).handlers()``).

Every target names a task (``{"task": ID, ...}``) that must run in a container of this runner;
otherwise the handler refuses with a sentence (``StreamRefused``): not on this node, not a
container task, no Docker here. Bytes pass through untouched (never decoded).

* ``tcp {"port"}``: a TCP connection to the container's bridge address (``NetworkSettings``
  from ``inspect``), nothing published on the node; half-closes pass both ways.
* ``udp {"port"}``: a connected datagram socket to the same address; one ``DATA`` frame is one
  datagram both ways; datagrams arriving while the host's window is full are dropped.
* ``exec {"command", "tty", "term", "cols", "rows", "env"}``: the exec is created with the
  Docker SDK in a thread (never on the loop); its start is an HTTP upgrade on the
  Docker unix socket (``zriver.dockerexec``, shared with the web's env shell) (``POST /exec/ID/start``, ``Upgrade: tcp``). With a TTY the bytes are raw,
  the host's EOF is ignored (closing stdin would hang the PTY up) and the size is set right
  after the start (API 1.41 cannot set it at start), before the stream is ``OPENED``; without one, Docker's 8-byte multiplexing
  headers become ``DATA``/``STDERR`` and the host's EOF half-closes the socket (stdin's end).
  ``resize`` -> ``exec_resize``; ``signal`` -> the exec's host PID (``exec_inspect``) gets it;
  both wait until Docker reports that PID (it says 0 for a moment after the start).
  At Docker's EOF the exec is inspected until it no longer runs: ``CLOSE {"exit": code}``.
  ``command`` None is a login shell: ``bash -l`` when the image has bash, else ``sh -l``.
  A stream the host aborts hangs the exec's process up (SIGHUP).
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, Callable

import structlog

from zriver import dockerexec
from zriver.dockerexec import (DEFAULT_DOCKER_SOCKET, EXIT_WAIT, MUX_HEADER,  # noqa: F401
                               SHELL_TEST, ExecRefused, docker_socket)
from zriver.runner.streams import Pipe, StreamRefused
from zriver.streamproto import CHUNK

log = structlog.get_logger("zriver.runner")

CONNECT_TIMEOUT = 10.0


def _refusing(fn: Callable) -> Callable:
    """``fn`` (shared with ``zriver.dockerexec``) with its ``ExecRefused`` as ``StreamRefused``."""
    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ExecRefused as exc:
            raise StreamRefused(*exc.args) from None
    return call


class ContainerTargets:
    """The container targets of one runner. ``backends()`` gives the runner's backends by
    name (the Docker one offers ``container_of`` and ``client``)."""

    def __init__(self, node: str, backends: Callable[[], dict[str, Any]], socket_path: str) -> None:
        self.node = node
        self.backends = backends
        self.socket_path = socket_path

    def handlers(self) -> dict[str, Callable]:
        return {"tcp": self.tcp, "udp": self.udp, "exec": self.exec}

    # ---- which container -----------------------------------------------------------------
    async def _container(self, target: dict) -> tuple[Any, str, int]:
        """``(docker api, container id, task id)`` of the target's task, or a refusal."""
        task_id = target.get("task")
        if not isinstance(task_id, int) or isinstance(task_id, bool):
            raise StreamRefused("a stream target names its task by id")
        backends = self.backends()
        docker = backends.get("docker")
        container = docker.container_of(task_id) if docker is not None else None
        if container is None:
            native = backends.get("native")
            if native is not None and task_id in native.running():
                raise StreamRefused(f"task {task_id} is not a container task: shells and "
                                    f"forwards reach container tasks only")
            raise StreamRefused(f"task {task_id} is not running on node {self.node}")
        try:
            client = await asyncio.to_thread(docker.client)
        except Exception as exc:
            raise StreamRefused(f"Docker does not answer on node {self.node}: {exc}") from None
        return client.api, container, task_id

    @staticmethod
    def _address(api, container: str, task_id: int) -> str:
        """The container's bridge address (blocking: call in a thread)."""
        settings = api.inspect_container(container).get("NetworkSettings") or {}
        address = settings.get("IPAddress")
        for network in (settings.get("Networks") or {}).values():
            address = address or network.get("IPAddress")
        if not address:
            raise StreamRefused(f"task {task_id}'s container has no network address")
        return address

    # ---- tcp -----------------------------------------------------------------------------
    async def tcp(self, target: dict, pipe: Pipe) -> dict:
        port = _port(target)
        api, container, task_id = await self._container(target)
        host = await asyncio.to_thread(self._address, api, container, task_id)
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, limit=CHUNK), CONNECT_TIMEOUT)
        except ConnectionRefusedError:
            raise StreamRefused(f"nothing listens on port {port} in task {task_id}") from None
        except (OSError, asyncio.TimeoutError) as exc:
            raise StreamRefused(f"cannot reach port {port} in task {task_id}: "
                                f"{exc or 'timed out'}") from None
        pipe.opened()
        try:
            await _both(_socket_to_pipe(reader, pipe), _pipe_to_socket(pipe, writer, True))
        finally:
            writer.close()
        return {"exit": None, "error": None}

    # ---- udp -----------------------------------------------------------------------------
    async def udp(self, target: dict, pipe: Pipe) -> dict:
        port = _port(target)
        api, container, task_id = await self._container(target)
        host = await asyncio.to_thread(self._address, api, container, task_id)
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            _Datagrams, remote_addr=(host, port))
        pipe.opened()
        try:
            await _both(protocol.to_pipe(pipe), _datagrams_from_pipe(pipe, transport))
        finally:
            transport.close()
        return {"exit": None, "error": None}

    # ---- exec ----------------------------------------------------------------------------
    async def exec(self, target: dict, pipe: Pipe) -> dict:
        api, container, task_id = await self._container(target)
        tty = bool(target.get("tty"))
        command = target.get("command")
        if command is None:
            command = await asyncio.to_thread(self._login_shell, api, container, task_id)
        if not isinstance(command, list) or not command or not all(isinstance(a, str) for a in command):
            raise StreamRefused("an exec command is a non-empty list of strings")
        env = {str(k): str(v) for k, v in (target.get("env") or {}).items()}
        if tty:
            env.setdefault("TERM", str(target.get("term") or "xterm"))
        exec_id = await asyncio.to_thread(self._create_exec, api, container, task_id,
                                          command, tty, env)
        reader, writer = await self._start_exec(exec_id, tty, task_id)
        if tty:  # sized before the host may send a byte: the first command sees the size
            await asyncio.to_thread(_wait_pid, api, exec_id)
            await self._control(api, exec_id, {"resize": [target.get("cols") or 80,
                                                          target.get("rows") or 24]})
        pipe.opened()
        controls = asyncio.ensure_future(self._controls(api, exec_id, pipe))
        stdin = asyncio.ensure_future(_pipe_to_socket(pipe, writer, not tty))
        finished = False
        try:
            await (_socket_to_pipe(reader, pipe) if tty else _demux_to_pipe(reader, pipe))
            finished = True
        finally:
            for task in (controls, stdin):
                task.cancel()
            writer.close()
            if not finished:  # the host aborted: hang the process up
                asyncio.get_running_loop().run_in_executor(None, _hang_up, api, exec_id)
        return {"exit": await self._exit_code(api, exec_id), "error": None}

    @staticmethod
    def _login_shell(api, container: str, task_id: int) -> list[str]:
        """``bash -l`` when the container has bash, else ``sh -l`` (blocking)."""
        return _refusing(dockerexec.login_shell)(api, container, f"task {task_id}")

    @staticmethod
    def _create_exec(api, container: str, task_id: int, command: list[str], tty: bool,
                     env: dict[str, str], stdin: bool = True) -> str:
        return _refusing(dockerexec.create_exec)(api, container, f"task {task_id}", command,
                                                 tty, env, stdin)

    async def _start_exec(self, exec_id: str, tty: bool, task_id: int):
        """The HTTP upgrade of ``POST /exec/ID/start`` on the Docker socket: the raw stream."""
        try:
            return await dockerexec.start_exec(self.socket_path, exec_id, tty, f"task {task_id}")
        except ExecRefused as exc:
            raise StreamRefused(*exc.args) from None

    async def _controls(self, api, exec_id: str, pipe: Pipe) -> None:
        """Apply the host's resizes and signals to the exec, in order, once Docker knows the
        exec's process (``_wait_pid``: before that they would be lost)."""
        await asyncio.to_thread(_wait_pid, api, exec_id)
        while True:
            await self._control(api, exec_id, await pipe.controls.get())

    @staticmethod
    async def _control(api, exec_id: str, control: dict) -> None:
        """Apply one resize or signal (failures are logged: the exec may have ended)."""
        try:
            if "resize" in control:
                cols, rows = (int(v) for v in control["resize"])
                await asyncio.to_thread(api.exec_resize, exec_id, height=rows, width=cols)
            if "signal" in control:
                await asyncio.to_thread(_signal_exec, api, exec_id, str(control["signal"]))
        except (ValueError, TypeError) as exc:
            log.warning("streams.bad_control", control=repr(control)[:200], error=str(exc))
        except Exception as exc:  # the exec may have ended meanwhile
            log.info("streams.control_failed", error=str(exc))

    async def _exit_code(self, api, exec_id: str) -> int | None:
        return await asyncio.to_thread(_wait_exit, api, exec_id)


# ---- byte pumps ------------------------------------------------------------------------------
async def _both(first, second) -> None:
    """Run two pumps until both end; one that fails ends the other."""
    tasks = [asyncio.ensure_future(first), asyncio.ensure_future(second)]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None and not isinstance(task.exception(), OSError):
                raise task.exception()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _socket_to_pipe(reader: asyncio.StreamReader, pipe: Pipe) -> None:
    while data := await reader.read(CHUNK):
        await pipe.write(data)
    pipe.write_eof()


async def _pipe_to_socket(pipe: Pipe, writer: asyncio.StreamWriter, half_close: bool) -> None:
    """The host's bytes into the socket; at the host's EOF half-close it (``half_close``) or
    leave it open (an exec with a TTY)."""
    while data := await pipe.read():
        writer.write(data)
        await writer.drain()
    if half_close and writer.can_write_eof():
        writer.write_eof()


async def _demux_to_pipe(reader: asyncio.StreamReader, pipe: Pipe) -> None:
    """Docker's multiplexed exec output (no TTY): stdout -> ``DATA``, stderr -> ``STDERR``."""
    while True:
        try:
            kind, size = MUX_HEADER.unpack(await reader.readexactly(MUX_HEADER.size))
            while size:
                data = await reader.readexactly(min(size, CHUNK))
                size -= len(data)
                await (pipe.write_stderr(data) if kind == 2 else pipe.write(data))
        except asyncio.IncompleteReadError:
            break
    pipe.write_eof()


class _Datagrams(asyncio.DatagramProtocol):
    """A connected UDP socket's incoming datagrams, queued (dropped once the queue is full)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=1024)

    def datagram_received(self, data: bytes, addr) -> None:
        if not self.queue.full():
            self.queue.put_nowait(data)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port unreachable and the like: UDP says nothing

    def connection_lost(self, exc) -> None:
        if not self.queue.full():
            self.queue.put_nowait(None)

    async def to_pipe(self, pipe: Pipe) -> None:
        while (data := await self.queue.get()) is not None:
            await pipe.write(data)


async def _datagrams_from_pipe(pipe: Pipe, transport: asyncio.DatagramTransport) -> None:
    while data := await pipe.read():
        transport.sendto(data)


# ---- blocking Docker helpers (threads): shared with the web's env shell ------------------------
_wait_exit = dockerexec.wait_exit
_wait_pid = dockerexec.wait_pid
_signal_exec = dockerexec.signal_exec
_hang_up = dockerexec.hang_up


def _port(target: dict) -> int:
    port = target.get("port")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise StreamRefused(f"a port is a number from 1 to 65535, got {port!r}")
    return port
