#!/usr/bin/env python
"""Live logs benchmark: from a task's write to a follower's screen, and what tailing costs.

    python bench/logs.py [--lines 200] [--interval 0.01] [--rounds 3] [--idle-tasks 8]
                         [--idle-seconds 5] [--idle-rounds 3] [--json out.json]

Latency. A task (``python -c``) prints ``ready``, waits for a gate file, then prints
``--lines`` lines, each carrying ``time.time()`` taken just before its write (with a flush;
``--interval`` seconds between lines: the task's own pace; it runs as root, as this Python may
live where ``nobody`` cannot read it). The follower is the real client:
``python -m zriver logs -f ID`` as a separate process, its stdout a pipe read by this process,
which notes ``time.time()`` as each line arrives (the follower's "screen"). The gate is opened
once ``ready`` has reached the follower and a short settle has let its follow reach the
runner, so every timed line is a live one. Latency = arrival - the task's own timestamp (one
machine, one clock). Three ways in, interleaved per round:

* ``up``: ``zriver up`` (host and runner in one process, CURVE on, as a single-machine user
  runs it);
* ``split``: ``zriver host`` and ``zriver runner`` as two processes (CURVE on: chunks come over
  the follower's DEALER after ``task.follow``);
* ``split-plain``: the same with ``security = "none"`` (chunks on the XPUB/SUB).

Idle cost. With the split cluster, the runner agent's CPU time (all its threads, from
``/proc/<pid>/task/*/schedstat``) over
``--idle-seconds`` windows: no task (the baseline); then ``--idle-tasks`` tasks printing
continuously (a line every 10 ms each) that nobody follows, paused (silent: ``task.pause``)
and resumed (printing) in ``--idle-rounds`` interleaved pairs of windows (medians); then
the same with one of them followed. ``printing / silent`` is what tailing costs when nobody
follows: the ratio against the baseline of the same run, so it compares across machines.
Run it against another tree (``PYTHONPATH=OTHER python bench/logs.py``) for a before/after.

Bounded: every wait has a timeout, the whole run stops after ``--max-seconds``; the roles are
stopped with SIGTERM (SIGKILL if they linger) and the temporary directory is removed, also when
the benchmark fails or is interrupted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from dispatch import (BenchError, Cluster, Deadline, cpu_seconds, die_with_parent,  # noqa: E402
                      run_and_report, wait_endpoints,
                      percentile, stop_roles)

from zriver.client.api import Client  # noqa: E402
from zriver import lifecycle as lc  # noqa: E402

TIMED_TASK = """
import os, sys, time
print("ready", flush=True)
for _ in range(6000):
    if os.path.exists(sys.argv[1]):
        break
    time.sleep(0.005)
interval = float(sys.argv[3])
for i in range(int(sys.argv[2])):
    print(f"{i} {time.time():.6f}", flush=True)
    time.sleep(interval)
