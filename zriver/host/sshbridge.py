"""SSH channels of the relay bridged to host<->runner byte streams (``zriver.host.relay``).

A bridge joins one asyncssh channel to one ``Stream`` of ``host.streams``
(``zriver.host.streamhub``) and moves bytes both ways, untouched (the relay's server has no
encoding):

* SSH -> stream: what the client sends is queued and written with ``await stream.write``
  (which waits while the runner's credit is used up); once ``HIGH_WATER`` bytes wait, the
  SSH channel stops reading (``pause_reading``: the client's window closes) until the queue
  is down to ``LOW_WATER``. The client's EOF becomes ``stream.write_eof()`` after the queue.
* stream -> SSH: each chunk ``stream.read()`` returns is written to the channel; while
  asyncssh's send buffer is over its limit (``pause_writing``) nothing more is read, so the
  stream's credit stops going back and the runner stalls that stream only.

Only that channel and that stream wait: every other channel of the relay flows on.

Counting: each bridge adds to its relay's ``Traffic`` (``relay.traffic``, read by
``/metrics``): streams opened and open now, bytes in (client -> runner) and out.

Lifetime: a bridge counts as one open stream to its task (``host.vps.touch(task, +1)`` when
it begins, ``-1`` exactly once when it ends). The channel closing closes the stream
(``stream.close``), and the stream ending (its CLOSE) ends the channel: a TCP channel is
closed, a session exits with the stream's exit code. Nothing stays half-open.

Kinds: ``TcpBridge`` (``direct-tcpip`` to a TCP port), ``UdpBridge`` (``direct-tcpip`` to
``udp-ID``: datagrams framed on the channel as a 2-byte big-endian length + the datagram,
both ways), ``SessionBridge`` (a session channel: shell or command, PTY, window changes,
signals, exit status, stderr apart when there is no PTY).
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from typing import Any, Awaitable, Callable

import asyncssh
import structlog

from zriver.errors import ZriverError

log = structlog.get_logger("zriver.relay")

HIGH_WATER = 1 << 20
"""Bytes from the SSH client queued for a stream before that channel stops reading."""
LOW_WATER = HIGH_WATER // 4
"""The channel reads again once its queue is down to this."""
MAX_DATAGRAM = 0xFFFF
"""The largest datagram the 2-byte framing carries."""
NO_EXIT_CODE = 255
"""A session's exit status when the stream ended without one (the runner went away)."""


class Traffic:
    """What a relay's bridges moved since the host started: ``opened`` streams, ``open`` now,
    ``bytes_in`` (SSH client -> runner) and ``bytes_out`` (runner -> SSH client)."""

    def __init__(self) -> None:
        self.opened = 0
        self.open = 0
        self.bytes_in = 0
        self.bytes_out = 0


