"""Host <-> runner byte streams on a real cluster and a real Docker engine: exec (exit codes,
TTY resize, stderr, stdin EOF), TCP to a service in a container (sha256 of a large transfer,
throughput beside a direct connection), back-pressure that stalls only its own stream,
refusals, and a runner restart ending its streams."""

from __future__ import annotations

import asyncio
import hashlib
import time

import pytest

from docker_fixtures import *  # noqa: F401,F403  (fixtures)
from docker_fixtures import eventually, submit_docker

from zriver.host.streamhub import StreamError
from zriver.streamproto import CHUNK, WINDOW

pytestmark = pytest.mark.docker

BIG = 64 << 20


def make_env(cluster, name: str = "bb", image: str = "zriver-test-busybox") -> str:
    reply = cluster.client(timeout=120).call("env.create", {"name": name, "image": image,
                                                           "commit": True}, timeout=120)
    return reply["version"]["version"]


def running_task(cluster, command: list[str], container: str = "bb") -> int:
    task_id = submit_docker(cluster, command, container=container)
    cluster.wait_state(task_id, {"running"}, timeout=60)
    return task_id


def open_stream(cluster, target: dict, node: str = "n1"):
    async def go():
        runner = cluster.runners.get(node)
        assert await cluster.host.streams.wait_connected(node, 10, runner and runner.instance)
        return await cluster.host.streams.open(node, target)
    return cluster.run(go)


async def read_all(read) -> bytes:
    chunks = []
    while data := await read():
        chunks.append(data)
    return b"".join(chunks)


def run_exec(cluster, task_id: int, command: list[str], stdin: bytes | None = None,
             **target) -> tuple[bytes, bytes, dict]:
    """stdout, stderr and the close body of one exec without a TTY."""
    stream = open_stream(cluster, {"kind": "exec", "task": task_id, "command": command,
                                   "tty": False, **target})

    async def go():
        if stdin is not None:
            await stream.write(stdin)
            stream.write_eof()
        out, err = await asyncio.gather(read_all(stream.read), read_all(stream.read_stderr))
        return out, err, await stream.wait_closed()
    return cluster.run(go, timeout=60)


def during_heartbeats(cluster, fn, node: str = "n1"):
    """Run coroutine function ``fn`` on the cluster loop while watching ``node``'s heartbeats:
    its result and the longest gap between two heartbeats meanwhile."""
    sub = cluster.client().subscribe([f"hb.{node}"])
    try:
        assert sub.poll(5000), "no heartbeat at all"
        sub.recv_multipart()
        last, gap = time.monotonic(), 0.0
        future = asyncio.run_coroutine_threadsafe(fn(), cluster.loop)
        while not future.done():
            if sub.poll(50):
                sub.recv_multipart()
                now = time.monotonic()
                last, gap = now, max(gap, now - last)
        return future.result(), max(gap, time.monotonic() - last)
    finally:
        sub.close(linger=0)


@pytest.fixture
def bb(dcluster):
    """A cluster with one Docker runner and the busybox env ``bb``."""
    cluster = dcluster()
    make_env(cluster)
    return cluster


def test_exec_command_stdout_exit_code_and_stderr(bb):
    task_id = running_task(bb, ["sleep", "1000"])
    out, err, closed = run_exec(bb, task_id, ["sh", "-c", "printf 'a\\000\\377b'; echo oops >&2; exit 3"])
    assert out == b"a\x00\xffb" and err == b"oops\n"
    assert closed == {"exit": 3, "error": None}
    out, err, closed = run_exec(bb, task_id, ["cat"], stdin=bytes(range(256)) * 4096)
    assert out == bytes(range(256)) * 4096 and closed["exit"] == 0


