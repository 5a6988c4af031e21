"""Progress of long work: the line formatter, the drawer (terminal only, throttled, cleared at
the end), and ``env create``/``env commit`` against a real cluster with Docker, through a real
pty (a bar with a percentage and sizes, the line cleared at the end) and piped (not one byte of
progress on stdout or stderr)."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import tarfile
import threading

import pexpect
import pytest

from docker_fixtures import *  # noqa: F401,F403  (fixtures)
from zriver.client.progress import CLEAR, Progress, format_line, pushed_progress
from zriver.protocol import Envelope
from zriver.sizes import format_size

MIB = 1 << 20
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "TERM": "xterm"}
BIG = 40 * MIB


# ---- the formatter ---------------------------------------------------------------------------
@pytest.mark.parametrize("done,total,rate,width,expected", [
    (0, 600 * MIB, None, 80, "saving [------------------------------]   0%  0B/600M"),
    (252 * MIB, 600 * MIB, 31.5 * MIB, 80,
     "saving [############------------------]  42%  252M/600M  31.5M/s"),
    (600 * MIB, 600 * MIB, None, 80, "saving [##############################] 100%  600M/600M"),
    (700 * MIB, 600 * MIB, None, 80, "saving [##############################] 100%  600M/600M"),
    (1536, 3072, None, 40, "saving [########--------]  50%  1.5K/3K"),
    (1536, 3072, None, 24, "saving  50%  1.5K/3K"),
    (1536, 3072, None, 10, "saving  5"),
])
def test_a_known_total_draws_bar_percentage_sizes_and_rate(done, total, rate, width, expected):
    line = format_line("saving", done, total, 3.0, rate, width)
    assert line == expected
    assert len(line) <= width - 1


@pytest.mark.parametrize("done,elapsed,frame,expected", [
    (None, 0.4, 0, "committing | 0.4s"),
    (None, 12.34, 1, "committing / 12s"),
    (None, 75, 2, "committing - 1m15s"),
    (5 * MIB, 2.0, 3, "committing \\ 2.0s  5M"),
])
def test_an_unknown_total_draws_a_spinner_with_elapsed_time(done, elapsed, frame, expected):
    assert format_line("committing", done, None, elapsed, None, 80, frame) == expected


def test_a_row_that_ended_is_its_phase_alone():
    assert format_line("done", None, None, 3.0, None, 80, 2, ended=True) == "done"
    assert format_line("failed: no space", 5, 9, 3.0, None, 10, ended=True) == "failed: n"


def test_rows_are_drawn_one_per_line_and_all_cleared(monkeypatch):
    monkeypatch.setenv("TERM", "xterm")
    out, clock = Terminal(True), Clock()
    progress = Progress(out, clock=clock)
    progress.update("downloading", 0, 4 * MIB, row="n1")
    progress.update("waiting", row="n2")
    line = "n1 downloading [" + "-" * 30 + "]   0%  0B/4M\x1b[K"
    assert out.getvalue().endswith(f"\r{line}\nn2 waiting - 0.0s\x1b[K")
    progress.update("done", row="n2", ended=True)  # redrawn from the first line
    assert out.getvalue().endswith(f"\r\x1b[1A{line}\nn2 done\x1b[K")
    progress.close()
    assert out.getvalue().endswith("\r\x1b[1A\x1b[J")


@pytest.mark.parametrize("width", [1, 2, 5, 20, 33, 57, 80, 200])
def test_no_line_is_wider_than_the_terminal(width):
    for total in (None, 0, 10 * MIB):
        line = format_line("writing to disk", 3 * MIB, total, 9.5, 2e6, width, 7)
        assert len(line) <= max(1, width - 1)


# ---- the drawer ------------------------------------------------------------------------------
class Terminal(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_terminal_is_redrawn_at_most_ten_times_a_second_and_cleared_at_the_end(monkeypatch):
    monkeypatch.setenv("TERM", "xterm")
    out, clock = Terminal(True), Clock()
    progress = Progress(out, clock=clock)
    for i in range(100):  # 100 updates within 0.99 s
        progress.update("uploading", i * MIB, 100 * MIB)
        clock.now += 0.01
    text = out.getvalue()
    assert 9 <= text.count("\r") <= 10
    progress.update("importing", 0, 10)  # a new phase is drawn at once
    assert out.getvalue().count("\r") == text.count("\r") + 1
    assert "importing [" in out.getvalue()
    progress.close()
    assert out.getvalue().endswith(CLEAR)
    progress.update("late", 1, 2)
    assert out.getvalue().endswith(CLEAR)


def test_the_rate_is_measured_over_the_last_seconds(monkeypatch):
    monkeypatch.setenv("TERM", "xterm")
    out, clock = Terminal(True), Clock()
    progress = Progress(out, clock=clock)
    for i in range(11):
        progress.update("uploading", i * 2 * MIB, 100 * MIB)
        clock.now += 0.5
    assert "  4M/s" in out.getvalue().rsplit("\r", 1)[1]


@pytest.mark.parametrize("tty,term", [(False, "xterm"), (True, "dumb")])
def test_nothing_is_written_off_a_terminal(monkeypatch, tty, term):
    monkeypatch.setenv("TERM", term)
    out = Terminal(tty)
    with Progress(out) as progress:
        progress.update("saving", 1, 2)
        progress.tick()
    assert out.getvalue() == ""


def test_pushed_progress_is_read_and_anything_else_ignored():
    assert pushed_progress(Envelope("env.progress", 0, {"rid": 3, "phase": "saving", "done": 5,
                                                        "total": 9})) == ("saving", 5, 9)
    assert pushed_progress(Envelope("env.progress", 0, {"phase": "x", "done": True})) == (
        "x", None, None)
    assert pushed_progress(Envelope("env.progress", 0, {"done": 1})) is None
    assert pushed_progress(Envelope("log.chunk", 0, {"phase": "x"})) is None


# ---- env create / env commit against a real cluster ------------------------------------------
@pytest.fixture
def big_rootfs(docker_client, busybox, tmp_path):
    """A root filesystem tarball: busybox plus ``BIG`` bytes of random data."""
    path = tmp_path / "rootfs.tar"
    source = docker_client.api.create_container(busybox, ["true"])["Id"]
    try:
        with open(path, "wb") as handle:
            for chunk in docker_client.api.export(source):
                handle.write(chunk)
    finally:
        docker_client.api.remove_container(source, force=True)
    noise = tmp_path / "noise.bin"
    noise.write_bytes(os.urandom(BIG))
    with tarfile.open(path, "a") as tar:
        tar.add(noise, arcname="noise.bin")
    noise.unlink()
    return path


def through_pty(cluster, *args: str, expect: str | None = None,
                then=lambda: None) -> str:
    """What ``zriver ARGS`` wrote to its terminal; with ``expect``, ``then()`` runs once that
    pattern was seen (a held-up phase is released)."""
    child = pexpect.spawn(sys.executable, ["-m", "zriver", *cluster.cli_flags(), *args],
                          env=ENV, timeout=60, dimensions=(24, 100), encoding="utf-8")
    text = ""
    try:
        if expect is not None:
            try:
                child.expect(expect)
            finally:
                then()
            text = child.before + child.after
        child.expect(pexpect.EOF)
    finally:
        child.close()
    text += child.before
    assert child.exitstatus == 0, text
    return text


class Gate:
    """Holds a generator (a Docker save, a download) after its first item until opened."""

    def __init__(self) -> None:
        self.opened = threading.Event()

    def hold(self, items):
        for i, item in enumerate(items):
            yield item
            if i == 0:
                assert self.opened.wait(30), "the gate was never opened"

    def open(self) -> None:
        self.opened.set()


def piped(cluster, *args: str) -> subprocess.CompletedProcess:
    ran = subprocess.run([sys.executable, "-m", "zriver", *cluster.cli_flags(), *args],
                         capture_output=True, env=ENV, timeout=60)
    assert ran.returncode == 0, ran.stderr
    return ran


BAR = re.compile(r"\r(\w[\w ]*) \[[#-]+\] +(\d+)%  ([\d.]+[BKMG])/([\d.]+[BKMG])")


def bars(text: str) -> dict[str, list[tuple[int, str, str]]]:
    found: dict[str, list[tuple[int, str, str]]] = {}
    for phase, percent, done, total in BAR.findall(text):
        found.setdefault(phase, []).append((int(percent), done, total))
    return found


def hold_saves(cluster, gate: Gate) -> None:
    """The host's ``docker save`` stops after its first chunk until ``gate`` opens."""
    [envs] = [e for e in cluster.host.extensions if getattr(e, "name", "") == "envs"]
    api = envs.docker().client.api
    real = api.get_image
    api.get_image = lambda *a, **k: gate.hold(real(*a, **k))


