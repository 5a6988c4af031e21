#!/usr/bin/env python
"""Load generator: a real ``zriver host`` driven by N simulated nodes from this process.

    python bench/loadgen.py [--nodes 200] [--tasks 20000] [--duration 0.2] [--json out.json]

Starts two ``python -m zriver host`` processes in a temporary directory (ephemeral ports on
127.0.0.1, the default heartbeat interval unless ``--heartbeat-interval``, ``security =
"none"`` or, with ``--security curve``, CURVE with a runner key per node): the host under test,
driven by ``--nodes`` simulated runners (``bench/simnodes.py``: a DEALER and a PUB each, real
heartbeats, real registrations and update batches, all on one uvloop loop), and a baseline
host with one simulated node; an admin client of each runs on the same loop. In order:

1. **idle, no nodes**: host CPU over ``--idle-seconds`` (the host's fixed cost: its timers);
2. **idle, 20 nodes** and **idle, N nodes** (plus the probe node of 4): host CPU %, and host CPU per
   heartbeat (above the no-node cost; each heartbeat interval an idle node publishes one
   ``hb.<node>``, or, every other interval, sends it as a ``runner.heartbeat`` request whose
   reply renews its lease; with ``--protocol ping`` it publishes every one and pings):
   flat means one heartbeat costs no more with more nodes;
   With ``--compare-protocols PAIRS``, then the idle N-node
   CPU with the nodes speaking the protocol the host offers (``runner.heartbeat`` requests
   when the lease is due) and as earlier runners do (every ``hb.<node>`` published, plus a
   ``runner.ping`` and its reply), interleaved, windows of ``--idle-seconds``
   each: host CPU seconds per window (CPU time, robust on a shared machine), medians and the
   median of the per-pair ratios. ``--idle-only`` stops after this phase;
3. **submit p50, 1 node vs N nodes**: ``--rounds`` interleaved rounds of ``--samples``
   single-task submits one after another (reply time at the client; the tasks run for 0 s,
   so with 1 node as with N each is placed and started at once), on the baseline host then
   on the host under test; the figure is the median of the per-round ratios;
4. **registration**: ``--samples`` registrations of one more node (drained, and offering only
   the ``docker`` backend: no task is placed there) with no live task;
5. **live tasks**: ``--tasks`` tasks submitted (1,000 per submit) while the nodes hold what
   they start: host RSS before and after (per 10,000 live tasks, queued + running), then idle
   CPU per heartbeat and registration again with them all live (flat: as 2 and 4);
6. **throughput**: the nodes release their tasks (each "runs" ``--duration`` s), the rest
   start as slots free, until all are ``completed`` (checked with ``task.wait``): tasks per
   second from the release.

Checks (a failure is reported, and the exit status is 1): all tasks completed, every node
``online`` at the end, no ``error`` line in the host log, no update refused. Bounded: every
wait has a timeout and the run stops after ``--max-seconds``; the hosts are stopped (SIGTERM,
then SIGKILL) and the temporary directory removed on exit, on an error and on Ctrl-C; the
hosts also get SIGTERM when this process dies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dispatch import (BenchError, Deadline, die_with_parent, percentile,  # noqa: E402
                      run_and_report)
from simnodes import Fleet  # noqa: E402

import zriver  # noqa: E402
from zriver import eventloop  # noqa: E402
from zriver import keys as keyfiles  # noqa: E402
from zriver.keys import ClientKeys  # noqa: E402
from zriver.protocol import decode, encode  # noqa: E402
from zriver.wire import Channel  # noqa: E402

SUBMIT_CHUNK = 1000
SMALL_FLEET = 20
PROBE = "probe"
SPEC = {"command": ["true"], "cores": 1, "owner": "loadgen", "workdir": "/tmp"}


# ---- the host under test -------------------------------------------------------------------
class HostProcess:
    """``python -m zriver host`` in ``root`` (see the module docstring)."""

    def __init__(self, root: Path, security: str, heartbeat_interval: float | None) -> None:
        self.root, self.security = root, security
        root.mkdir(parents=True, exist_ok=True)
        self.data_dir = root / "host"
        self.log = root / "host.log"
        self.admin_secret = root / "keys" / "admin.key_secret"
        extra = f"heartbeat_interval = {heartbeat_interval}\n" if heartbeat_interval else ""
        self.config = root / "host.toml"
        self.config.write_text(
            f'data_dir = "{self.data_dir}"\nbind_address = "127.0.0.1"\nrouter_port = 0\n'
            f'xsub_port = 0\nxpub_port = 0\nstream_port = 0\nrelay_port = 0\nweb_port = 0\n'
            f'security = "{security}"\n{extra}')
        self.proc: subprocess.Popen | None = None
        self.endpoints: dict[str, Any] = {}

    def start(self, deadline: Deadline) -> None:
        if self.security == "curve":  # what `zriver init keys` makes for the admin
            public, _ = keyfiles.ensure_client_pair(self.admin_secret, "loadgen", "admin")
            keyfiles.ensure_admin_import(self.data_dir, public, "loadgen")
        source = str(Path(zriver.__file__).resolve().parent.parent)  # the zriver imported here
        path = os.pathsep.join([source] + [p for p in [os.environ.get("PYTHONPATH")] if p])
        env = dict(os.environ, ZRIVER_HOME=str(self.root), PYTHONUNBUFFERED="1",
                   PYTHONPATH=path)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "zriver", "host", "--config", str(self.config)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                cwd=str(self.root), preexec_fn=die_with_parent)
        limit = time.monotonic() + min(30.0, deadline.left())
        path = self.data_dir / "endpoints.json"
        while not self.endpoints:
            self.check_alive()
            with contextlib.suppress(OSError, ValueError):
                self.endpoints = json.loads(path.read_text())
            if time.monotonic() > limit:
                raise BenchError("the host did not write endpoints.json within 30 s")
            time.sleep(0.05)

    def local(self, name: str) -> str:
        """``tcp://127.0.0.1:PORT`` of endpoint ``name`` (router, xsub, xpub)."""
        return f"tcp://127.0.0.1:{self.endpoints[name].rsplit(':', 1)[1]}"

    def admin_keys(self) -> ClientKeys | None:
        if self.security != "curve":
            return None
        public, secret = keyfiles.load_pair(self.admin_secret)
        return ClientKeys(public, secret, self.endpoints["host_key"])

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError(f"the host exited with {self.proc.returncode}:\n{self.tail()}")

    def cpu(self) -> float:
        """CPU seconds of the host's threads (its ZeroMQ I/O threads too), to the nanosecond
        (``/proc/PID/task/*/schedstat``; the clock-tick figures of ``/proc/PID/stat`` are
        too coarse for a few milliseconds of heartbeats)."""
        total = 0
        for entry in os.scandir(f"/proc/{self.proc.pid}/task"):
            with contextlib.suppress(OSError):
                with open(f"{entry.path}/schedstat") as f:
                    total += int(f.read().split()[0])
        return total / 1e9

    def rss(self) -> int:
        return psutil.Process(self.proc.pid).memory_info().rss

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def errors(self) -> list[str]:
        """Lines of the host log at level error (or worse), and tracebacks."""
        return [line for line in self.log.read_text(errors="replace").splitlines()
                if "[error" in line or "[critical" in line or "Traceback" in line]

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Caller:
    """An admin client on the loop: ``await call(op, body)`` (a DEALER ``Channel``)."""

    def __init__(self, fleet: Fleet, endpoint: str, keys: ClientKeys | None) -> None:
        self.sock = fleet.socket(zmq.DEALER, keys)
        self.sock.connect(endpoint)
        self.channel = Channel(self.sock, self._on_message)
        self.calls: dict[int, asyncio.Future] = {}
        self.rid = 0

    def _on_message(self, frames: list[bytes]) -> None:
        env = decode(frames[-1], 64 << 20)
        future = self.calls.pop(env.rid, None)
        if future is None or future.done():
            return
        if env.op == "ok":
            future.set_result(env.body)
        else:
            future.set_exception(BenchError(f"{env.code}: {env.msg}"))

    async def call(self, op: str, body: dict[str, Any] | None = None,
                   timeout: float = 30.0) -> dict[str, Any]:
        self.rid += 1
        future = asyncio.get_running_loop().create_future()
        self.calls[self.rid] = future
        self.channel.send([encode(op, self.rid, body or {})])
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise BenchError(f"{op}: no reply within {timeout} s") from None

    def close(self) -> None:
        self.channel.close()
        self.sock.close(0)