def test_exec_with_tty_sees_resize(bb):
    task_id = running_task(bb, ["sleep", "1000"])
    stream = open_stream(bb, {"kind": "exec", "task": task_id, "command": ["sh"], "tty": True,
                              "cols": 100, "rows": 30})

    async def until(marker: bytes, seen: bytearray) -> bytes:
        while marker not in seen:
            data = await stream.read()
            assert data, f"EOF before {marker!r}: {bytes(seen)!r}"
            seen += data
        return bytes(seen)

    async def go():
        seen = bytearray()
        await stream.write(b"stty size; echo END$((0+1))\n")
        first = await until(b"END1\r\n", seen)
        stream.resize(132, 43)
        await stream.write(b"sleep 0.3; stty size; echo END$((0+2))\n")  # the shell waits, not the test
        second = await until(b"END2\r\n", seen)
        await stream.write(b"sleep 0.3; exit 5\n")
        stream.write_eof()  # ignored with a TTY: no hang-up (exit 129) during the sleep
        await read_all(stream.read)
        return first, second, await stream.wait_closed()

    first, second, closed = bb.run(go, timeout=60)
    assert b"30 100" in first and b"43 132" in second.split(b"END1")[-1]
    assert closed == {"exit": 5, "error": None}


def test_login_shell_and_signal(bb):
    task_id = running_task(bb, ["sleep", "1000"])
    stream = open_stream(bb, {"kind": "exec", "task": task_id, "command": None, "tty": False})

    async def go():
        await stream.write(b"echo $0; exec sleep 1000\n")
        first = await stream.read()
        stream.signal("KILL")
        await read_all(stream.read)
        return first, await stream.wait_closed()

    first, closed = bb.run(go, timeout=60)
    assert first.strip() == b"sh" and closed["exit"] == 137


def test_tcp_stream_large_transfer_and_throughput(bb, docker_client):
    task_id = running_task(bb, ["sh", "-c", f"dd if=/dev/urandom of=/tmp/big bs=1048576 "
                                            f"count={BIG >> 20} 2>/dev/null && "
                                            f"httpd -f -p 8000 -h /tmp"])
    out, _, _ = run_exec(bb, task_id, ["sh", "-c", "while ! sha256sum /tmp/big; do sleep 0.1; done"])
    expected = out.split()[0].decode()

    async def fetch(reader_writer) -> tuple[bytes, float]:
        read, write, eof = reader_writer
        started = time.perf_counter()
        await write(b"GET /big HTTP/1.0\r\n\r\n")
        eof()
        body = await read_all(read)
        return body, time.perf_counter() - started

    async def through_stream():
        stream = await bb.host.streams.open("n1", {"kind": "tcp", "task": task_id, "port": 8000})
        result = await fetch((stream.read, stream.write, stream.write_eof))
        return result, await stream.wait_closed()

    async def direct():
        container = bb.runners["n1"].backends["docker"].container_of(task_id)
        address = docker_client.api.inspect_container(container)["NetworkSettings"]["IPAddress"]
        reader, writer = await asyncio.open_connection(address, 8000, limit=CHUNK)

        async def write(data):
            writer.write(data)
            await writer.drain()
        try:
            return await fetch((lambda: reader.read(CHUNK), write, writer.write_eof))
        finally:
            writer.close()

    ((body, seconds), closed), gap = during_heartbeats(bb, through_stream)
    assert gap < bb.host_settings.heartbeat_interval * bb.host_settings.heartbeat_misses
    direct_body, direct_seconds = bb.run(direct, timeout=120)
    content = body.split(b"\r\n\r\n", 1)[1]
    assert len(content) == BIG and hashlib.sha256(content).hexdigest() == expected
    assert direct_body.split(b"\r\n\r\n", 1)[1] == content
    assert closed == {"exit": None, "error": None}
    print(f"\ntcp stream {BIG / seconds / 1e6:.0f} MB/s, direct {BIG / direct_seconds / 1e6:.0f} "
          f"MB/s ({direct_seconds / seconds:.2f}x); longest heartbeat gap {gap:.3f} s")


