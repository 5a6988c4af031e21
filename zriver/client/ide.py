"""``zriver connect ID --ide``: a full-screen terminal IDE on a running container task.

Three panes (prompt_toolkit), everything through the host's SSH relay on one connection as
user ``ID``, one exec session per action, nothing installed in the container:

* the file tree (left): the entries of a directory (``ls -1Ap DIR``: directories end in ``/``),
  ``../`` first; Up/Down choose, Enter opens a directory or a file;
* the editor (right): the file's text (``cat FILE``); Ctrl-S saves it back (``cat > FILE``,
  the text fed on stdin: never on a command line);
* the shell pane (bottom): a command line run in the container in the tree's directory
  (``sh -c``), its output and exit status shown above the line; ``cd DIR`` moves the tree.

Tab and Shift-Tab move between the panes, Ctrl-Q quits (twice when the editor has unsaved
changes). A file over ``MAX_FILE`` bytes, or not UTF-8 text, is not opened (the status line
says why). ``RemoteFiles`` is the container side, usable without the screen.
"""

from __future__ import annotations

import asyncio
import posixpath
import shlex
from dataclasses import dataclass

import asyncssh
from prompt_toolkit.application import Application
from prompt_toolkit.document import Document
from prompt_toolkit.formatted_text import StyleAndTextTuples
from prompt_toolkit.key_binding import KeyBindings
from prompt_toolkit.layout import HSplit, Layout, VSplit, Window
from prompt_toolkit.layout.controls import FormattedTextControl
from prompt_toolkit.layout.dimension import Dimension
from prompt_toolkit.styles import Style
from prompt_toolkit.widgets import Frame, TextArea

from zriver.client import sshclient as sc
from zriver.sizes import format_size

MAX_FILE = 4 << 20
OUTPUT_LINES = 2000
STYLE = Style.from_dict({"selected": "reverse", "dir": "ansiblue bold", "status": "reverse",
                         "frame.label": "bold"})


@dataclass
class Ran:
    """What one exec session gave back."""

    exit: int | None
    stdout: bytes
    stderr: bytes

    def error(self) -> str:
        text = self.stderr.decode(errors="replace").strip().splitlines()
        return text[-1] if text else f"exit status {self.exit}"


class RemoteFiles:
    """The container's files and shell, through ``conn`` (the relay, logged in as the task)."""

    def __init__(self, conn: asyncssh.SSHClientConnection) -> None:
        self.conn = conn

    async def run(self, argv: list[str], stdin: bytes | None = None) -> Ran:
        done = await self.conn.run(shlex.join(argv), input=stdin, encoding=None)
        return Ran(done.exit_status, done.stdout or b"", done.stderr or b"")

    async def cwd(self) -> str:
        ran = await self.run(["pwd"])
        return ran.stdout.decode(errors="replace").strip() or "/"

    async def listdir(self, path: str) -> list[str]:
        """The entries of ``path``, directories first (each ending in ``/``), then files."""
        ran = await self.run(["ls", "-1Ap", path])
        if ran.exit != 0:
            raise OSError(ran.error())
        names = [n for n in ran.stdout.decode(errors="replace").splitlines() if n]
        return sorted(names, key=lambda n: (not n.endswith("/"), n))

    async def read(self, path: str) -> str:
        ran = await self.run(["sh", "-c", f'[ "$(wc -c < "$1")" -le {MAX_FILE} ] && cat "$1"',
                              "sh", path])
        if ran.exit != 0:
            raise OSError(ran.error() if ran.stderr
                          else f"over {format_size(MAX_FILE)}: not opened")
        try:
            return ran.stdout.decode()
        except UnicodeDecodeError:
            raise OSError("not UTF-8 text: not opened") from None

    async def write(self, path: str, text: str) -> None:
        ran = await self.run(["sh", "-c", 'cat > "$1"', "sh", path], stdin=text.encode())
        if ran.exit != 0:
            raise OSError(ran.error())

    async def shell(self, line: str, cwd: str) -> Ran:
        """``line`` run by ``sh`` in ``cwd``, stderr folded into stdout."""
        return await self.run(["sh", "-c", f'cd "$1" && {{ {line}\n}} 2>&1', "sh", cwd])

    async def resolve(self, cwd: str, target: str) -> str:
        ran = await self.run(["sh", "-c", 'cd "$1" && cd "$2" && pwd', "sh", cwd, target])
        if ran.exit != 0:
            raise OSError(ran.error())
        return ran.stdout.decode(errors="replace").strip()


class FileTree:
    """The left pane: a directory's entries and the chosen one."""

    def __init__(self, ide: "Ide") -> None:
        self.ide = ide
        self.dir = "/"
        self.entries: list[str] = []
        self.index = 0
        self.control = FormattedTextControl(self._text, focusable=True, show_cursor=False,
                                            key_bindings=self._keys())
        self.window = Window(self.control, width=Dimension(preferred=32, max=48))

    def _text(self) -> StyleAndTextTuples:
        lines: StyleAndTextTuples = []
        for i, name in enumerate(self.entries):
            style = "class:dir" if name.endswith("/") else ""
            if i == self.index:
                lines.append(("[SetCursorPosition]", ""))
                style += " class:selected"
            lines.append((style, name + "\n"))
        return lines

    def _keys(self) -> KeyBindings:
        keys = KeyBindings()

        @keys.add("up")
        def _(event) -> None:
            self.index = max(0, self.index - 1)

        @keys.add("down")
        def _(event) -> None:
            self.index = min(len(self.entries) - 1, self.index + 1)

        @keys.add("enter")
        def _(event) -> None:
            if self.entries:
                self.ide.spawn(self.open(self.entries[self.index]))

        return keys

    async def show(self, path: str) -> None:
        entries = await self.ide.files.listdir(path)
        self.dir = path
        self.entries = (["../"] if path != "/" else []) + entries
        self.index = 0
        self.ide.say(path)

    async def open(self, name: str) -> None:
        if name == "../":
            await self.show(posixpath.dirname(self.dir.rstrip("/")) or "/")
        elif name.endswith("/"):
            await self.show(posixpath.join(self.dir, name.rstrip("/")))
        else:
            await self.ide.open_file(posixpath.join(self.dir, name))