SAVING = r"saving \[[#-]+\] +\d+%  [\d.]+[BKM]/[\d.]+M"


@pytest.mark.docker
def test_env_create_and_commit_on_a_terminal_show_bars_and_clear_the_line(
        dcluster, docker_client, big_rootfs):
    cluster = dcluster()
    gate = Gate()
    hold_saves(cluster, gate)
    text = through_pty(cluster, "env", "create", "big", "--from-tar", str(big_rootfs),
                       expect=SAVING, then=gate.open)
    drawn = bars(text)
    assert "uploading" in drawn, text[-2000:]
    assert {total for _, _, total in drawn["uploading"]} == {
        format_size(big_rootfs.stat().st_size)}
    assert "importing" in drawn and "saving" in drawn, sorted(drawn)
    last = text.rindex(CLEAR)
    assert text[last + len(CLEAR):].startswith("env big created from tarball"), text[-500:]
    assert "\x1b" not in text[last + len(CLEAR):]

    gate = Gate()
    hold_saves(cluster, gate)
    text = through_pty(cluster, "env", "commit", "big", "-m", "again", expect=SAVING,
                       then=gate.open)
    assert re.search(r"\rcommitting [|/\\-] \d", text), text[:500]
    assert re.search(r"saving \[[#-]+\] +\d+%  [\d.]+[BKM]/41.9M", text), repr(text)
    last = text.rindex(CLEAR)
    assert re.fullmatch(r"env big version [0-9a-f]{12} \([\d.]+M, sha256 [0-9a-f]{16}\) "
                        r"published\r\n", text[last + len(CLEAR):]), text[-500:]