def test_back_pressure_stalls_only_its_stream(bb):
    task_id = running_task(bb, ["sh", "-c", "yes 0123456789abcdef | nc -l -p 8000"])
    stream = open_stream(bb, {"kind": "tcp", "task": task_id, "port": 8000})
    hub = bb.host.streams
    eventually(lambda: bb.call_soon(lambda: stream.buffered) >= WINDOW - CHUNK, 20,
               "the stream's window to fill")
    sub = bb.client().subscribe(["hb.n1"])
    try:
        other = submit_docker(bb, ["echo", "dispatched"])
        [summary] = bb.wait(other)
        assert summary["state"] == "completed"
        for _ in range(3):  # heartbeats keep coming while the stream is stalled
            assert sub.poll(5000), "no heartbeat while a stream was stalled"
            sub.recv_multipart()
    finally:
        sub.close(linger=0)
    assert bb.call_soon(lambda: stream.buffered) <= WINDOW
    assert bb.call_soon(lambda: len(hub.streams_of("n1"))) == 1

    async def drain_some():
        got = 0
        while got < 8 * WINDOW:
            got += len(await stream.read())
            assert stream.buffered <= WINDOW
        stream.close()
        return await stream.wait_closed()

    assert bb.run(drain_some, timeout=60) == {"exit": None, "error": None}


def test_refusals(bb, make_cluster):
    task_id = running_task(bb, ["sleep", "1000"])
    cases = [
        ({"kind": "tcp", "task": task_id, "port": 8999}, f"nothing listens on port 8999 in task {task_id}"),
        ({"kind": "exec", "task": 999999, "command": ["true"]}, "task 999999 is not running on node n1"),
        ({"kind": "tcp", "task": task_id, "port": 0}, "a port is a number from 1 to 65535"),
        ({"kind": "teleport", "task": task_id}, "offers no 'teleport' streams"),
    ]
    for target, message in cases:
        with pytest.raises(StreamError, match=message):
            open_stream(bb, target)
    with pytest.raises(StreamError, match="node nowhere is not connected for streams"):
        bb.run(lambda: bb.host.streams.open("nowhere", {"kind": "tcp"}))
    native = bb.submit(["sleep", "1000"])
    bb.wait_state(native, {"running"})
    with pytest.raises(StreamError, match=f"task {native} is not a container task"):
        open_stream(bb, {"kind": "exec", "task": native, "command": ["true"]})


def test_container_without_shell(bb):
    task_id = running_task(bb, ["sleep", "1000"])
    out, _, closed = run_exec(bb, task_id, ["/bin/busybox", "rm", "/bin/sh"])
    assert closed["exit"] == 0, out
    with pytest.raises(StreamError, match=f"task {task_id}'s container has no shell"):
        open_stream(bb, {"kind": "exec", "task": task_id, "command": None, "tty": True})


def test_runner_restart_ends_its_streams(bb):
    task_id = running_task(bb, ["sleep", "1000"])
    stream = open_stream(bb, {"kind": "exec", "task": task_id, "command": ["sleep", "1000"]})
    bb.stop_runner("n1", kill_tasks=False)
    closed = bb.run(stream.wait_closed, timeout=20)
    assert closed == {"exit": None, "error": "the runner of node n1 stopped"}
    with pytest.raises(StreamError, match="the runner of node n1 stopped"):
        bb.run(lambda: stream.write(b"x"))
    eventually(lambda: not bb.call_soon(lambda: bb.host.streams.connected("n1")), 10,
               "the runner's goodbye")
    with pytest.raises(StreamError, match="node n1 is not connected for streams"):
        bb.run(lambda: bb.host.streams.open("n1", {"kind": "exec", "task": task_id}))
    bb.start_runner("n1", **bb.runner_specs["n1"])
    out, _, closed = run_exec(bb, task_id, ["echo", "back"])
    assert out == b"back\n" and closed["exit"] == 0