class Bridge:
    """One SSH channel bridged to one stream (see the module docstring).

    ``relay`` gives ``host`` (for ``vps.touch``) and ``bridges`` (the set of live bridges,
    closed when the relay stops). Subclasses mix in the asyncssh session class whose
    callbacks these methods implement, and define ``_outputs`` and ``_finish``."""

    def __init__(self, relay: Any, owner: set) -> None:
        self.relay = relay
        self.owner = owner
        """The set of bridges of this bridge's SSH connection (closed with it)."""
        self.chan: Any = None
        self.stream: Any = None
        self.task_id: int | None = None
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._client_eof = False
        self._arrived = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._reading_paused = False
        self._job: asyncio.Future | None = None
        self._lost = False
        self._released = True
        owner.add(self)

    # ---- asyncssh callbacks ------------------------------------------------------------
    def connection_made(self, chan: Any) -> None:
        self.chan = chan
        self._start()

    def data_received(self, data: bytes, datatype: Any) -> None:
        self._enqueue(data)

    def eof_received(self) -> bool:
        """The client sends no more; keep the channel open for what comes back."""
        self._client_eof = True
        self._arrived.set()
        return True

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        """The SSH channel is gone: abort the stream (if open) and stop bridging."""
        self._lost = True
        self.close("the SSH channel was closed")

    # ---- the bridge --------------------------------------------------------------------
    def begin(self, task_id: int, stream: Any) -> None:
        """Bridge ``stream`` (open, to task ``task_id``) until either side ends; counts as
        one stream to the task meanwhile."""
        self.task_id, self.stream = task_id, stream
        self.relay.host.vps.touch(task_id, +1)
        self.relay.traffic.opened += 1
        self.relay.traffic.open += 1
        self._released = False
        if self._lost:  # the channel went while the stream was opening
            self.close("the SSH channel was closed")
            return
        self._start()

    def _start(self) -> None:
        """Bridge once both the channel and the stream are there (a forward's stream opens
        before its channel is confirmed; a session's after)."""
        if self.chan is not None and self.stream is not None and self._job is None:
            self._job = asyncio.ensure_future(self._run())

    def close(self, reason: str | None = None) -> None:
        """Abort: close the stream (with ``reason``) and the channel; idempotent."""
        if self.stream is not None:
            self.stream.close(reason)
        if self._job is not None and not self._job.done():
            self._job.cancel()
        if self.chan is not None and not self._lost:
            self.chan.close()
        self._release()

    def _release(self) -> None:
        self.owner.discard(self)
        if not self._released:
            self._released = True
            self.relay.host.vps.touch(self.task_id, -1)
            self.relay.traffic.open -= 1

    async def _run(self) -> None:
        jobs = [asyncio.ensure_future(self._upstream())]
        outputs = [asyncio.ensure_future(self._downstream(read, write))
                   for read, write in self._outputs()]
        jobs += outputs
        try:
            await asyncio.gather(*outputs)
            result = await self.stream.wait_closed()
        except (ZriverError, OSError) as exc:
            result = {"exit": None, "error": str(exc)}
        finally:
            for job in jobs:
                job.cancel()
        log.info("relay.stream_ended", task=self.task_id, kind=type(self).__name__,
                 exit=(result or {}).get("exit"), error=(result or {}).get("error"))
        if not self._lost:
            try:
                self._finish(result or {})
            except OSError:
                pass  # the channel closed meanwhile
        self.stream.close()
        self._release()

    async def _upstream(self) -> None:
        """Client -> stream, in order, then the client's EOF."""
        try:
            while True:
                while not self._queue and not self._client_eof:
                    self._arrived.clear()
                    await self._arrived.wait()
                if not self._queue:
                    self.stream.write_eof()
                    return
                data = self._queue.popleft()
                await self.stream.write(data)
                self.relay.traffic.bytes_in += len(data)
                self._queued -= len(data)
                if self._reading_paused and self._queued <= LOW_WATER and not self._lost:
                    self._reading_paused = False
                    self.chan.resume_reading()
        except (ZriverError, OSError) as exc:  # the stream failed: _run ends the channel
            log.info("relay.upstream_failed", task=self.task_id, error=str(exc))

    async def _downstream(self, read: Callable[[], Awaitable[bytes]],
                          write: Callable[[bytes], None]) -> None:
        """Stream -> client until the stream's EOF, never ahead of the channel's buffer."""
        while data := await read():
            await self._writable.wait()
            if self._lost:
                return
            write(data)
            self.relay.traffic.bytes_out += len(data)
        self._ended_output()

    def _enqueue(self, data: bytes) -> None:
        self._queue.append(data)
        self._queued += len(data)
        self._arrived.set()
        if self._queued >= HIGH_WATER and not self._reading_paused and self.chan is not None:
            self._reading_paused = True
            self.chan.pause_reading()

    # ---- what differs per kind ---------------------------------------------------------
    def _outputs(self) -> list[tuple[Callable[[], Awaitable[bytes]], Callable[[bytes], None]]]:
        return [(self.stream.read, self.chan.write)]

    def _ended_output(self) -> None:
        """The stream's output reached its EOF."""

    def _finish(self, result: dict) -> None:
        """The stream ended with ``result`` (its CLOSE): end the channel."""
        self.chan.close()


class TcpBridge(Bridge, asyncssh.SSHTCPSession):
    """``direct-tcpip`` to a TCP port in a container: EOF passes both ways (half-close)."""

    def _ended_output(self) -> None:
        if not self._lost:
            self.chan.write_eof()


