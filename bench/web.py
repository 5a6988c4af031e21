#!/usr/bin/env python
"""Web API benchmark: HTTP request latency beside the ZeroMQ client, and the WebSocket event
delay, on a real host and runner (two processes, ``tests/procs.py``: CURVE keys, ephemeral
ports on 127.0.0.1), in the same run.

* **request latency** (p50/p95, milliseconds) of task list (``limit`` 100, over
  ``--prefill`` finished tasks), task detail and submit (one ``true`` task), each through
  the JSON API (``aiohttp`` client, one kept-alive connection, ``Authorization: Bearer``
  with a token from op ``token.create``) and through ``zriver.client.api.Client`` over
  ZeroMQ, interleaved round by round (the order alternates) so both see the same machine;
* **event delay**: a task (``sleep 0.05``) is submitted (ZeroMQ) while ``/api/v1/events`` (WebSocket) and a
  ZeroMQ SUB socket on ``evt.task.`` listen, each in its own thread; reported: submit ->
  the ``pending``, ``running`` and final message on the WebSocket, and how much later each
  came on the WebSocket than on the SUB socket (what the web path adds to an event).

Targets (issue 13): API p50 within 2x of the ZeroMQ client; event to browser under 50 ms on
loopback.

    python bench/web.py [--rounds 300] [--events 100] [--prefill 1000] [--json out.json]

Bounded: every wait has a timeout and the run stops after ``--max-seconds``; the roles and the
temporary directory are removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # this checkout, whatever else is installed

import aiohttp  # noqa: E402

from procs import Cluster  # noqa: E402
from zriver.protocol import decode  # noqa: E402

OPS = ("task list", "task detail", "submit")
FINAL = {"completed", "failed", "killed", "lost", "timeout", "killed_oom"}
WAIT = 20.0


class BenchError(RuntimeError):
    pass


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def summary(values: list[float]) -> dict[str, float]:
    """p50/p95/mean in milliseconds."""
    return {"p50": percentile(values, 0.5) * 1e3, "p95": percentile(values, 0.95) * 1e3,
            "mean": statistics.fmean(values) * 1e3, "n": len(values)}


# ---- request latency -----------------------------------------------------------------------------
class Api:
    """The same three ops through HTTP (``http_*``) and ZeroMQ (``zmq_*``)."""

    def __init__(self, session: aiohttp.ClientSession, url: str, client: Any,
                 spec: dict[str, Any], task_id: int) -> None:
        self.session, self.url, self.client = session, url, client
        self.spec, self.task_id = spec, task_id

    async def http(self, method: str, path: str, body: Any = None) -> Any:
        async with self.session.request(method, self.url + path, json=body) as response:
            data = await response.read()
            if response.status != 200:
                raise BenchError(f"{method} {path}: {response.status} {data[:300]!r}")
            return json.loads(data)

    async def http_op(self, op: str) -> None:
        if op == "task list":
            await self.http("GET", "/api/v1/tasks?limit=100")
        elif op == "task detail":
            await self.http("GET", f"/api/v1/tasks/{self.task_id}")
        else:
            await self.http("POST", "/api/v1/tasks", {"tasks": [self.spec]})

    def zmq_op(self, op: str) -> None:
        if op == "task list":
            self.client.call("task.list", {"limit": 100})
        elif op == "task detail":
            self.client.call("task.get", {"id": self.task_id})
        else:
            self.client.call("task.submit", {"tasks": [self.spec]})


async def latency(api: Api, rounds: int, warmup: int = 20) -> dict[str, dict[str, list]]:
    """Per op, ``{"http": [seconds], "zmq": [seconds]}``, interleaved."""
    times = {op: {"http": [], "zmq": []} for op in OPS}
    for index in range(warmup + rounds):
        for op in OPS:
            for way in (("http", "zmq") if index % 2 else ("zmq", "http")):
                start = time.perf_counter()
                if way == "http":
                    await api.http_op(op)
                else:
                    api.zmq_op(op)
                if index >= warmup:
                    times[op][way].append(time.perf_counter() - start)
    return times


# ---- event delay ---------------------------------------------------------------------------------
class Seen:
    """``(source, task id, state) -> perf_counter`` of its first arrival; waitable."""

    def __init__(self) -> None:
        self.times: dict[tuple[str, int, str], float] = {}
        self.changed = threading.Condition()

    def record(self, source: str, body: dict[str, Any], at: float) -> None:
        with self.changed:
            for state in list(body.get("passed") or []) + [body.get("state")]:
                self.times.setdefault((source, body.get("id"), state), at)
            self.changed.notify_all()

    def final(self, source: str, task_id: int) -> float | None:
        found = [t for (s, i, state), t in self.times.items()
                 if s == source and i == task_id and state in FINAL]
        return min(found) if found else None

    def wait_final(self, task_id: int, sources: tuple[str, ...]) -> None:
        deadline = time.monotonic() + WAIT
        with self.changed:
            while any(self.final(s, task_id) is None for s in sources):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchError(f"no final event of task {task_id} on {sources}")
                self.changed.wait(left)


def websocket_reader(url: str, token: str, seen: Seen, ready: threading.Event,
                     stop: threading.Event) -> None:
    """Read ``/api/v1/events`` until ``stop`` (own thread, own event loop)."""
    async def run() -> None:
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            async with session.ws_connect(url + "/api/v1/events") as ws:
                ready.set()
                while not stop.is_set():
                    try:
                        message = await ws.receive(timeout=0.2)
                    except asyncio.TimeoutError:
                        continue
                    at = time.perf_counter()
                    if message.type != aiohttp.WSMsgType.TEXT:
                        raise BenchError(f"the event socket ended: {message}")
                    event = json.loads(message.data)
                    if event["topic"].startswith("evt.task."):
                        seen.record("ws", event["body"], at)

    asyncio.run(run())


def sub_reader(make_client: Callable[[], Any], seen: Seen, ready: threading.Event,
               stop: threading.Event) -> None:
    """Read ``evt.task.`` on a ZeroMQ SUB socket until ``stop`` (own thread)."""
    client = make_client()
    sub = client.subscribe(["evt.task."])
    ready.set()
    try:
        while not stop.is_set():
            if not sub.poll(200):
                continue
            frames = sub.recv_multipart()
            seen.record("sub", decode(frames[1]).body, time.perf_counter())
    finally:
        sub.close(linger=0)
        client.close()


def start_readers(lab: Cluster, url: str, token: str, seen: Seen,
                  stop: threading.Event) -> list[threading.Thread]:
    threads = []
    for target, args in ((websocket_reader, (url, token)),
                         (sub_reader, (lambda: lab.host.client(timeout=10),))):
        ready = threading.Event()
        thread = threading.Thread(target=_guarded, args=(target, *args, seen, ready, stop),
                                  daemon=True)
        thread.start()
        if not ready.wait(WAIT):
            raise BenchError(f"{target.__name__} did not connect")
        threads.append(thread)
    return threads


def _guarded(target: Callable, *args: Any) -> None:
    try:
        target(*args)
    except Exception as exc:  # noqa: BLE001  shown, and the waits time out with the reason
        print(f"{target.__name__} failed: {exc!r}", file=sys.stderr)


def event_delays(lab: Cluster, client: Any, url: str, token: str, spec: dict[str, Any],
                 count: int) -> dict[str, list[float]]:
    """Submit ``count`` tasks one at a time; the delays of their events (seconds)."""
    seen, stop = Seen(), threading.Event()
    threads = start_readers(lab, url, token, seen, stop)
    delays: dict[str, list[float]] = {k: [] for k in (
        "submit -> pending", "submit -> running", "submit -> final",
        "ws after sub: pending", "ws after sub: running", "ws after sub: final")}
    try:
        for index in range(count + 3):  # the first ones make sure both readers hear
            start = time.perf_counter()
            task_id = client.call("task.submit", {"tasks": [spec]})["ids"][0]
            seen.wait_final(task_id, ("ws", "sub"))
            if index >= 3:
                add_delays(delays, seen, task_id, start)
    finally:
        stop.set()
        for thread in threads:
            thread.join(5)
    return delays


def add_delays(delays: dict[str, list[float]], seen: Seen, task_id: int, start: float) -> None:
    times = seen.times
    for state in ("pending", "running", "final"):
        ws = seen.final("ws", task_id) if state == "final" else times.get(("ws", task_id, state))
        sub = (seen.final("sub", task_id) if state == "final"
               else times.get(("sub", task_id, state)))
        if ws is None or sub is None:
            continue
        delays[f"submit -> {state}"].append(ws - start)
        delays[f"ws after sub: {state}"].append(ws - sub)


# ---- the run -------------------------------------------------------------------------------------
def prefill(client: Any, spec: dict[str, Any], count: int) -> list[int]:
    ids: list[int] = []
    while len(ids) < count:
        batch = min(500, count - len(ids))
        ids += client.call("task.submit", {"tasks": [spec] * batch})["ids"]
    for start in range(0, len(ids), 500):
        client.wait(ids[start:start + 500])
    return ids


async def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    with Cluster(root / "lab") as lab:
        lab.start_host()
        lab.start_runner("n1", cores=4)
        client = lab.client(timeout=30)
        spec = {"command": ["true"], "cores": 1, "workdir": str(root), "user": "root"}
        ids = prefill(client, spec, args.prefill)
        token = client.call("token.create", {"name": "bench", "role": "admin"})["token"]
        url = lab.host.endpoints["web"]
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            api = Api(session, url, client, spec, ids[len(ids) // 2])
            times = await latency(api, args.rounds)
        brief = {**spec, "command": ["sleep", "0.05"]}  # running and final apart
        delays = event_delays(lab, client, url, token, brief, args.events)
    return {"latency": {op: {way: summary(v) for way, v in ways.items()}
                        for op, ways in times.items()},
            "events": {name: summary(v) for name, v in delays.items() if v},
            "rounds": args.rounds, "prefill": args.prefill}


def report(result: dict[str, Any]) -> str:
    lines = ["request latency (ms)      HTTP p50   p95   |  ZeroMQ p50   p95  | p50 ratio"]
    for op, ways in result["latency"].items():
        h, z = ways["http"], ways["zmq"]
        lines.append(f"  {op:<22} {h['p50']:8.2f} {h['p95']:6.2f}  | {z['p50']:10.2f} "
                     f"{z['p95']:6.2f}  | {h['p50'] / z['p50']:6.2f}x")
    lines.append("event delay (ms)               p50     p95    mean")
    for name, s in result["events"].items():
        lines.append(f"  {name:<26} {s['p50']:7.2f} {s['p95']:7.2f} {s['mean']:7.2f}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--prefill", type=int, default=1000)
    parser.add_argument("--max-seconds", type=int, default=600)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(BenchError("out of time")))
    signal.alarm(args.max_seconds)
    root = Path(tempfile.mkdtemp(prefix="zriver-bench-web-"))
    try:
        result = asyncio.run(run(args, root))
    finally:
        signal.alarm(0)
        shutil.rmtree(root, ignore_errors=True)
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