@pytest.mark.docker
def test_env_create_and_commit_piped_print_no_progress_at_all(dcluster, big_rootfs):
    cluster = dcluster()
    created = piped(cluster, "env", "create", "big", "--from-tar", str(big_rootfs))
    assert created.stderr == b""
    assert re.fullmatch(rb"env big created from tarball \(container [0-9a-f]{12}\); version "
                        rb"[0-9a-f]{12} \([\d.]+M\) published\n"
                        rb"next: zriver env shell big   \(then zriver env commit big\)\n",
                        created.stdout), created.stdout
    committed = piped(cluster, "env", "commit", "big")
    assert committed.stderr == b""
    assert re.fullmatch(rb"env big version [0-9a-f]{12} \([\d.]+M, sha256 [0-9a-f]{16}\) "
                        rb"published\n", committed.stdout), committed.stdout


SYNC_ROW = re.compile(r"(n[12]) (\w[\w ]*?)(?: \[[#-]+\] +(\d+)%  ([\d.]+[BKMG])/([\d.]+[BKMG])"
                      r"| [|/\\-] [\d.]+[sm])")


@pytest.mark.docker
def test_env_sync_shows_a_line_per_node_then_what_each_has(dcluster, big_rootfs):
    cluster = dcluster({"n1": {"cores": 2}, "n2": {"cores": 2}})
    created = piped(cluster, "env", "create", "big", "--from-tar", str(big_rootfs))
    version = created.stdout.split(b"; version ")[1].split()[0].decode()
    envsync = cluster.runners["n1"].backends["docker"].envsync
    gate, real_fetch = Gate(), envsync._fetch

    def held_fetch(*args):  # n1's download waits until its bar was seen
        assert gate.opened.wait(30)
        return real_fetch(*args)

    envsync._fetch = held_fetch
    text = through_pty(cluster, "env", "sync", "big", expect=r"n1 downloading \[[#-]+\] +\d+%",
                       then=gate.open)
    rows = SYNC_ROW.findall(text)
    assert {node for node, *_ in rows} == {"n1", "n2"}, repr(text)
    downloads = [(node, total) for node, phase, _, _, total in rows if phase == "downloading"]
    assert downloads and {total for _, total in downloads} == {"41.9M"}, repr(text)
    assert "\r\x1b[1A\x1b[J" in text  # both lines cleared
    last = text.rindex("\x1b[J")
    assert text[last + 3:] == (f"n1: has env big version {version}\r\n"
                               f"n2: has env big version {version}\r\n")
    for node in ("n1", "n2"):
        assert list(cluster.runners[node].backends["docker"].envsync.loaded) == [
            ("big", version, "host")]
    again = piped(cluster, "env", "sync", "big", "--node", "n2")
    assert again.stderr == b"" and again.stdout == f"n2: has env big version {version}\n".encode()


SUBMIT_SYNC = r"env big \S+ on n1: downloading \[[#-]+\] +\d+%  [\d.]+[BKM]/41\.9M"


@pytest.mark.docker
def test_submit_wait_draws_the_env_sync_its_task_waits_for(dcluster, big_rootfs):
    """A lone container task whose env is not on its node yet: ``submit --wait`` on a
    terminal draws that node's download, clears it, and ends with the task's status; piped,
    stderr stays empty."""
    cluster = dcluster({"n1": {"cores": 2}})
    piped(cluster, "env", "create", "big", "--from-tar", str(big_rootfs))
    envsync = cluster.runners["n1"].backends["docker"].envsync
    gate, real_fetch = Gate(), envsync._fetch

    def held_fetch(*args):  # the download waits until its bar was seen
        assert gate.opened.wait(30)
        return real_fetch(*args)

    envsync._fetch = held_fetch
    text = through_pty(cluster, "submit", "--wait", "--container", "big", "--", "sh", "-c",
                       "test -f /noise.bin && echo ran", expect=SUBMIT_SYNC, then=gate.open)
    assert re.search(SUBMIT_SYNC, text), repr(text)
    assert text.rstrip().splitlines()[0].strip().isdigit(), repr(text)  # the id, as piped
    assert CLEAR in text[text.rindex("downloading"):], repr(text)  # the line was cleared
    [task_id] = [int(line) for line in text.split() if line.strip().isdigit()][:1]
    assert cluster.client().call("task.get", {"id": task_id})["task"]["state"] == "completed"
    again = piped(cluster, "submit", "--wait", "--container", "big", "--", "true")
    assert again.stderr == b"" and again.stdout.strip().isdigit()
