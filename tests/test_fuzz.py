"""Property-based tests of the one validation gate and of every op's handler.

* ``decode``: any bytes (random, truncated valid frames, nested and oversized bodies) either
  decode to an ``Envelope`` or raise a ``BadRequest`` subclass, quickly.
* every op in the host's op table, through a real in-process cluster and the real ``Client``: random,
  nested and type-confused bodies always get a clean error code from a fixed set (never
  ``internal``), and the host keeps serving (a normal submit and wait works afterwards).

The cluster's Docker address points nowhere (``unix:///nonexistent``), so env ops fail
cleanly instead of pulling images; generated task commands are only ``true``.
"""

from __future__ import annotations

import time

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zriver.client.api import Client
from zriver.errors import BadRequest, ZriverError
from zriver.config import HostSettings
from zriver.host.service import Host

OPS = Host(HostSettings(data_dir="/nonexistent")).ops.names()
from zriver.protocol import decode, encode, peek_rid

CLEAN = {"forbidden", "bad_request", "invalid_argument", "not_found", "conflict", "impossible",
         "unavailable", "unknown_op", "too_large", "protocol_version"}
RUNNER_ONLY = ("runner.register", "task.update", "env.version", "env.fetch", "env.syncing",
               "runner.ping")
FIELDS = ("tasks", "id", "ids", "states", "limit", "batch", "owner", "timeout", "stream",
          "offset", "name", "reason", "by", "since", "key", "token", "data", "image",
          "upload", "dockerfile", "commit", "message", "version", "phase", "info", "updates",
          "usage")
SPEC_FIELDS = ("command", "name", "cores", "memory", "env", "workdir", "target", "backend",
               "owner", "container", "env_version", "mounts", "privileged", "gpus",
               "priority", "after", "after_any", "time_limit", "retries", "max_parallel")

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.binary(max_size=20), st.sampled_from(["n1", "stdout", "user", "pending", "true", "/"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)
specs = st.dictionaries(st.sampled_from(SPEC_FIELDS), values, max_size=6).map(
    lambda d: {**d, "command": ["true"]} if isinstance(d.get("command"), str) else d)
bodies = st.dictionaries(st.sampled_from(FIELDS), st.one_of(values, st.lists(specs, max_size=3)),
                         max_size=5)


def safe(op: str, body: dict) -> dict:
    """Keep a generated body from long-polling: ``task.wait`` gets a short timeout."""
    if op == "task.wait" and not isinstance(body.get("timeout"), (str, bytes, list, dict)):
        body["timeout"] = 0.01
    return body


# ---- the decoder ---------------------------------------------------------------------------
def check_decode(frame: bytes) -> None:
    started = time.perf_counter()
    try:
        decode(frame)
    except BadRequest:
        pass
    peek_rid(frame)
    assert time.perf_counter() - started < 0.5


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_decode_random_bytes(frame):
    check_decode(frame)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(OPS), bodies, st.integers(min_value=0, max_value=2000))
def test_decode_truncated_and_nested(op, body, cut):
    frame = encode(op, 1, body)
    check_decode(frame)
    check_decode(frame[:cut])
    check_decode(frame + frame[:cut])  # extra data after the envelope


@pytest.mark.parametrize("frame", [
    msgpack.packb({"v": 1, "op": "task.submit", "rid": 1, "body": {"tasks": [[]] * 100_000}}),
    msgpack.packb({"v": 1, "op": "x", "rid": 1, "body": {"a": [{} for _ in range(100_000)]}}),
    msgpack.packb({"v": 1, "op": "x", "body": {"a": [[0] * 20_000] * 20}}),
    b"\x81\xa4body" + b"\x91" * 1022 + b"\x90",  # deep, complete
    b"\x81\xa4body" + b"\xdd\x00\x01\xff\xff" * 1000,  # deep, every level claiming 131071
    b"\x81\xa4body" + b"\xdb\x7f\xff\xff\xff",  # a string claiming 2 GiB
])
def test_decode_bounded_shapes(frame):
    check_decode(frame)


def test_version_must_be_an_integer():
    with pytest.raises(BadRequest, match="must be an integer") as err:
        decode(msgpack.packb({"v": "1", "op": "cluster.hello"}))
    assert err.value.code == "bad_request"
    with pytest.raises(BadRequest) as err:
        decode(msgpack.packb({"v": 99, "op": "cluster.hello"}))
    assert err.value.code == "protocol_version"


# ---- every op through a real cluster -------------------------------------------------------
@pytest.fixture
def lab(make_cluster):
    cluster = make_cluster({"n1": {"cores": 2, "memory": "4G"}},
                           host={"docker_host": "unix:///nonexistent/docker.sock"})
    yield cluster
    client = cluster.client()
    client.call("node.undrain", {"name": "n1"})  # a generated drain must not stall the check
    task_id = cluster.submit(["true"])
    assert cluster.wait(task_id)[0]["state"] == "completed"


def call_clean(client: Client, op: str, body) -> None:
    try:
        client.call(op, body)
    except ZriverError as exc:
        assert exc.code in CLEAN, f"{op} {body!r}: {exc.code}: {exc}"


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(op=st.sampled_from(OPS), body=bodies)
def test_every_op_answers_cleanly(lab, op, body):
    call_clean(lab.client(), op, safe(op, body))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(op=st.sampled_from(OPS), field=st.sampled_from(FIELDS + SPEC_FIELDS),
       value=values)
def test_wrong_type_for_every_field(lab, op, field, value):
    client = lab.client()
    call_clean(client, op, safe(op, {field: value}))
    call_clean(client, "task.submit", {"tasks": [{"command": ["true"], field: value}]})


@pytest.mark.parametrize("op", RUNNER_ONLY)
def test_runner_ops_refuse_clients(lab, op):
    client = lab.client()
    for body in ({}, {"name": "n1", "version": "0123456789ab", "offset": 0, "phase": "x",
                      "updates": [], "info": {"cores": [0], "memory": 1}}):
        with pytest.raises(ZriverError) as err:
            client.call(op, body)
        assert err.value.code == "forbidden" and "needs the role runner" in str(err.value)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(op=st.sampled_from(OPS), size=st.sampled_from([70_000, 300_000, 2_000_000]),
       shape=st.sampled_from(["list", "map", "str"]))
def test_oversized_bodies(lab, op, size, shape):
    payload = {"list": lambda: [[]] * size, "map": lambda: [{} for _ in range(size // 4)],
               "str": lambda: "x" * size}[shape]()
    call_clean(lab.client(), op, {"tasks": payload, "ids": payload, "states": payload})


@pytest.mark.parametrize("op, body", [
    ("task.list", {"states": [["running"]]}),
    ("task.list", {"batch": (1 << 64) - 1}),
    ("task.get", {"id": (1 << 64) - 1}),
    ("task.wait", {"ids": [(1 << 64) - 1], "timeout": 0.01}),
    ("task.wait", {"ids": [1], "timeout": float("nan")}),
    ("task.logs", {"id": 1, "offset": (1 << 63) - 1}),
    ("task.submit", {"tasks": [{"command": ["true"], "time_limit": float("nan")}]}),
    ("task.submit", {"tasks": [{"command": ["true"], "after": [(1 << 64) - 1]}]}),
    ("task.submit", {"tasks": [{"command": ["true"]}], "key": "k" * 129}),
    ("usage.report", {"since": float("inf")}),
    ("env.syncing", {"tasks": [[1]]}),
])
def test_known_type_confusions(lab, op, body):
    with pytest.raises(ZriverError) as err:
        lab.client().call(op, body)
    assert err.value.code in CLEAN - {"unavailable"}, str(err.value)
