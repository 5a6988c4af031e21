"""Bridging this terminal to a remote session: what ``zriver ssh`` and ``zriver connect`` share.

``run_session(conn, command, tty)`` opens one SSH session channel on ``conn`` (the relay for
``connect``, a VPS's sshd for ``ssh``) and returns the remote exit status as this process's:

* **interactive** (``tty``): a PTY of this terminal's size is asked for, the local terminal is
  put in raw mode (every key, Ctrl-C included, goes to the remote side as a byte, and the
  remote PTY turns it into a signal), SIGWINCH becomes ``change_terminal_size``, and the
  terminal is restored however the session ends;
* **a command** (not ``tty``): stdout and stderr stay separate, this process's stdin is sent
  (EOF included; none with ``stdin=False``, ``-n``), and Ctrl-C sends SIGINT to the remote command (a second Ctrl-C gives up).

Bytes pass through untouched (``encoding=None``). The exit status: the remote one; 128 + N
for a remote signal N; 255 when the session ended with neither (a lost connection), as
OpenSSH does.

``remote_command(argv)`` turns the words after ``--`` into the command string: one word is
sent as it is (``zriver ssh 5 'ls | wc -l'`` is a shell line), several are quoted so that they
arrive as the same words (``-- sh -c 'exit 7'`` exits 7).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import stat
import sys
import termios
import tty as ttymod
from typing import Iterator

import asyncssh

CHUNK = 64 * 1024
LOST = 255
SIGNALS = {name: int(getattr(signal, f"SIG{name}")) for name in
           ("HUP", "INT", "QUIT", "KILL", "TERM", "PIPE", "ALRM", "USR1", "USR2", "ABRT", "SEGV")}


def remote_command(argv: list[str]) -> str | None:
    """The words after ``--`` (the ``--`` itself dropped) as one command line; None: a shell."""
    words = argv[1:] if argv[:1] == ["--"] else list(argv)
    if not words:
        return None
    return words[0] if len(words) == 1 else shlex.join(words)


def want_tty(command: str | None, force: bool | None = None) -> bool:
    """A PTY when asked (``-t``/``-T``), else for a shell on a terminal (as OpenSSH decides)."""
    if force is not None:
        return force
    return command is None and sys.stdin.isatty()


def terminal_size(fd: int = 1) -> tuple[int, int]:
    """(cols, rows) of the terminal on ``fd`` (or stdin), 80x24 when there is none."""
    for candidate in (fd, 0):
        try:
            size = os.get_terminal_size(candidate)
            return size.columns, size.lines
        except OSError:
            continue
    return 80, 24


def term_type() -> str:
    return os.environ.get("TERM") or "xterm-256color"


@contextlib.contextmanager
def raw_mode(fd: int) -> Iterator[None]:
    """The terminal on ``fd`` in raw mode for the block (nothing when it is not a terminal)."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    ttymod.setraw(fd, termios.TCSANOW)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def exit_code(process: asyncssh.SSHClientProcess) -> int:
    """The remote exit status as a local one (see the module docstring)."""
    status = process.exit_status
    if status is not None and status >= 0:
        return status
    signal_info = process.exit_signal
    if signal_info:
        return 128 + SIGNALS.get(str(signal_info[0]).upper(), 0)
    return LOST


async def pump_out(stream: asyncssh.SSHReader, fd: int) -> None:
    while True:
        data = await stream.read(CHUNK)
        if not data:
            return
        write_all(fd, data)


async def pump_in(process: asyncssh.SSHClientProcess, fd: int, send_eof: bool) -> None:
    """This process's ``fd`` to the remote stdin until EOF (then EOF unless ``send_eof`` is
    off: closing a PTY's input hangs it up). A terminal, a pipe or a socket is waited on with
    the loop (never by a thread that could stay blocked on the terminal after the session);
    what the loop cannot wait on (a file, /dev/null) is read as it is."""
    loop = asyncio.get_running_loop()
    try:
        pollable = fd >= 0 and not stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:  # no stdin at all
        pollable, fd = False, -1
    while True:
        if pollable:
            try:
                data = await _read_when_ready(loop, fd)
            except PermissionError:  # epoll refuses it (/dev/null)
                pollable = False
                continue
        else:
            data = os.read(fd, CHUNK) if fd >= 0 else b""
        if not data:
            break
        process.stdin.write(data)
        await process.stdin.drain()
    if send_eof:
        process.stdin.write_eof()


async def _read_when_ready(loop: asyncio.AbstractEventLoop, fd: int) -> bytes:
    ready = loop.create_future()
    loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_reader(fd)
    try:
        return os.read(fd, CHUNK)
    except OSError:
        return b""


async def run_session(conn: asyncssh.SSHClientConnection, command: str | None, tty: bool,
                      env: dict[str, str] | None = None, stdin: bool = True) -> int:
    """One session on ``conn`` bridged to this terminal; returns its exit status. ``stdin``
    off (``-n``): nothing is read from this process's stdin, the remote side gets EOF."""
    cols, rows = terminal_size()
    options = dict(term_type=term_type(), term_size=(cols, rows)) if tty else {}
    process = await conn.create_process(command, encoding=None, request_pty=tty,
                                        env=env or (), **options)
    loop = asyncio.get_running_loop()
    interrupts = 0

    def on_interrupt() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1:
            process.send_signal("INT")
        else:
            process.close()

    def on_resize() -> None:
        process.change_terminal_size(*terminal_size())

    handlers = {signal.SIGWINCH: on_resize} if tty else {signal.SIGINT: on_interrupt}
    feeding: asyncio.Task | None = None
    with raw_mode(0) if tty else contextlib.nullcontext(), _signals(loop, handlers):
        try:
            feeding = asyncio.ensure_future(pump_in(process, 0 if stdin else -1,
                                                    send_eof=not tty))
            await asyncio.gather(pump_out(process.stdout, 1), pump_out(process.stderr, 2))
            await process.wait_closed()
        finally:
            if feeding is not None:
                feeding.cancel()
                with contextlib.suppress(BaseException):
                    await feeding
            process.close()
    return 130 if interrupts > 1 else exit_code(process)


@contextlib.contextmanager
def _signals(loop: asyncio.AbstractEventLoop, handlers: dict) -> Iterator[None]:
    """Signal handlers on ``loop`` for the block (the previous ones back afterwards)."""
    installed = []
    for signum, handler in handlers.items():
        try:
            loop.add_signal_handler(signum, handler)
            installed.append(signum)
        except (RuntimeError, ValueError):  # not the main thread
            pass
    try:
        yield
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