# ---- measurements --------------------------------------------------------------------------
async def idle(host: HostProcess, fleet: Fleet, seconds: float) -> dict[str, float]:
    """Host CPU while only heartbeats (and pings) arrive."""
    beats0, pings0 = fleet.counts["heartbeats"], fleet.counts["pings"]
    cpu0, t0 = host.cpu(), time.monotonic()
    await asyncio.sleep(seconds)
    cpu, wall = host.cpu() - cpu0, time.monotonic() - t0
    return {"seconds": wall, "cpu_seconds": cpu, "cpu_percent": 100 * cpu / wall,
            "heartbeats": fleet.counts["heartbeats"] - beats0,
            "pings": fleet.counts["pings"] - pings0, "nodes": len(fleet.nodes)}


async def compare_protocols(host: HostProcess, fleet: Fleet, seconds: float, pairs: int,
                            interval: float) -> dict[str, Any]:
    """Idle host CPU with heartbeats as requests and as publications + pings, ``pairs``
    interleaved windows of each (one interval of settling before each window)."""
    rounds = []
    try:
        for _ in range(pairs):
            pair = {}
            for mode, requests in (("request", True), ("ping", False)):
                for node in fleet.nodes.values():
                    node.heartbeat_request = requests
                await asyncio.sleep(interval)
                pair[mode] = await idle(host, fleet, seconds)
            rounds.append(pair)
    finally:
        for node in fleet.nodes.values():
            node.heartbeat_request = fleet.heartbeat_requests
    pct = {mode: statistics.median(r[mode]["cpu_percent"] for r in rounds)
           for mode in ("request", "ping")}
    return {"rounds": rounds, "cpu_percent_request": pct["request"],
            "cpu_percent_ping": pct["ping"],
            "ratio": statistics.median(r["request"]["cpu_seconds"] / r["ping"]["cpu_seconds"]
                                       for r in rounds)}