"""
CHATTY = ["sh", "-c", "while :; do echo 'a line of output from a busy task'; sleep 0.01; done"]
SETTLE = 0.3
CORES = 16
MODES = ("up", "split", "split-plain")


# ---- the clusters ----------------------------------------------------------------------------
class Up:
    """``zriver up`` in ``root`` (its ``ZRIVER_HOME``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen] = {}
        self.client: Client | None = None
        self.env = dict(os.environ, ZRIVER_HOME=str(root), PYTHONUNBUFFERED="1")
        self.log = root / "up.log"

    def _check_alive(self) -> None:
        if self.procs["host"].poll() is not None:
            raise BenchError(f"zriver up exited:\n{self.log.read_text()[-3000:]}")

    def start(self, deadline: Deadline) -> None:
        with open(self.log, "wb") as out:
            self.procs["host"] = subprocess.Popen(
                [sys.executable, "-m", "zriver", "up", "--port", "0", "--cores", "2"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                cwd=str(self.root), preexec_fn=die_with_parent)
        endpoints = wait_endpoints(self.root / "endpoints.json", self._check_alive,
                                   min(60.0, deadline.left()), "zriver up")
        self.client = Client(endpoints["router"], timeout=10.0,
                             key=str(self.root / "keys" / "client.key_secret"),
                             host_key=endpoints.get("host_key") or None)
        wait_online(self.client, deadline)

    def follower(self, task_id: int) -> list[str]:
        return [sys.executable, "-m", "zriver", "logs", "-f", str(task_id)]

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        stop_roles(self.procs, grace=10)


class _Cluster(Cluster):
    """``bench/dispatch.py``'s cluster with a runner offering ``CORES`` cores (the idle
    windows run more tasks than the machine has cores: they are nearly idle), its host on
    free ports, without the SSH relay and the web server."""

    def _launch(self, role: str, config: Path) -> subprocess.Popen:
        text = config.read_text()
        if role == "runner":
            text = text.replace("cores = 2\n", f"cores = {CORES}\n")
        else:  # any free ports: two such hosts (and `zriver up`) run at once here
            text += "stream_port = 0\nrelay_port = -1\nweb_port = -1\n"
        config.write_text(text)
        return super()._launch(role, config)


class Split:
    """``zriver host`` + ``zriver runner`` as two processes."""

    def __init__(self, root: Path, security: str) -> None:
        self.cluster = _Cluster(root, "none", None, security=security)
        self.env = dict(os.environ, ZRIVER_HOME=str(root), PYTHONUNBUFFERED="1")

    @property
    def client(self) -> Client:
        return self.cluster.client

    def start(self, deadline: Deadline) -> None:
        self.cluster.start(deadline)

    def follower(self, task_id: int) -> list[str]:
        flags = ["--host", self.cluster.endpoint]
        host_key = self.client.keys.server if self.client.keys else ""
        if host_key:
            flags += ["--key", str(self.cluster.root / "keys" / "client.key_secret"),
                      f"--host-key={host_key}"]
        else:
            flags += ["--key", "none"]
        return [sys.executable, "-m", "zriver", *flags, "logs", "-f", str(task_id)]

    def stop(self) -> None:
        self.cluster.stop()


def wait_online(client: Client, deadline: Deadline) -> None:
    limit = time.monotonic() + min(30.0, deadline.left())
    while not any(n["state"] == "online" for n in client.call("node.list")["nodes"]):
        if time.monotonic() > limit:
            raise BenchError("no runner came online within 30 s")
        time.sleep(0.05)


# ---- latency ---------------------------------------------------------------------------------
class Lines:
    """The follower's stdout, read on a thread: each line and when it arrived."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[tuple[bytes, float]] = []
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            self.lines.append((line, time.time()))

    def saw(self, text: bytes) -> bool:
        return any(line.strip() == text for line, _ in self.lines)


def latency_round(roles: Up | Split, work: Path, lines: int, interval: float,
                  deadline: Deadline) -> list[float]:
    """One timed task followed by ``zriver logs -f``: the per-line latencies (seconds)."""
    gate = work / f"gate-{time.monotonic_ns()}"
    spec = {"command": [sys.executable, "-c", TIMED_TASK, str(gate), str(lines), str(interval)],
            "workdir": str(work), "owner": "bench", "user": "root"}
    task_id = roles.client.call("task.submit", {"tasks": [spec]})["ids"][0]
    with open(work / f"follower-{task_id}.err", "wb") as err:
        proc = subprocess.Popen(roles.follower(task_id), stdout=subprocess.PIPE, stderr=err,
                                stdin=subprocess.DEVNULL, env=roles.env,
                                preexec_fn=die_with_parent)
    try:
        seen = Lines(proc)
        limit = time.monotonic() + min(30.0, deadline.left())
        while not seen.saw(b"ready"):
            if proc.poll() is not None or time.monotonic() > limit:
                task = roles.client.call("task.get", {"id": task_id})["task"]
                raise BenchError(f"the follower saw no 'ready' within 30 s (task {task['state']}"
                                 f", follower rc {proc.poll()})")
            time.sleep(0.005)
        time.sleep(SETTLE)  # the follow reaches the runner (the task waits at its gate)
        gate.touch()
        proc.wait(timeout=min(60.0 + lines * interval, deadline.left()))
        seen.thread.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    state = roles.client.call("task.get", {"id": task_id})["task"]["state"]
    if state != lc.COMPLETED:
        raise BenchError(f"the timed task ended {state}")
    out = []
    for line, arrived in seen.lines:
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit():
            out.append(arrived - float(parts[1]))
    if len(out) != lines:
        raise BenchError(f"the follower printed {len(out)} timed lines of {lines}")
    return out


def stats(values: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {"n": len(ms), "median_ms": statistics.median(ms), "p90_ms": percentile(ms, 90),
            "p99_ms": percentile(ms, 99), "max_ms": max(ms)}


# ---- idle cost -------------------------------------------------------------------------------
def process_cpu(pid: int) -> float:
    """CPU seconds of every thread of ``pid`` so far, to the nanosecond (``schedstat``: the
    ``/proc/<pid>/stat`` ticks are 10 ms, too coarse for a nearly idle process); falls back
    to those ticks where schedstat is missing."""
    total = 0
    try:
        for thread in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{thread}/schedstat") as handle:
                total += int(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return cpu_seconds(pid)
    return total / 1e9


def idle_cost(split: Split, work: Path, tasks: int, seconds: float, rounds: int,
              deadline: Deadline) -> dict[str, Any]:
    """The runner agent's CPU per second in each situation (see the module docstring):
    medians of ``rounds`` interleaved windows, the same tasks paused (silent) and resumed
    (printing)."""
    client, pid = split.client, split.cluster.pid("runner")

    def window() -> float:
        if deadline.left() < seconds + 5:
            raise BenchError("not enough time left for the idle windows")
        before, t0 = process_cpu(pid), time.monotonic()
        time.sleep(seconds)
        return (process_cpu(pid) - before) / (time.monotonic() - t0)

    def reach(ids: list[int], state: str) -> None:
        limit = time.monotonic() + 30
        while True:
            rows = [client.call("task.get", {"id": i})["task"] for i in ids]
            if all(r["state"] == state for r in rows):
                return
            if time.monotonic() > limit:
                raise BenchError(f"the {tasks} tasks did not all reach {state}: "
                                 f"{sorted({r['state'] for r in rows})}")
            time.sleep(0.05)

    def signal_all(ids: list[int], op: str, state: str) -> None:
        for task_id in ids:
            client.call(op, {"id": task_id})
        reach(ids, state)

    time.sleep(1.0)  # the runner settles after its start
    windows: dict[str, list[float]] = {"no_task": [window()], "silent": [],
                                       "printing_unfollowed": [], "printing_one_followed": []}
    specs = [{"command": CHATTY, "workdir": str(work), "owner": "bench", "user": "root"}
             for _ in range(tasks)]
    ids = client.call("task.submit", {"tasks": specs})["ids"]
    reach(ids, lc.RUNNING)
    try:
        for _ in range(rounds):
            signal_all(ids, "task.pause", lc.PAUSED)
            windows["silent"].append(window())
            signal_all(ids, "task.resume", lc.RUNNING)
            windows["printing_unfollowed"].append(window())
        with subprocess.Popen(split.follower(ids[0]), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                              env=split.env, preexec_fn=die_with_parent) as follower:
            try:
                time.sleep(1.0)  # its start-up
                windows["printing_one_followed"].append(window())
            finally:
                follower.kill()
    finally:
        for task_id in ids:
            client.call("task.kill", {"id": task_id})
        client.wait(ids)
    result: dict[str, Any] = {"tasks": tasks, "seconds": seconds, "rounds": rounds,
                              "windows": windows}
    result.update({key: statistics.median(values) for key, values in windows.items()})
    base = result["no_task"] or 1e-9
    for key in ("silent", "printing_unfollowed", "printing_one_followed"):
        result[f"{key}_vs_no_task"] = result[key] / base
    result["printing_vs_silent"] = result["printing_unfollowed"] / (result["silent"] or 1e-9)
    return result


# ---- the run ---------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    deadline = Deadline(args.max_seconds)
    root = Path(tempfile.mkdtemp(prefix="zriver-bench-logs-"))
    root.chmod(0o711)  # a root runner runs the tasks as its task_user: they enter work/
    work = root / "work"
    work.mkdir()
    work.chmod(0o777)
    roles: dict[str, Up | Split] = {}
    try:
        for mode in args.modes:
            roles[mode] = (Up(root / "up") if mode == "up" else
                           Split(root / mode, "none" if mode == "split-plain" else "curve"))
            roles[mode].start(deadline)
            if mode != "up":
                roles[mode].cluster.root.chmod(0o711)
        samples: dict[str, list[float]] = {mode: [] for mode in args.modes}
        rounds: list[dict[str, Any]] = []
        for number in range(args.rounds):
            for mode in args.modes:
                lags = latency_round(roles[mode], work, args.lines, args.interval, deadline)
                samples[mode] += lags
                rounds.append({"round": number + 1, "mode": mode, **stats(lags)})
                print(round_line(rounds[-1]), flush=True)
        result: dict[str, Any] = {
            "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
            "lines": args.lines, "interval": args.interval, "rounds": rounds,
            "latency": {mode: stats(values) for mode, values in samples.items()}}
        if args.idle_tasks and "split" in roles:
            result["idle"] = idle_cost(roles["split"], work, args.idle_tasks,
                                       args.idle_seconds, args.idle_rounds, deadline)
        return result
    finally:
        for role in roles.values():
            try:
                role.stop()
            except Exception as exc:  # go on stopping the others
                print(f"stopping failed: {exc}", file=sys.stderr)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"kept {root}", file=sys.stderr)


def round_line(row: dict[str, Any]) -> str:
    return (f"round {row['round']} {row['mode']:<12} median {row['median_ms']:6.1f} ms  "
            f"p90 {row['p90_ms']:6.1f}  p99 {row['p99_ms']:6.1f}  max {row['max_ms']:6.1f}")


def table(result: dict[str, Any]) -> str:
    out = [f"{result['lines']} lines per round, {result['interval'] * 1000:g} ms apart; "
           "latency from the task's write to the follower's stdout",
           f"{'':<12} {'median':>8} {'p90':>8} {'p99':>8} {'max':>8}  (ms)"]
    for mode, s in result["latency"].items():
        out.append(f"{mode:<12} {s['median_ms']:8.1f} {s['p90_ms']:8.1f} {s['p99_ms']:8.1f} "
                   f"{s['max_ms']:8.1f}")
    idle = result.get("idle")
    if idle:
        out += ["", f"runner agent CPU (split), {idle['seconds']:g} s windows, "
                    f"{idle['tasks']} tasks:"]
        for key in ("no_task", "silent", "printing_unfollowed", "printing_one_followed"):
            ratio = "" if key == "no_task" else f"  {idle[f'{key}_vs_no_task']:.2f}x no task"
            out.append(f"  {key:<22} {idle[key] * 1000:7.2f} ms/s{ratio}")
        out.append(f"  printing / silent      {idle['printing_vs_silent']:.2f}x")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=200, help="timed lines per round")
    parser.add_argument("--interval", type=float, default=0.01,
                        help="seconds between the task's lines")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per mode")
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--idle-tasks", type=int, default=8,
                        help="tasks of the idle-cost windows (0: skip them; needs split)")
    parser.add_argument("--idle-seconds", type=float, default=5.0, help="each idle window")
    parser.add_argument("--idle-rounds", type=int, default=3,
                        help="interleaved silent/printing window pairs")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="overall time bound")
    parser.add_argument("--json", help="also write the raw results to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    args.modes = [m for m in args.modes.split(",") if m]
    if not set(args.modes) <= set(MODES) or not args.modes:
        parser.error(f"--modes: some of {', '.join(MODES)}")
    if not 1 <= args.lines <= 10_000 or not 1 <= args.rounds <= 20 \
            or not 0 <= args.interval <= 1 or not 0 <= args.idle_tasks <= 64 \
            or not 1 <= args.idle_seconds <= 120 or not 1 <= args.idle_rounds <= 20:
        parser.error("--lines 1..10000, --rounds 1..20, --interval 0..1, --idle-tasks 0..64, "
                     "--idle-seconds 1..120, --idle-rounds 1..20")

    return run_and_report(run, table, args)


if __name__ == "__main__":
    sys.exit(main())
