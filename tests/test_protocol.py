"""Envelope encoding and validation, sizes and durations, task spec checks: pure tables."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest

import zriver
from zriver.errors import BadRequest, BadVersion, InvalidArgument, TooLarge, error_from_reply, NotFound
from zriver.protocol import arg, decode, encode, encode_error, encode_ok
from zriver.sizes import format_duration, format_size, parse_duration, parse_size
from zriver.spec import TaskSpec


def test_round_trip():
    env = decode(encode("task.get", 3, {"id": 7}))
    assert (env.op, env.rid, env.body, env.is_reply) == ("task.get", 3, {"id": 7}, False)
    ok = decode(encode_ok(3, {"x": b"\x00\xff"}))
    assert ok.is_reply and ok.body == {"x": b"\x00\xff"}
    err = decode(encode_error(3, "not_found", "no task 7"))
    assert (err.op, err.code, err.msg) == ("error", "not_found", "no task 7")


@pytest.mark.parametrize("frame, error", [
    (b"\xc1", BadRequest),
    (msgpack.packb("str"), BadRequest),
    (msgpack.packb({"v": 0, "op": "x"}), BadVersion),
    (b"x" * 101, TooLarge),
])
def test_decode_refuses(frame, error):
    with pytest.raises(error):
        decode(frame, max_bytes=100)


@pytest.mark.parametrize("body, kind, default, expected", [
    ({"a": 1}, int, ..., 1),
    ({}, int, 5, 5),
    ({"a": None}, str, "d", "d"),
    ({"a": [1]}, list, ..., [1]),
])
def test_arg_accepts(body, kind, default, expected):
    args = (body, "a", kind) if default is ... else (body, "a", kind, default)
    assert arg(*args) == expected


@pytest.mark.parametrize("body, kind", [({}, int), ({"a": "1"}, int), ({"a": True}, int),
                                        ({"a": 1.5}, int), ({"a": {}}, list)])
def test_arg_refuses(body, kind):
    with pytest.raises(BadRequest):
        arg(body, "a", kind)


@pytest.mark.parametrize("text, expected", [
    ("512", 512), ("1K", 1024), ("512M", 512 << 20), ("1.5G", 3 << 29), ("2GiB", 2 << 30),
    ("4gb", 4 << 30), ("1T", 1 << 40), (2048, 2048),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["4Q", "-1G", "", "G", "0", "1.2.3M", -5, 0])
def test_parse_size_refuses(text):
    with pytest.raises(InvalidArgument):
        parse_size(text)


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("15m", 900), ("2h", 7200),
                                           ("1h30m", 5400), ("7d", 604800)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "-5", "5x", "1h junk"])
def test_parse_duration_refuses(text):
    with pytest.raises(InvalidArgument):
        parse_duration(text)


@pytest.mark.parametrize("n, text", [(None, "-"), (512, "512B"), (1536, "1.5K"), (1 << 30, "1G")])
def test_format_size(n, text):
    assert format_size(n) == text


@pytest.mark.parametrize("s, text", [(None, "-"), (0.4, "0.4s"), (75, "1m15s"), (3700, "1h01m"),
                                     (90000, "1d1h")])
def test_format_duration(s, text):
    assert format_duration(s) == text


@pytest.mark.parametrize("body", [
    {"command": ["x"], "name": "bad name with spaces"},
    {"command": ["x"], "cores": 0},
    {"command": ["x"], "backend": "vm"},
    {"command": ["x"], "workdir": "relative"},
    {"command": ["x"], "env": {"A": 1}},
])
def test_spec_refuses(body):
    with pytest.raises(BadRequest):
        TaskSpec.from_wire(body)


def test_error_codes_map_back_to_classes():
    assert isinstance(error_from_reply("not_found", "x"), NotFound)
    assert type(error_from_reply("brand_new_code", "x")).__name__ == "ZriverError"


def test_a_wire_dropped_in_a_reference_cycle_does_not_hang_the_collector(tmp_path):
    """A Wire nobody closed, collected as part of a cycle, closes its sockets and ends its
    context (pyzmq's own clean-up found no socket to close there and waited for ever)."""
    script = tmp_path / "cycle.py"
    script.write_text(
        "import gc\n"
        "from zriver.wire import Wire\n"
        "for _ in range(5):\n"
        "    wire = Wire(1 << 20)\n"
        "    sock = wire.dealer('tcp://127.0.0.1:9')\n"
        "    wire.monitor(sock, 0xFFFF)\n"
        "    wire.cycle = wire\n"
        "    del wire, sock\n"
        "    gc.collect()\n"
        "print('collected')\n")
    env = dict(os.environ, PYTHONPATH=str(Path(zriver.__file__).resolve().parent.parent))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env=env, timeout=60)
    assert done.returncode == 0 and done.stdout == "collected\n", done.stderr