def per_heartbeat(window: dict[str, float], empty: dict[str, float]) -> float:
    """Host CPU microseconds per heartbeat above the no-node cost of ``empty``."""
    extra = window["cpu_seconds"] - empty["cpu_percent"] / 100 * window["seconds"]
    return 1e6 * max(0.0, extra) / max(1, window["heartbeats"])


async def submit_latency(caller: Caller, fleet: Fleet, samples: int) -> dict[str, float]:
    """Single-task submits one after another: reply times in milliseconds. The tasks run for
    0 s (with 1 node as with N, each is placed and started at once, never queued)."""
    times = []
    duration, fleet.task_seconds = fleet.task_seconds, 0.0
    try:
        for _ in range(samples):
            t0 = time.perf_counter()
            await caller.call("task.submit", {"tasks": [SPEC]})
            times.append(1000 * (time.perf_counter() - t0))
    finally:
        fleet.task_seconds = duration
    return {"p50_ms": statistics.median(times), "p90_ms": percentile(times, 90),
            "samples": samples}


async def submit_rounds(base: Side, main: Side, samples: int, rounds: int) -> dict[str, Any]:
    """Submit p50 on the 1-node baseline host and on the N-node host, in interleaved rounds
    (after a warm-up of each): medians over the rounds, and the median per-round ratio."""
    for side in (base, main):
        await submit_latency(side.caller, side.fleet, max(10, samples // 5))
    pairs = []
    for _ in range(rounds):
        one = await submit_latency(base.caller, base.fleet, samples)
        many = await submit_latency(main.caller, main.fleet, samples)
        pairs.append((one["p50_ms"], many["p50_ms"]))
    return {"p50_ms_1": statistics.median(p[0] for p in pairs),
            "p50_ms_n": statistics.median(p[1] for p in pairs),
            "ratio": statistics.median(p[1] / p[0] for p in pairs), "rounds": pairs,
            "samples": samples}


async def registrations(host: HostProcess, fleet: Fleet, samples: int) -> dict[str, float]:
    """``samples`` registrations of the probe node: round trip (ms) and host CPU each (us)."""
    probe = fleet.nodes[PROBE]
    trips, cpu0 = [], host.cpu()
    for _ in range(samples):
        trips.append(1000 * await probe.register())
    return {"p50_ms": statistics.median(trips),
            "cpu_us": 1e6 * (host.cpu() - cpu0) / samples, "samples": samples}


async def wait_for(predicate, timeout: float, what: str, host: HostProcess) -> None:
    """Poll ``predicate`` every 20 ms until true; ``BenchError`` after ``timeout``."""
    end = time.monotonic() + timeout
    while not predicate():
        host.check_alive()
        if time.monotonic() > end:
            raise BenchError(f"{what}: not within {timeout:.0f} s")
        await asyncio.sleep(0.02)


async def submit_all(caller: Caller, count: int) -> tuple[list[int], float]:
    """``count`` tasks in submits of ``SUBMIT_CHUNK``: their ids and the seconds it took."""
    ids: list[int] = []
    t0 = time.perf_counter()
    while len(ids) < count:
        chunk = min(SUBMIT_CHUNK, count - len(ids))
        ids += (await caller.call("task.submit", {"tasks": [SPEC] * chunk}, 60.0))["ids"]
    return ids, time.perf_counter() - t0


async def outcomes(caller: Caller, ids: list[int]) -> dict[str, int]:
    """How many of ``ids`` ended in each state (``task.wait``, 5,000 ids a call)."""
    states: dict[str, int] = {}
    for start in range(0, len(ids), 5000):
        reply = await caller.call("task.wait", {"ids": ids[start:start + 5000], "timeout": 0.01})
        for task in reply["tasks"]:
            states[task["state"]] = states.get(task["state"], 0) + 1
    return states


# ---- the run -------------------------------------------------------------------------------
async def node_keys(caller: Caller, host: HostProcess, names: list[str]) -> dict[str, ClientKeys]:
    """A runner key per node, added by the admin (``zriver keys add NODE --role runner``)."""
    keys = {}
    for name in names:
        public, secret = (k.decode() for k in zmq.curve_keypair())
        await caller.call("key.add", {"name": name, "role": "runner", "public_key": public})
        keys[name] = ClientKeys(public, secret, host.endpoints["host_key"])
    return keys


class Side:
    """A host under test, its simulated nodes and an admin client on this loop."""

    def __init__(self, host: HostProcess, args: argparse.Namespace) -> None:
        self.host = host
        self.fleet = Fleet(host.local("router"), host.local("xsub"), cores=args.cores,
                           task_seconds=args.duration,
                           heartbeat_requests=args.protocol == "request")
        self.caller = Caller(self.fleet, host.local("router"), host.admin_keys())

    async def keys_for(self, names: list[str]) -> None:
        if self.host.security == "curve":
            self.fleet.keys.update(await node_keys(self.caller, self.host, names))

    def close(self) -> None:
        self.caller.close()
        self.fleet.close()


async def drive(args: argparse.Namespace, host: HostProcess, baseline: HostProcess,
                deadline: Deadline) -> dict:
    names = [f"sim{i:03d}" for i in range(args.nodes)]
    main, base = Side(host, args), Side(baseline, args)
    try:
        await main.keys_for(names + [PROBE])
        await base.keys_for(names[:1])
        await base.fleet.add(names[:1], deadline.left())
        return await phases(args, main, base, names, deadline)
    finally:
        main.close()
        base.close()


async def phases(args: argparse.Namespace, main: Side, base: Side, names: list[str],
                 deadline: Deadline) -> dict:
    host, fleet, caller = main.host, main.fleet, main.caller
    result: dict[str, Any] = {"nodes": args.nodes, "tasks": args.tasks, "cores": args.cores,
                              "duration": args.duration, "security": args.security,
                              "protocol": args.protocol}
    hello = await caller.call("cluster.hello")
    result["heartbeat_interval"] = interval = hello["heartbeat_interval"]
    window = max(args.idle_seconds, 2 * interval)
    result["idle_0"] = await idle(host, fleet, window)
    small = min(SMALL_FLEET, args.nodes)
    await fleet.add(names[:small], deadline.left())
    await asyncio.sleep(interval)  # every node's heartbeat under way
    result["idle_small"] = await idle(host, fleet, window)
    await fleet.add(names[small:], deadline.left())
    await fleet.add([PROBE], deadline.left(), backends=["docker"])
    # Drained too: a free node that fits no queued task would make every pass after its
    # registration try each queued task on every node (the scheduler's cost, not the one
    # measured here).
    await caller.call("node.drain", {"name": PROBE, "reason": "the registration probe"})
    await asyncio.sleep(interval)
    result["idle_all"] = await idle(host, fleet, window)
    if args.compare_protocols:
        result["protocols"] = await compare_protocols(host, fleet, window,
                                                      args.compare_protocols, interval)
    if args.idle_only:
        result["fleet"] = dict(fleet.counts)
        result["problems"] = dict(fleet.problems)
        return result
    result["submit"] = await submit_rounds(base, main, args.samples, args.rounds)
    result["register_empty"] = await registrations(host, fleet, args.samples)
    await live_tasks(args, host, fleet, caller, result, window, deadline)
    result["rss_end"] = host.rss()
    result["nodes_online"] = sum(n["state"] == "online"
                                 for n in (await caller.call("node.list"))["nodes"])
    result["fleet"] = dict(fleet.counts)
    result["problems"] = dict(fleet.problems)
    return result


async def live_tasks(args: argparse.Namespace, host: HostProcess, fleet: Fleet, caller: Caller,
                     result: dict[str, Any], window: float, deadline: Deadline) -> None:
    """Phases 6 and 7 of the module docstring."""
    await wait_for(lambda: fleet.live() == 0 and fleet.unacked() == 0, deadline.left(),
                   "the latency tasks to end", host)
    fleet.hold = True
    rss0 = host.rss()
    ids, took = await submit_all(caller, args.tasks)
    slots = args.nodes * args.cores
    await wait_for(lambda: fleet.live() >= min(args.tasks, slots) and fleet.unacked() == 0,
                   deadline.left(), "the nodes to fill", host)
    rss1 = host.rss()
    result["live"] = {"tasks": args.tasks, "running": fleet.live(), "submit_seconds": took,
                      "submit_per_second": args.tasks / took, "rss_before": rss0,
                      "rss_after": rss1,
                      "rss_per_10k": (rss1 - rss0) * 10_000 / max(1, args.tasks)}
    result["idle_live"] = await idle(host, fleet, window)
    result["register_live"] = await registrations(host, fleet, args.samples)
    done0 = fleet.counts["completed"]
    t0 = time.perf_counter()
    fleet.release()
    await wait_for(lambda: fleet.counts["completed"] - done0 >= args.tasks
                   and fleet.unacked() == 0, deadline.left(), "every task to complete", host)
    took = time.perf_counter() - t0
    result["throughput"] = {"seconds": took, "per_second": args.tasks / took,
                            "states": await outcomes(caller, ids)}


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The figures of the run, and the checks that failed (``failures``)."""
    empty = result["idle_0"]
    s = {
        "idle_cpu_percent_all": result["idle_all"]["cpu_percent"],
        "idle_cpu_percent_0": empty["cpu_percent"],
        "heartbeat_us_small": per_heartbeat(result["idle_small"], empty),
        "heartbeat_us_all": per_heartbeat(result["idle_all"], empty),
    }
    if "protocols" in result:
        s.update({f"idle_cpu_percent_{mode}": result["protocols"][f"cpu_percent_{mode}"]
                  for mode in ("request", "ping")})
        s["idle_cpu_ratio_request_ping"] = result["protocols"]["ratio"]
    if "submit" not in result:  # --idle-only
        s["heartbeat_ratio"] = s["heartbeat_us_all"] / max(1e-9, s["heartbeat_us_small"])
        failures = [f"errors in the host log: {result['host_errors'][:5]}"] \
            if result["host_errors"] else []
        s["failures"] = failures
        return s
    s.update({
        "heartbeat_us_live": per_heartbeat(result["idle_live"], empty),
        "submit_p50_ms_1": result["submit"]["p50_ms_1"],
        "submit_p50_ms_n": result["submit"]["p50_ms_n"],
        "submit_ratio": result["submit"]["ratio"],
        "register_cpu_us_empty": result["register_empty"]["cpu_us"],
        "register_cpu_us_live": result["register_live"]["cpu_us"],
        "rss_mib_per_10k_live": result["live"]["rss_per_10k"] / (1 << 20),
        "throughput_per_second": result["throughput"]["per_second"],
    })
    s["heartbeat_ratio"] = s["heartbeat_us_all"] / max(1e-9, s["heartbeat_us_small"])
    s["register_ratio"] = s["register_cpu_us_live"] / max(1e-9, s["register_cpu_us_empty"])
    states = result["throughput"]["states"]
    failures = []
    if states.get("completed", 0) != result["tasks"]:
        failures.append(f"not every task completed: {states}")
    if result["nodes_online"] != result["nodes"] + 1:
        failures.append(f"{result['nodes_online']} of {result['nodes'] + 1} nodes online")
    if any(p.startswith("update_refused") for p in result["problems"]):
        failures.append(f"updates refused: {result['problems']}")
    if result["host_errors"]:
        failures.append(f"errors in the host log: {result['host_errors'][:5]}")
    s["failures"] = failures
    return s


def table(result: dict[str, Any]) -> str:
    s = result["summary"]
    n = result["nodes"]
    rows = [
        f"{n} nodes ({result['cores']} cores each), {result['tasks']} tasks of "
        f"{result['duration']} s, heartbeat every {result['heartbeat_interval']} s, "
        f"security {result['security']}, heartbeats as {result['protocol']}s",
        f"host CPU idle: {s['idle_cpu_percent_0']:.2f}% with no node, "
        f"{s['idle_cpu_percent_all']:.2f}% with {n} nodes",
    ]
    if "protocols" in result:
        p = result["protocols"]
        rows.append(
            f"host CPU idle with {n} nodes, {len(p['rounds'])} interleaved pairs of windows: "
            f"{p['cpu_percent_request']:.2f}% with heartbeat requests, "
            f"{p['cpu_percent_ping']:.2f}% with published heartbeats and pings "
            f"(CPU time ratio, median of pairs: {p['ratio']:.2f})")
    if "submit" not in result:
        rows += [f"FAILED: {failure}" for failure in s["failures"]] or ["all checks passed"]
        return "\n".join(rows)
    live = result["live"]
    rows += [
        f"host CPU per heartbeat: {s['heartbeat_us_small']:.0f} us at "
        f"{result['idle_small']['nodes']} nodes, {s['heartbeat_us_all']:.0f} us at {n + 1}, "
        f"{s['heartbeat_us_live']:.0f} us with {live['tasks']} live tasks "
        f"(ratio {n + 1}/{result['idle_small']['nodes']}: {s['heartbeat_ratio']:.2f})",
        f"submit p50: {s['submit_p50_ms_1']:.2f} ms on a 1-node host, "
        f"{s['submit_p50_ms_n']:.2f} ms with {n} nodes (median ratio of "
        f"{len(result['submit']['rounds'])} interleaved rounds: {s['submit_ratio']:.2f})",
        f"registration, host CPU: {s['register_cpu_us_empty']:.0f} us with no live task, "
        f"{s['register_cpu_us_live']:.0f} us with {live['tasks']} (ratio "
        f"{s['register_ratio']:.2f})",
        f"host RSS: {s['rss_mib_per_10k_live']:.1f} MiB per 10,000 live tasks "
        f"({live['running']} running, the rest queued; submitted at "
        f"{live['submit_per_second']:.0f}/s)",
        f"throughput: {result['tasks']} tasks in {result['throughput']['seconds']:.1f} s "
        f"({s['throughput_per_second']:.0f}/s), {result['throughput']['states']}",
    ]
    rows += [f"FAILED: {failure}" for failure in s["failures"]] or ["all checks passed"]
    return "\n".join(rows)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """One run (see the module docstring); the host stopped and its directory removed after."""
    deadline = Deadline(args.max_seconds)
    root = Path(tempfile.mkdtemp(prefix="zriver-loadgen-"))
    host = HostProcess(root / "main", args.security, args.heartbeat_interval)
    baseline = HostProcess(root / "baseline", args.security, args.heartbeat_interval)
    try:
        host.start(deadline)
        baseline.start(deadline)
        result = eventloop.run(drive(args, host, baseline, deadline))
        result["host_errors"] = host.errors() + baseline.errors()
        result["summary"] = summary(result)
        return result
    except BaseException:
        for role in (host, baseline):
            if role.proc is not None:
                sys.stderr.write(f"host log tail ({role.root.name}):\n{role.tail()}\n")
        raise
    finally:
        host.stop()
        baseline.stop()
        shutil.rmtree(root, ignore_errors=True)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=200, help="simulated nodes (1..1000)")
    parser.add_argument("--tasks", type=int, default=20_000, help="tasks driven (1..200000)")
    parser.add_argument("--duration", type=float, default=0.2,
                        help="seconds each task 'runs' on its node (default 0.2)")
    parser.add_argument("--cores", type=int, default=4, help="cores per simulated node")
    parser.add_argument("--samples", type=int, default=100,
                        help="submits (and registrations) per latency measurement")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds of submits, 1-node host then N-node host")
    parser.add_argument("--idle-seconds", type=float, default=10.0,
                        help="length of each idle window (at least two heartbeat intervals)")
    parser.add_argument("--heartbeat-interval", type=float, default=None,
                        help="the host's heartbeat_interval (default: the host's default)")
    parser.add_argument("--security", choices=("none", "curve"), default="none")
    parser.add_argument("--protocol", choices=("request", "ping"), default="request",
                        help="the nodes' heartbeats: runner.heartbeat requests when the lease "
                             "is due, where the host offers them (default), or all published "
                             "with runner.ping (as runners before them)")
    parser.add_argument("--compare-protocols", type=int, default=0, metavar="PAIRS",
                        help="after the idle phases, this many interleaved pairs of idle "
                             "windows with heartbeat requests and with publications + pings")
    parser.add_argument("--idle-only", action="store_true",
                        help="stop after the idle phases (and --compare-protocols)")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="overall time bound")
    parser.add_argument("--json", help="also write the raw results to this file")
    args = parser.parse_args(argv)
    if not (1 <= args.nodes <= 1000 and 1 <= args.tasks <= 200_000 and 1 <= args.cores <= 256
            and 0 <= args.duration <= 3600 and 1 <= args.samples <= 10_000
            and 0 < args.idle_seconds <= 600 and 1 <= args.rounds <= 20
            and 0 <= args.compare_protocols <= 20):
        parser.error("--nodes 1..1000, --tasks 1..200000, --cores 1..256, --duration 0..3600, "
                     "--samples 1..10000, --idle-seconds up to 600, --rounds 1..20, "
                     "--compare-protocols 0..20")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)

    return run_and_report(run, table, args, "load generator",
                          failed=lambda result: bool(result["summary"]["failures"]))


if __name__ == "__main__":
    sys.exit(main())