def test_stream_peer_must_hold_its_node_runner_key(bb):
    from zriver.keys import ClientKeys, load_pair
    from zriver.streamproto import HELLO, frames, pack
    from zriver.wire import Wire

    task_id = running_task(bb, ["sleep", "1000"])
    stream = open_stream(bb, {"kind": "exec", "task": task_id, "command": ["sleep", "1000"]})
    public, secret = load_pair(bb.key_for("n2", "runner"))  # a runner key, of another node
    wire = Wire(1 << 20, client_keys=ClientKeys(public, secret, bb.server_keys.public))
    try:
        sock = wire.dealer(bb.host.endpoints["streams"], identity=b"s:n1:impostor")
        sock.send_multipart(frames(0, HELLO, pack({"node": "n1", "instance": "impostor"})))
        eventually(lambda: bb.call_soon(lambda: b"s:n1:impostor" in bb.host.streams.ignored),
                   10, "the impostor to be ignored")
    finally:
        wire.close()
    assert bb.call_soon(lambda: (stream.closed, bb.host.streams.connected("n1"))) == (False, True)
    bb.call_soon(stream.close)


class FakeRunner:
    """A second stream endpoint speaking for node ``n1`` with its real runner key (another
    life of that runner, as far as the hub can tell), with ``echo`` and ``sink`` targets."""

    def __init__(self, cluster, instance: str) -> None:
        from zriver.keys import ClientKeys, load_pair
        from zriver.roles import port_of
        from zriver.runner.streams import StreamEndpoint
        from zriver.wire import Wire

        public, secret = load_pair(cluster.key_for("n1", "runner"))
        self.cluster = cluster
        self.wire = Wire(1 << 20, client_keys=ClientKeys(public, secret, cluster.server_keys.public))
        self.sinks: list = []
        self.drain = asyncio.Event()
        self.endpoint = StreamEndpoint("n1", instance, self.wire,
                                       targets={"echo": self.echo, "sink": self.sink})
        port = port_of(cluster.host.endpoints["streams"])
        cluster.call_soon(lambda: self.endpoint.connect("127.0.0.1", port))

    async def echo(self, target, pipe):
        while data := await pipe.read():
            await pipe.write(data)
        return {"exit": 0, "error": None}

    async def sink(self, target, pipe):
        pipe.opened()
        self.sinks.append(pipe)
        await self.drain.wait()
        return {"exit": len(await read_all(pipe.read)), "error": None}

    def vanish(self) -> None:
        """Go away without a word (a crash): no CLOSE, no more HELLO."""
        async def close():
            channel, self.endpoint.channel = self.endpoint.channel, None
            channel.close()
            channel.sock.close(linger=0)
            await self.endpoint.close("vanished")  # its handlers end; nothing is sent
        self.cluster.run(close)
        self.wire.close()


def test_restarted_or_vanished_runner_ends_its_streams(bb):
    task_id = running_task(bb, ["sleep", "1000"])
    stream = open_stream(bb, {"kind": "exec", "task": task_id, "command": ["sleep", "1000"]})
    first = FakeRunner(bb, "second-life")
    assert bb.run(stream.wait_closed, timeout=20) == {
        "exit": None, "error": "node n1 restarted: its streams ended"}
    first.vanish()
    bb.stop_runner("n1", kill_tasks=False)
    fake = FakeRunner(bb, "third-life")
    assert bb.run(lambda: bb.host.streams.wait_connected("n1", 10, "third-life"))

    async def echo_and_back_pressure():
        echo = await bb.host.streams.open("n1", {"kind": "echo"})
        await echo.write(b"ping")
        assert await echo.read() == b"ping"
        sink = await bb.host.streams.open("n1", {"kind": "sink"})
        writing = asyncio.ensure_future(sink.write(b"x" * (3 * WINDOW)))
        while sink.flow.credit >= CHUNK:  # the sink reads nothing: the window runs out
            await asyncio.sleep(0)
        assert not writing.done() and fake.sinks[0].flow.buffered <= WINDOW
        fake.drain.set()
        await writing
        sink.write_eof()
        return echo, await sink.wait_closed()

    echo, closed = bb.run(echo_and_back_pressure, timeout=30)
    assert closed == {"exit": 3 * WINDOW, "error": None}
    fake.vanish()
    closed = bb.run(echo.wait_closed, timeout=20)
    assert closed["exit"] is None and closed["error"].startswith("node n1 "), closed
    assert "went away" in closed["error"] or "stopped answering" in closed["error"]
    assert not bb.call_soon(lambda: bb.host.streams.connected("n1"))