class UdpBridge(TcpBridge):
    """``direct-tcpip`` to ``udp-ID``: each frame on the channel (2-byte big-endian length,
    then the datagram) is one datagram to the container's port, and each datagram back is
    framed the same way. A partial frame waits for the rest; an empty datagram is dropped
    (on the stream it would read as the end)."""

    def __init__(self, relay: Any, owner: set) -> None:
        super().__init__(relay, owner)
        self._partial = bytearray()

    def data_received(self, data: bytes, datatype: Any) -> None:
        self._partial += data
        while len(self._partial) >= 2:
            size = struct.unpack_from(">H", self._partial)[0]
            if len(self._partial) < 2 + size:
                break
            if size:  # an empty datagram cannot be told from the stream's EOF: dropped
                self._enqueue(bytes(self._partial[2:2 + size]))
            del self._partial[:2 + size]

    def _outputs(self):
        return [(self.stream.read, self._write_datagram)]

    def _write_datagram(self, datagram: bytes) -> None:
        if len(datagram) <= MAX_DATAGRAM:
            self.chan.write(struct.pack(">H", len(datagram)) + datagram)


class SessionBridge(Bridge, asyncssh.SSHServerSession):
    """A session channel (``ssh 42@HOST``): a shell or one command in the task's container.

    ``opener(bridge)`` is called once the client asked for a shell or a command; it opens the
    stream (an ``exec`` target built with ``target()``) and calls ``begin``, or ``refuse``.
    With a PTY the client's EOF is not passed on (it would hang up the terminal; the session
    ends when the shell does); without one, stderr comes back apart."""

    def __init__(self, relay: Any, owner: set, opener: Callable[["SessionBridge"], Any]) -> None:
        super().__init__(relay, owner)
        self.opener = opener
        self.tty = False
        self.term = "xterm"
        self.size = (80, 24)
        self.command: str | None = None
        self._opening: asyncio.Future | None = None

    # ---- session requests --------------------------------------------------------------
    def pty_requested(self, term_type: str, term_size: tuple, term_modes: Any) -> bool:
        self.tty = True
        self.term = term_type or "xterm"
        self.size = (term_size[0] or 80, term_size[1] or 24)
        return True

    def shell_requested(self) -> bool:
        return True

    def exec_requested(self, command: str) -> bool:
        self.command = command
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        return False  # no SFTP through the exec bridge (a VPS's own sshd has it)

    def session_started(self) -> None:
        self._opening = asyncio.ensure_future(self.opener(self))

    def terminal_size_changed(self, width: int, height: int, pixwidth: int,
                              pixheight: int) -> None:
        self.size = (width or self.size[0], height or self.size[1])
        if self.stream is not None:
            self.stream.resize(*self.size)

    def signal_received(self, signal: str) -> None:
        if self.stream is not None:
            self.stream.signal(signal)

    def break_received(self, msec: int) -> bool:
        if self.stream is not None:
            self.stream.signal("INT")
        return True

    def eof_received(self) -> bool:
        if not self.tty:
            super().eof_received()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self._opening is not None and not self._opening.done():
            self._opening.cancel()
        super().connection_lost(exc)

    # ---- the stream --------------------------------------------------------------------
    def target(self, task_id: int) -> dict[str, Any]:
        """The ``exec`` target of this session (``command`` ``None``: a login shell)."""
        command = ["sh", "-c", self.command] if self.command is not None else None
        return {"kind": "exec", "task": task_id, "command": command, "tty": self.tty,
                "term": self.term, "cols": self.size[0], "rows": self.size[1],
                "env": self._environment()}

    def _environment(self) -> dict[str, str]:
        """The locale variables the client sent (as OpenSSH's default ``AcceptEnv``)."""
        env = self.chan.get_environment() if self.chan is not None else {}
        return {k: v for k, v in env.items() if k == "LANG" or k.startswith("LC_")}

    def refuse(self, reason: str) -> None:
        """End the session at once: ``reason`` on stderr, exit status 1."""
        if self._lost:
            return
        try:
            self.chan.write_stderr(self._line(reason))
            self.chan.exit(1)
        except OSError:
            pass
        self._release()

    def _line(self, text: str) -> bytes:
        return f"zriver: {text}{chr(13) if self.tty else ''}\n".encode()

    def _outputs(self):
        outputs = [(self.stream.read, self.chan.write)]
        if not self.tty:
            outputs.append((self.stream.read_stderr, self.chan.write_stderr))
        return outputs

    def _finish(self, result: dict) -> None:
        code, error = result.get("exit"), result.get("error")
        if error:
            self.chan.write_stderr(self._line(error))
        self.chan.exit(code & 0xFF if isinstance(code, int) else NO_EXIT_CODE)
