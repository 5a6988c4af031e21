"""Raw frames sent straight to the host's ROUTER: every bad message gets a clear error with a
stable code, the host keeps serving, and nothing in the store changes."""

from __future__ import annotations

import msgpack
import pytest
import zmq

from zriver import PROTOCOL_VERSION
from zriver.protocol import DEFAULT_MAX_MESSAGE_BYTES


def envelope(**fields):
    return msgpack.packb({"v": PROTOCOL_VERSION, "rid": 5, "body": {}, **fields})


@pytest.fixture
def raw(cluster):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(cluster.endpoint)

    def send(*frames: bytes) -> dict:
        sock.send_multipart(list(frames))
        assert sock.poll(5000), "no reply: the host dropped the message silently"
        return msgpack.unpackb(sock.recv(), raw=False)

    yield send
    sock.close()


BAD = [
    ("not msgpack", b"\xc1\xc1garbage", "bad_request"),
    ("not a map", msgpack.packb([1, 2, 3]), "bad_request"),
    ("no version", msgpack.packb({"op": "task.list", "rid": 1}), "protocol_version"),
    ("future version", envelope(v=99, op="task.list"), "protocol_version"),
    ("op not a string", envelope(op=7), "bad_request"),
    ("rid not an int", envelope(op="task.list", rid="x"), "bad_request"),
    ("body not a map", envelope(op="task.list", body=[1]), "bad_request"),
    ("unknown op", envelope(op="task.explode"), "unknown_op"),
    ("wrong field type", envelope(op="task.get", body={"id": "seven"}), "bad_request"),
    ("bool is not an int", envelope(op="task.get", body={"id": True}), "bad_request"),
    ("missing field", envelope(op="task.get"), "bad_request"),
    ("unknown task", envelope(op="task.get", body={"id": 12345}), "not_found"),
    ("tasks not a list", envelope(op="task.submit", body={"tasks": "x"}), "bad_request"),
    ("task not a map", envelope(op="task.submit", body={"tasks": [3]}), "bad_request"),
    ("command of ints", envelope(op="task.submit", body={"tasks": [{"command": [1]}]}),
     "invalid_argument"),
    ("runner op from a client", envelope(op="task.update", body={"updates": []}), "bad_request"),
    ("register from a client", envelope(op="runner.register", body={"info": {}}), "bad_request"),
    ("unknown state filter", envelope(op="task.list", body={"states": ["weird"]}),
     "invalid_argument"),
]


@pytest.mark.parametrize("name, frame, code", BAD, ids=[b[0] for b in BAD])
def test_bad_message_gets_a_clear_error(cluster, raw, name, frame, code):
    before = cluster.client().call("task.list", {})["tasks"]
    reply = raw(frame)
    assert reply["op"] == "error"
    assert reply["code"] == code
    assert reply["msg"]
    assert cluster.client().call("task.list", {})["tasks"] == before
    assert raw(envelope(op="cluster.hello"))["op"] == "ok"  # still serving


def test_request_id_is_echoed_even_for_errors(raw):
    reply = raw(envelope(op="task.explode", rid=4242))
    assert reply["rid"] == 4242


def test_oversized_message_is_refused_with_too_large(cluster, raw):
    big = envelope(op="task.submit", body={"tasks": [{"command": ["x" * (DEFAULT_MAX_MESSAGE_BYTES + 10)]}]})
    reply = raw(big)
    assert (reply["op"], reply["code"]) == ("error", "too_large")
    assert cluster.client().call("task.list", {})["tasks"] == []


def test_several_frames_are_refused(raw):
    reply = raw(envelope(op="cluster.hello"), b"extra")
    assert (reply["op"], reply["code"]) == ("error", "bad_request")


def test_incompatible_client_gets_a_clear_version_message(raw):
    reply = raw(envelope(v=PROTOCOL_VERSION + 1, op="cluster.hello"))
    assert "protocol version" in reply["msg"] and "same zriver release" in reply["msg"]


def test_a_burst_of_garbage_does_not_stop_the_host(cluster, raw):
    for i in range(200):
        raw(bytes([i % 256]) * (i + 1))
    task_id = cluster.submit(["true"])
    assert cluster.wait(task_id)[0]["state"] == "completed"