class Ide:
    """The application: panes, keys, and the remote actions behind them."""

    def __init__(self, files: RemoteFiles, task_id: int | str) -> None:
        self.files = files
        self.task_id = task_id
        self.tree = FileTree(self)
        self.path: str | None = None
        self.saved_text = ""
        self.status = ""
        self.quit_armed = False
        self.pending: set[asyncio.Task] = set()
        self.editor = TextArea(scrollbar=True, line_numbers=True)
        self.output = TextArea(read_only=True, focusable=False,
                               height=Dimension(min=3, preferred=8, max=12))
        self.line = TextArea(height=1, multiline=False, prompt=self._prompt,
                             accept_handler=self._accept)
        self.app = Application(layout=self._layout(), key_bindings=self._keys(), style=STYLE,
                               full_screen=True, mouse_support=False)

    # ---- layout and keys ---------------------------------------------------------------
    def _layout(self) -> Layout:
        status = Window(FormattedTextControl(lambda: [("class:status", self._status_line())]),
                        height=1)
        body = VSplit([Frame(self.tree.window, title=lambda: self.tree.dir),
                       Frame(self.editor, title=self._editor_title)])
        shell = Frame(HSplit([self.output, self.line]), title="shell")
        return Layout(HSplit([body, shell, status]), focused_element=self.tree.window)

    def _keys(self) -> KeyBindings:
        keys = KeyBindings()
        keys.add("tab")(lambda event: event.app.layout.focus_next())
        keys.add("s-tab")(lambda event: event.app.layout.focus_previous())
        keys.add("c-s")(lambda event: self.spawn(self.save()))
        keys.add("c-q")(lambda event: self.quit())
        return keys

    def _prompt(self) -> str:
        return f"{self.tree.dir} $ "

    def _editor_title(self) -> str:
        if self.path is None:
            return "editor (Enter on a file opens it)"
        return self.path + (" [modified]" if self.modified else "")

    def _status_line(self) -> str:
        return (f" task {self.task_id} │ {self.status} │ Tab: next pane · Ctrl-S: save · "
                f"Ctrl-Q: quit")

    @property
    def modified(self) -> bool:
        return self.path is not None and self.editor.text != self.saved_text

    # ---- actions -----------------------------------------------------------------------
    def say(self, text: str) -> None:
        self.status = text
        self.app.invalidate()

    def spawn(self, coro) -> None:
        """Run a remote action without blocking the screen; its failure goes to the status."""
        async def guarded() -> None:
            try:
                await coro
            except (OSError, asyncssh.Error) as exc:
                self.say(f"error: {exc}")
            except Exception as exc:  # a bug must not take the person's unsaved text with it
                self.say(f"internal error: {exc!r}")
            self.app.invalidate()

        task = asyncio.ensure_future(guarded())
        self.pending.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self.pending.discard)

    async def open_file(self, path: str) -> None:
        if self.modified:
            self.say(f"{self.path} has unsaved changes: Ctrl-S first")
            return
        text = await self.files.read(path)
        self.path, self.saved_text = path, text
        self.editor.document = Document(text, 0)
        self.app.layout.focus(self.editor)
        self.say(f"opened {path}")

    async def save(self) -> None:
        if self.path is None:
            self.say("no file open")
            return
        text = self.editor.text
        await self.files.write(self.path, text)
        self.saved_text = text
        self.say(f"saved {self.path} ({len(text.encode())} bytes)")

    def quit(self) -> None:
        if self.modified and not self.quit_armed:
            self.quit_armed = True
            self.say(f"{self.path} has unsaved changes: Ctrl-Q again quits without saving")
            return
        self.app.exit(result=0)

    def _accept(self, buffer) -> bool:
        line = buffer.text.strip()
        if line:
            self.spawn(self.run_line(line))
        return False  # the line is cleared

    async def run_line(self, line: str) -> None:
        words = line.split(maxsplit=1)
        if words[0] == "cd":
            await self.tree.show(await self.files.resolve(self.tree.dir, words[1] if
                                                          len(words) > 1 else "/"))
            return
        self.append_output(f"$ {line}\n")
        ran = await self.files.shell(line, self.tree.dir)
        self.append_output(ran.stdout.decode(errors="replace") + f"[exit {ran.exit}]\n")
        await self.tree.show(self.tree.dir)  # the command may have made or removed files

    def append_output(self, text: str) -> None:
        lines = (self.output.text + text).splitlines()[-OUTPUT_LINES:]
        joined = "\n".join(lines) + "\n"
        self.output.buffer.set_document(Document(joined, len(joined)), bypass_readonly=True)

    async def run(self) -> int:
        await self.tree.show(await self.files.cwd())
        return await self.app.run_async()


def run_ide(relay: sc.Relay, task_id: int | str, keys: list):
    """The ``--ide`` of ``zriver connect``: a coroutine giving 0 when the person quits."""
    return _run(relay, task_id, keys)


async def _run(relay: sc.Relay, task_id: int | str, keys: list) -> int:
    async with await sc.connect_relay(relay, str(task_id), keys) as conn:
        files = RemoteFiles(conn)
        probe = await files.run(["true"])
        if probe.exit != 0:  # the relay refused the session: its reason is on stderr
            raise sc.SshRefused(probe.error())
        return await Ide(files, task_id).run()
