#!/usr/bin/env python
"""Dispatch benchmark: zriver's control plane against bare ``os.posix_spawn``.

    python bench/dispatch.py [--tasks 1000] [--rounds 3] [--samples 200] [--json out.json]

Starts real clusters of one node (configs in a temporary directory, ephemeral ports on
127.0.0.1, ``heartbeat_interval = 1.0``, runner ``cores = 2``), by default two of them:

* ``split``: a host and a runner as two processes (``python -m zriver host`` and
  ``python -m zriver runner``), talking over loopback ZeroMQ;
* ``embedded``: ``python -m zriver up --port 0 --cores 2``, host and runner in one process
  on one loop, the runner on the in-process link (``zriver.inproc``);

(``--clusters`` picks others: ``split-open`` and ``embedded-open`` are the same with
``security = "none"``), then measures, for the trivial command ``true``:

* throughput: ``--tasks`` tasks submitted in one ``task.submit`` call, until ``task.wait``
  says all are final (all must be ``completed``);
* single-task latency: ``--samples`` tasks submitted one at a time. Timestamps are taken on the
  client with ``time.perf_counter`` when the submit is sent, when its reply arrives and when the
  ``evt.task.<id>`` events with state ``running`` and a final state arrive on a SUB socket
  (the final event is published only after the host committed the result);

each beside a baseline measured in the same run and on the same machine:

* bare throughput: the same command spawned with ``os.posix_spawn`` (stdin from /dev/null,
  stdout/stderr to a new log file per task, own process group), two at a time, reaped with
  ``waitpid`` when its pidfd becomes readable;
* bare latency: one such spawn + wait at a time;
* the log files alone: the CPU it takes to create a task's two log files on the file system
  the logs are on (``TMPDIR``'s), once per round. Both sides pay it (bare in its children,
  zriver in the node's keeper), and it varies more than anything else here: from ~5 us on
  tmpfs to several hundred on an ext4 without a journal that scans recently deleted inodes.
  ``TMPDIR=/dev/shm`` puts the logs (and the stores) on tmpfs.

The owner ``bench`` has no account on the machine, so a runner running as root runs the
tasks as its ``task_user`` (``nobody``): the account switch is in what zriver is measured
doing, not in the baseline.

Rounds are interleaved (bare, split, embedded, bare, split, embedded, ...) and the table
shows medians over the rounds and the ratios (median of the per-round ratios; embedded/split
too). Beside wall-clock rates it shows the CPU time per task of every process involved (bare:
the launcher and its children; zriver: the host, the runner agent, the node's task keeper and
its children, i.e. the tasks; embedded: host and agent are one process), read from /proc: on
a machine where the tasks and the control plane share two cores, ``bare CPU / zriver CPU`` is
the ceiling of the throughput ratio, and it is much less disturbed by other load than the
rates are.

A round during which other processes (or the hypervisor: steal) used more than
``--noise-threshold`` of the machine (system-wide busy time minus ours, from /proc/stat) is
marked noisy, replaced by an extra round (at most ``--extra-rounds``) and left out of the
medians unless no round was quiet. A VM throttled by its host shows idle time instead, which
this cannot see: compare ratios, not absolute rates, between runs.

Profiling (see docs/performance.md): ``--profile cprofile --profile-dir DIR`` runs both roles
under cProfile (``host.prof``/``runner.prof``, ``embedded-up.prof``, written when the roles
stop; wall clock);
``--profile cputime`` does the same with the main thread's CPU clock (``bench/cpuprof.py``);
``--profile py-spy`` attaches ``py-spy record`` (raw collapsed stacks, ``split-host-r1.txt``,
``embedded-up-r1.txt``, ``split-keeper-r1.txt``, ...) to the roles and the keeper during the
zriver throughput rounds only; ``--profile attach --attach
'perf record -g -p {pid} -o {out}.perf'`` does the same with any command. ``--skip-latency``
keeps a profile on the batch. ``--wrapper SCRIPT`` starts the roles through a script that can
apply experimental patches first.

Bounded: every wait has a timeout and the whole run stops after ``--max-seconds``. The roles
are stopped with SIGTERM (SIGKILL if they linger) and the temporary directory is removed, also
when the benchmark fails or is interrupted; the roles also get SIGTERM if this process dies.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import select
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import psutil
import zmq

from zriver import keys as keyfiles
from zriver.client.api import Client
from zriver import lifecycle as lc
from zriver.protocol import decode, encode

MAX_FRAME = 64 * 1024 * 1024
OUT_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
COMMAND = ["true"]


class BenchError(RuntimeError):
    pass


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise BenchError("the benchmark ran past --max-seconds")
        return left


try:
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl  # looked up before any fork
except (OSError, AttributeError):
    _PRCTL = None


def die_with_parent() -> None:
    """In the child before exec: SIGTERM when the benchmark process dies (Linux)."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


def wait_endpoints(path: Path, check_alive: Callable[[], None], within: float,
                   who: str) -> dict[str, Any]:
    """The endpoints.json a starting host writes, once it is there and whole; ``check_alive``
    raises when the process has exited; ``BenchError`` after ``within`` seconds."""
    limit = time.monotonic() + within
    while True:
        check_alive()
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass
        if time.monotonic() > limit:
            raise BenchError(f"{who} did not write endpoints.json within {within:.0f} s")
        time.sleep(0.05)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def family_cpu(pids: list[int]) -> float:
    """CPU seconds of ``pids`` and of their reaped children."""
    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system + times.children_user + times.children_system
    return total


def keeper_pid(data_dir: Path) -> int:
    """The task keeper serving the runner data dir ``data_dir``."""
    wanted = os.path.realpath(data_dir)
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "zriver.runner.keeper" in cmdline and os.path.realpath(cmdline[-1]) == wanted:
            return proc.pid
    raise BenchError(f"no task keeper runs for {data_dir}")


def busy_seconds() -> float:
    """CPU seconds the whole machine spent not idle (all cores)."""
    times = psutil.cpu_times()
    return sum(getattr(times, name, 0.0) for name in
               ("user", "nice", "system", "irq", "softirq", "steal"))


class Load:
    """How much of the machine something else used while we measured (noise indicator)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.busy0, self.ours0, self.t0 = busy_seconds(), family_cpu(pids), time.perf_counter()

    def other_share(self) -> float:
        elapsed = time.perf_counter() - self.t0
        other = (busy_seconds() - self.busy0) - (family_cpu(self.pids) - self.ours0)
        return max(0.0, other) / (elapsed * (psutil.cpu_count() or 1))


# ---- the cluster under test ----------------------------------------------------------------
CLUSTERS = {"split": (False, "curve"), "embedded": (True, "curve"),
            "split-open": (False, "none"), "embedded-open": (True, "none")}
"""Cluster shapes by name: (embedded, security)."""


class Cluster:
    """A host and a runner in ``root``: each its own process, or (``embedded``) both in
    one ``zriver up`` process."""

    def __init__(self, root: Path, profile: str, profile_dir: Path | None,
                 attach: str = "", wrapper: str = "", security: str = "curve",
                 embedded: bool = False) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.security = security
        self.embedded = embedded
        self.attach = attach
        self.wrapper = wrapper
        self.profile = profile
        self.profile_dir = profile_dir
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        self.endpoint = ""
        self.client: Client | None = None
        self.spies: list[subprocess.Popen] = []

    def _python_role(self, role: str, config: Path | None) -> list[str]:
        args = [role, "--config", str(config)] if config is not None else [
            role, "--port", "0", "--cores", "2"]  # ``up``: configs from $ZRIVER_HOME
        if self.wrapper:
            return [sys.executable, self.wrapper, *args]
        name = f"{'embedded-' if self.embedded else ''}{role}.prof"
        if self.profile == "cprofile":
            out = self.profile_dir / name
            return [sys.executable, "-m", "cProfile", "-o", str(out), "-m", "zriver", *args]
        if self.profile == "cputime":
            out = self.profile_dir / name
            return [sys.executable, str(Path(__file__).with_name("cpuprof.py")), str(out),
                    *args]
        return [sys.executable, "-m", "zriver", *args]

    def _launch(self, role: str, config: Path | None) -> subprocess.Popen:
        log_file = self.root / f"{role}.log"
        self.logs[role] = log_file
        env = dict(os.environ, ZRIVER_HOME=str(self.root), PYTHONUNBUFFERED="1")
        with open(log_file, "wb") as out:
            proc = subprocess.Popen(self._python_role(role, config), stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT, env=env,
                                    cwd=str(self.root), preexec_fn=die_with_parent)
        self.procs[role] = proc
        return proc

    def _check_alive(self) -> None:
        for role, proc in self.procs.items():
            if proc.poll() is not None:
                tail = self.logs[role].read_text(errors="replace")[-3000:]
                raise BenchError(f"zriver {role} exited with {proc.returncode}:\n{tail}")

    def start(self, deadline: Deadline) -> None:
        host_dir = self.root / "host"
        host_toml = self.root / "host.toml"
        host_toml.write_text(
            f'data_dir = "{host_dir}"\nbind_address = "127.0.0.1"\n'
            "router_port = 0\nxsub_port = 0\nxpub_port = 0\nstream_port = 0\n"
            "relay_port = -1\nweb_port = -1\nheartbeat_interval = 1.0\n"
            f'security = "{self.security}"\n')
        admin = self.root / "keys" / "client.key_secret"
        if self.embedded:  # ``zriver up`` makes its admin key (there) and its runner's
            (self.root / "runner.toml").write_text(
                f'name = "bench-node"\ndata_dir = "{self.root / "runner"}"\ncores = 2\n')
            self._launch("up", None)
        else:
            if self.security == "curve":  # what `zriver init keys` makes for the admin
                public, _ = keyfiles.ensure_client_pair(admin, "bench", "admin")
                keyfiles.ensure_admin_import(host_dir, public, "bench")
            self._launch("host", host_toml)
        endpoints = wait_endpoints(host_dir / "endpoints.json", self._check_alive,
                                   min(30.0, deadline.left()), "the host")
        port = lambda name: int(endpoints[name].rsplit(":", 1)[1])  # noqa: E731
        self.endpoint = f"tcp://127.0.0.1:{port('router')}"
        host_key = endpoints.get("host_key", "")
        self.client = Client(self.endpoint, timeout=10.0, key=str(admin) if host_key else "none",
                             host_key=host_key or None)
        if not self.embedded:
            self._start_runner(host_key, port)
        limit = time.monotonic() + min(30.0, deadline.left())
        while True:
            self._check_alive()
            nodes = self.client.call("node.list")["nodes"]
            if any(n["state"] == "online" for n in nodes):
                return
            if time.monotonic() > limit:
                raise BenchError(f"the runner did not come online within 30 s: {nodes}")
            time.sleep(0.05)

    def _start_runner(self, host_key: str, port) -> None:
        """The split cluster's runner process, with a node key the admin added."""
        runner_key = self.root / "runner.key_secret"
        if host_key:  # a node's key, added by the admin (`zriver keys add NODE --role runner`)
            public, _ = keyfiles.ensure_client_pair(runner_key, "bench-node", "runner")
            self.client.call("key.add", {"name": "bench-node", "role": "runner",
                                         "public_key": public})
        keys = f'key = "{runner_key}"\nhost_key = "{host_key}"\n' if host_key else 'key = "none"\n'
        runner_toml = self.root / "runner.toml"
        runner_toml.write_text(
            f'host = "127.0.0.1"\nrouter_port = {port("router")}\nxsub_port = {port("xsub")}\n'
            f'name = "bench-node"\ndata_dir = "{self.root / "runner"}"\ncores = 2\n{keys}')
        self._launch("runner", runner_toml)

    @property
    def roles(self) -> tuple[str, ...]:
        """The control plane's processes: ``host`` and ``runner`` (the agent), or ``up``
        (both), and ``keeper`` (the runner's task keeper: native tasks are its children, so
        their CPU is counted with it)."""
        return ("up", "keeper") if self.embedded else ("host", "runner", "keeper")

    def pid(self, role: str) -> int:
        """The pid of one of ``roles``; ``host`` and ``runner`` are ``up`` when embedded."""
        if role == "keeper":
            return keeper_pid(self.root / "runner")
        if self.embedded:
            role = "up"
        return self.procs[role].pid

    def spy_start(self, tag: str) -> None:
        """Attach a profiler to both roles for one zriver throughput round."""
        if self.profile == "py-spy":
            exe = shutil.which("py-spy")
            if exe is None:
                raise BenchError("--profile py-spy needs py-spy on PATH (pip install py-spy)")
            template = (f"{exe} record --pid {{pid}} --rate 250 --format raw --nonblocking "
                        "-o {out}.txt")
        elif self.profile == "attach":
            template = self.attach
        else:
            return
        for role in self.roles:
            out = self.profile_dir / f"{'embedded' if self.embedded else 'split'}-{role}{tag}"
            command = template.format(pid=self.pid(role), role=role, out=out)
            with open(f"{out}.attach.log", "wb") as log_file:  # (no preexec_fn: threads)
                self.spies.append(subprocess.Popen(
                    shlex.split(command), stdin=subprocess.DEVNULL, stdout=log_file,
                    stderr=subprocess.STDOUT))
        time.sleep(1.0)  # give the profilers a moment to attach

    def spy_stop(self) -> None:
        for spy in self.spies:
            spy.send_signal(signal.SIGINT)
        for spy in self.spies:
            try:
                spy.wait(20)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()
        self.spies = []

    def stop(self) -> None:
        """SIGTERM the runner, then the host; SIGKILL what has not exited after 10 s."""
        with contextlib.suppress(Exception):
            self.spy_stop()
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close()
        stop_roles(self.procs, grace=10)


def stop_roles(procs: dict[str, subprocess.Popen], grace: float) -> None:
    """SIGTERM the runner, then the host (or ``up``); SIGKILL whichever has not exited after
    ``grace``."""
    for role in ("runner", "host", "up"):
        proc = procs.get(role)
        if proc is None or proc.poll() is not None:
            continue
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---- bare baseline ------------------------------------------------------------------------
class Bare:
    """posix_spawn + pidfd + waitpid, the way a minimal launcher would do it."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.path = shutil.which(COMMAND[0])
        if self.path is None:
            raise BenchError(f"{COMMAND[0]} is not on PATH")
        self.env = dict(os.environ)
        self.counter = 0

    def spawn(self) -> int:
        self.counter += 1
        base = str(self.log_dir / f"{self.counter}")
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, base + ".out", OUT_FLAGS, 0o644),
            (os.POSIX_SPAWN_OPEN, 2, base + ".err", OUT_FLAGS, 0o644),
        ]
        return os.posix_spawn(self.path, COMMAND, self.env, file_actions=actions, setpgroup=0)

    def latency(self, samples: int, deadline: Deadline) -> list[float]:
        result = []
        for _ in range(samples):
            deadline.left()
            t0 = time.perf_counter()
            pid = self.spawn()
            _, status = os.waitpid(pid, 0)
            result.append(time.perf_counter() - t0)
            if status != 0:
                raise BenchError(f"bare {COMMAND} exited with status {status}")
        return result

    def throughput(self, count: int, parallel: int, deadline: Deadline) -> dict[str, float]:
        poller = select.poll()
        inflight: dict[int, int] = {}  # pidfd -> pid
        started = done = 0
        load = Load([os.getpid()])
        cpu0 = os.times()
        family0 = family_cpu([os.getpid()])
        t0 = time.perf_counter()
        while done < count:
            while len(inflight) < parallel and started < count:
                pid = self.spawn()
                fd = os.pidfd_open(pid)
                inflight[fd] = pid
                poller.register(fd, select.POLLIN)
                started += 1
            ready = poller.poll(max(1, int(min(30.0, deadline.left()) * 1000)))
            if not ready:
                raise BenchError("bare tasks did not finish within 30 s")
            for fd, _ in ready:
                pid = inflight.pop(fd)
                poller.unregister(fd)
                os.close(fd)
                _, status = os.waitpid(pid, 0)
                if status != 0:
                    raise BenchError(f"bare {COMMAND} exited with status {status}")
                done += 1
        elapsed = time.perf_counter() - t0
        cpu1 = os.times()
        cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
        total = family_cpu([os.getpid()]) - family0
        return {"tasks_per_s": count / elapsed, "seconds": elapsed,
                "cpu_us_per_task": cpu / count * 1e6,
                "total_cpu_us_per_task": total / count * 1e6,
                "other_load": load.other_share()}


def log_files_cost(parent: Path, count: int = 200) -> float:
    """CPU microseconds to create (and close) the two log files of one task, in a new folder
    on the file system of the tasks' logs: a cost bare and zriver both pay, which on some
    file systems is much of a trivial task's (ext4 without a journal scans recently deleted
    inodes for every new one)."""
    folder = Path(tempfile.mkdtemp(dir=parent))
    try:
        start = time.process_time()
        for index in range(count):
            for suffix in (".out", ".err"):
                os.close(os.open(folder / f"{index}{suffix}", OUT_FLAGS, 0o644))
        return (time.process_time() - start) / count * 1e6
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ---- zriver -------------------------------------------------------------------------------
class Zriver:
    def __init__(self, cluster: Cluster, workdir: str) -> None:
        self.cluster = cluster
        self.client = cluster.client
        self.spec = {"command": COMMAND, "cores": 1, "workdir": workdir, "owner": "bench"}
        self.context = zmq.Context.instance()
        xpub = self.client.hello()["endpoints"]["xpub"]
        self.sub = self._socket(zmq.SUB)
        self.sub.setsockopt(zmq.RCVHWM, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"evt.task.")
        self.sub.connect(f"tcp://127.0.0.1:{xpub.rsplit(':', 1)[1]}")
        self.dealer = self._socket(zmq.DEALER)
        self.dealer.connect(cluster.endpoint)
        self.rid = 0

    def _socket(self, kind: int) -> zmq.Socket:
        """A socket with the admin's CURVE keys when the cluster has them."""
        sock = self.context.socket(kind)
        sock.linger = 0
        keys = self.client.keys
        if keys is not None:
            sock.curve_serverkey = keys.server.encode()
            sock.curve_publickey = keys.public.encode()
            sock.curve_secretkey = keys.secret.encode()
        return sock

    def close(self) -> None:
        self.sub.close(0)
        self.dealer.close(0)

    def _drain_sub(self) -> None:
        while True:
            try:
                self.sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return

    def one(self, timeout: float) -> dict[str, float]:
        """Submit one task; client-side seconds to reply, running event and final event."""
        poller = zmq.Poller()
        poller.register(self.dealer, zmq.POLLIN)
        poller.register(self.sub, zmq.POLLIN)
        self._drain_sub()
        self.rid += 1
        rid = self.rid
        seen: list[tuple[float, dict]] = []
        task_id = None
        t_reply = t_run = t_done = None
        t0 = time.perf_counter()
        self.dealer.send(encode("task.submit", rid, {"tasks": [self.spec]}))
        end = t0 + timeout
        while t_done is None:
            wait_ms = max(0, int((end - time.perf_counter()) * 1000))
            events = dict(poller.poll(wait_ms))
            if not events:
                raise BenchError(f"task {task_id} did not finish within {timeout} s "
                                 f"(reply={t_reply is not None}, running={t_run is not None})")
            if self.dealer in events:
                while True:
                    try:
                        frame = self.dealer.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    now = time.perf_counter()
                    env = decode(frame, MAX_FRAME)
                    if env.rid != rid:
                        continue
                    if env.op == "error":
                        raise BenchError(f"submit refused: {env.code}: {env.msg}")
                    task_id, t_reply = env.body["ids"][0], now
            if self.sub in events:
                while True:
                    try:
                        _, frame = self.sub.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    seen.append((time.perf_counter(), decode(frame, MAX_FRAME).body))
            if task_id is not None:
                for at, body in seen:
                    if body.get("id") != task_id:
                        continue
                    ran = body["state"] == lc.RUNNING or lc.RUNNING in body.get("passed", ())
                    if ran and t_run is None:
                        t_run = at  # (a task that ends at once reports both in one event)
                    if lc.is_final(body["state"]):
                        if body["state"] != lc.COMPLETED:
                            raise BenchError(f"task {task_id} ended {body['state']}: {body}")
                        t_done = at
                seen.clear()
        if t_run is None:  # the running event was lost (PUB/SUB is lossy): count as missing
            t_run = float("nan")
        return {"reply": t_reply - t0, "running": t_run - t0, "completed": t_done - t0,
                "id": task_id}

    def latency(self, samples: int, deadline: Deadline) -> dict[str, list[float]]:
        result: dict[str, list[float]] = {"reply": [], "running": [], "completed": []}
        for _ in range(samples):
            sample = self.one(min(30.0, deadline.left()))
            for key in result:
                result[key].append(sample[key])
        return result

    def throughput(self, count: int, deadline: Deadline) -> dict[str, float]:
        pids = {role: self.cluster.pid(role) for role in self.cluster.roles}
        specs = [self.spec] * count
        load = Load(list(pids.values()) + [os.getpid()])
        cpu0 = {role: cpu_seconds(pid) for role, pid in pids.items()}
        family0 = family_cpu(list(pids.values()))
        t0 = time.perf_counter()
        ids = self.client.call("task.submit", {"tasks": specs}, timeout=60)["ids"]
        t_submitted = time.perf_counter()
        while True:
            poll = min(30.0, deadline.left())
            reply = self.client.call("task.wait", {"ids": ids, "timeout": poll},
                                     timeout=poll + 10)
            if reply["done"]:
                break
        elapsed = time.perf_counter() - t0
        other_load = load.other_share()
        cpu = {role: cpu_seconds(pid) - cpu0[role] for role, pid in pids.items()}
        total = family_cpu(list(pids.values())) - family0
        bad = [t for t in reply["tasks"] if t["state"] != lc.COMPLETED]
        if bad or len(reply["tasks"]) != count:
            raise BenchError(f"{len(bad)} of {count} tasks did not complete: {bad[:3]}")
        # embedded: the one process of host and agent counts as the host, the agent as 0
        return {"tasks_per_s": count / elapsed, "seconds": elapsed,
                "submit_call_s": t_submitted - t0,
                "host_cpu_us_per_task": cpu.get("host", cpu.get("up", 0.0)) / count * 1e6,
                "runner_cpu_us_per_task": cpu.get("runner", 0.0) / count * 1e6,
                "keeper_cpu_us_per_task": cpu["keeper"] / count * 1e6,
                "total_cpu_us_per_task": total / count * 1e6,
                "other_load": other_load}


# ---- the run ------------------------------------------------------------------------------
def summarize(values: list[float]) -> float:
    values = [v for v in values if v == v]  # drop NaN
    return statistics.median(values) if values else float("nan")


def cluster_names(args: argparse.Namespace) -> list[str]:
    """The clusters measured: ``--clusters``, or the older ``--security`` choice (split
    clusters with CURVE on, off, or both)."""
    if args.security is not None:
        return {"curve": ["split"], "none": ["split-open"],
                "both": ["split", "split-open"]}[args.security]
    names = [name.strip() for name in args.clusters.split(",") if name.strip()]
    unknown = [name for name in names if name not in CLUSTERS]
    if unknown or not names:
        raise BenchError(f"--clusters: unknown {unknown or names}; choose from "
                         f"{', '.join(CLUSTERS)}")
    return names


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Interleaved rounds: bare, then every cluster of ``cluster_names`` in turn."""
    deadline = Deadline(args.max_seconds)
    names = cluster_names(args)
    root = Path(tempfile.mkdtemp(prefix="zriver-bench-"))
    root.chmod(0o711)  # a root runner runs the tasks as its task_user: they enter work/
    profile_dir = None
    if args.profile != "none":
        profile_dir = Path(args.profile_dir or root / "profile").resolve()
        profile_dir.mkdir(parents=True, exist_ok=True)
    clusters = {name: Cluster(root / name, args.profile, profile_dir, args.attach or "",
                              str(Path(args.wrapper).resolve()) if args.wrapper else "",
                              CLUSTERS[name][1], embedded=CLUSTERS[name][0])
                for name in names}
    for cluster in clusters.values():
        cluster.root.chmod(0o711)
    zrs: dict[str, Zriver] = {}
    rounds: list[dict[str, Any]] = []
    try:
        workdir = root / "work"
        workdir.mkdir()
        bare_logs = root / "bare-logs"
        bare_logs.mkdir()
        bare = Bare(bare_logs)
        for key, cluster in clusters.items():
            cluster.start(deadline)
            zrs[key] = Zriver(cluster, str(workdir))
        # warm-up (not counted): caches, SQLite pages, the SUB subscription reaching the host
        bare.throughput(min(100, args.tasks), 2, deadline)
        for zr in zrs.values():
            zr.throughput(min(100, args.tasks), deadline)
        if not args.skip_latency:
            bare.latency(10, deadline)
            for zr in zrs.values():
                zr.latency(10, deadline)
        pids = [os.getpid()] + [c.pid(role) for c in clusters.values() for role in c.roles]
        clean = number = 0
        while clean < args.rounds and number < args.rounds + args.extra_rounds:
            number += 1
            row: dict[str, Any] = {"round": number}
            row["bare_throughput"] = bare.throughput(args.tasks, 2, deadline)
            row["log_files_us"] = log_files_cost(root)
            loads = [row["bare_throughput"]["other_load"]]
            for key, zr in zrs.items():
                clusters[key].spy_start(f"-r{number}")
                try:
                    row[f"{key}_throughput"] = zr.throughput(args.tasks, deadline)
                finally:
                    clusters[key].spy_stop()
                loads.append(row[f"{key}_throughput"]["other_load"])
            if not args.skip_latency:
                load = Load([os.getpid()])
                row["bare_latency"] = bare.latency(args.samples, deadline)
                loads.append(load.other_share())
                for key, zr in zrs.items():
                    load = Load(pids)
                    row[f"{key}_latency"] = zr.latency(args.samples, deadline)
                    loads.append(load.other_share())
            row["other_load"] = max(loads)
            row["noisy"] = row["other_load"] > args.noise_threshold
            clean += not row["noisy"]
            rounds.append(row)
            print(round_line(row, names), flush=True)
    finally:
        # a second Ctrl-C or SIGTERM must not cut the cleanup short
        previous = {sig: signal.signal(sig, signal.SIG_IGN)
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        for zr in zrs.values():
            zr.close()
        for cluster in clusters.values():
            cluster.stop()
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if profile_dir is not None:
        print(f"profiles in {profile_dir}", file=sys.stderr)
    return {"args": vars(args), "clusters": names,
            "machine": machine() | {"loadavg": loadavg()}, "rounds": rounds,
            "summary": summary(rounds, names)}


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
            "python": platform.python_version(), "platform": platform.platform(),
            "processor": _cpu_model()}


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def round_line(row: dict[str, Any], names: list[str]) -> str:
    bt = row["bare_throughput"]["tasks_per_s"]
    parts = [f"bare {bt:.0f}/s"]
    for name in names:
        zt = row[f"{name}_throughput"]["tasks_per_s"]
        parts.append(f"{name} {zt:.0f}/s ({zt / bt:.2f})")
    text = f"round {row['round']}: " + ", ".join(parts)
    if "bare_latency" in row:
        text += f"; latency p50 bare {statistics.median(row['bare_latency']) * 1e3:.2f} ms"
        for name in names:
            text += f", {name} {summarize(row[f'{name}_latency']['completed']) * 1e3:.2f} ms"
    return text + (f"; other load up to {row['other_load']:.0%}"
                   f"{' (noisy)' if row['noisy'] else ''}")


def summary(all_rounds: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """Medians over the quiet rounds (over all rounds when none was quiet): the bare
    baseline, each cluster (ratios: medians of the per-round ratios to bare), and each
    cluster against the first one (``versus``: e.g. embedded / split)."""
    rounds = [r for r in all_rounds if not r["noisy"]] or all_rounds
    latency = bool(rounds) and "bare_latency" in rounds[0]

    def med(get) -> float:
        return summarize([get(r) for r in rounds])

    def p50(r: dict[str, Any], name: str) -> float:
        return percentile([v for v in r[f"{name}_latency"]["completed"] if v == v], 50)

    out: dict[str, Any] = {
        "rounds_used": len(rounds),
        "rounds_noisy": sum(r["noisy"] for r in all_rounds),
        "rounds_total": len(all_rounds),
        "bare": {
            "tasks_per_s": med(lambda r: r["bare_throughput"]["tasks_per_s"]),
            "cpu_us_per_task": med(lambda r: r["bare_throughput"]["cpu_us_per_task"]),
            "total_cpu_us_per_task": med(
                lambda r: r["bare_throughput"]["total_cpu_us_per_task"]),
            "other_load": med(lambda r: r["bare_throughput"]["other_load"]),
            "log_files_us": med(lambda r: r.get("log_files_us", float("nan"))),
        },
        "clusters": {},
        "versus": {},
    }
    if latency:
        for q in (50, 95):
            out["bare"][f"latency_p{q}_ms"] = med(
                lambda r: percentile(r["bare_latency"], q) * 1e3)
    for name in names:
        thr = f"{name}_throughput"
        one: dict[str, Any] = {
            "tasks_per_s": med(lambda r: r[thr]["tasks_per_s"]),
            "throughput_ratio": med(lambda r: r[thr]["tasks_per_s"]
                                    / r["bare_throughput"]["tasks_per_s"]),
            "cpu_ratio": med(lambda r: r["bare_throughput"]["total_cpu_us_per_task"]
                             / r[thr]["total_cpu_us_per_task"]),
            "submit_call_ms": med(lambda r: r[thr]["submit_call_s"] * 1e3),
            "other_load": med(lambda r: r[thr]["other_load"]),
        }
        for key in ("host", "runner", "keeper", "total"):
            one[f"{key}_cpu_us_per_task"] = med(lambda r: r[thr][f"{key}_cpu_us_per_task"])
        if latency:
            lat = f"{name}_latency"
            for q in (50, 95):
                for key in ("reply", "running", "completed"):
                    one[f"{key}_p{q}_ms"] = med(lambda r: percentile(
                        [v for v in r[lat][key] if v == v], q) * 1e3)
            one["latency_ratio_p50"] = med(lambda r: p50(r, name)
                                           / percentile(r["bare_latency"], 50))
        out["clusters"][name] = one
    first = names[0]
    for name in names[1:]:
        versus: dict[str, float] = {"throughput": med(
            lambda r: r[f"{name}_throughput"]["tasks_per_s"]
            / r[f"{first}_throughput"]["tasks_per_s"]),
            "cpu_per_task": med(lambda r: r[f"{name}_throughput"]["total_cpu_us_per_task"]
                                / r[f"{first}_throughput"]["total_cpu_us_per_task"])}
        if latency:
            versus["latency_p50"] = med(lambda r: p50(r, name) / p50(r, first))
        out["versus"][f"{name}/{first}"] = versus
    return out


def noise_note(s: dict[str, Any]) -> str:
    if not s["rounds_noisy"]:
        return "(all quiet)"
    if s["rounds_used"] + s["rounds_noisy"] == s["rounds_total"]:
        return f"({s['rounds_noisy']} noisy rounds set aside)"
    return "(ALL NOISY: other processes were busy; re-run on a quieter machine)"


def table(result: dict[str, Any]) -> str:
    s, m, a, names = result["summary"], result["machine"], result["args"], result["clusters"]
    b, cs = s["bare"], s["clusters"]
    width = 44

    def row(label: str, bare: str, values: list[str], note: str = "") -> str:
        return (f"{label:<{width}}{bare:>10}" + "".join(f"{v:>15}" for v in values)
                + (f"  {note}" if note else ""))

    def each(fmt: str, key: str) -> list[str]:
        return [format(cs[n][key], fmt) for n in names]

    lines = [
        f"zriver dispatch benchmark: medians of {s['rounds_used']} interleaved rounds "
        f"{noise_note(s)}; {a['tasks']} tasks per batch, {a['samples']} latency samples "
        "per round",
        "ratios: medians of the per-round ratios to bare (embedded: host and runner agent "
        "are one process)",
        f"machine: {m['affinity']} cores usable ({m['processor']}), Python {m['python']}",
        "",
        row("metric", "bare", names),
        "-" * (width + 10 + 15 * len(names) + 12),
        row("throughput (tasks/s, 2 at a time)", f"{b['tasks_per_s']:.0f}",
            each(".0f", "tasks_per_s")),
        row("   ratio to bare", "", each(".2f", "throughput_ratio"), ">= 0.65"),
    ]
    if "latency_p50_ms" in b:
        lines += [
            row("submit -> completed p50 (ms)", f"{b['latency_p50_ms']:.2f}",
                each(".2f", "completed_p50_ms"), "< 1.5 ms"),
            row("   ratio to bare", "", [f"{cs[n]['latency_ratio_p50']:.1f}x" for n in names]),
            row("submit -> completed p95 (ms)", f"{b['latency_p95_ms']:.2f}",
                each(".2f", "completed_p95_ms")),
            row("submit -> running event p50 (ms)", "", each(".2f", "running_p50_ms")),
            row("submit -> submit reply p50 (ms)", "", each(".2f", "reply_p50_ms")),
        ]
    tasks_cpu = [cs[n]["total_cpu_us_per_task"] - cs[n]["host_cpu_us_per_task"]
                 - cs[n]["runner_cpu_us_per_task"] - cs[n]["keeper_cpu_us_per_task"]
                 for n in names]
    lines += [
        row("CPU per task in the batch, all (us)", f"{b['total_cpu_us_per_task']:.0f}",
            each(".0f", "total_cpu_us_per_task")),
        row("   bare/zriver (CPU-bound ceiling)", "", each(".2f", "cpu_ratio")),
        row("   launcher / host process", f"{b['cpu_us_per_task']:.0f}",
            each(".0f", "host_cpu_us_per_task")),
        row("   runner process (the agent)", "", each(".0f", "runner_cpu_us_per_task")),
        row("   task keeper process (spawns, reaps)", "", each(".0f", "keeper_cpu_us_per_task")),
        row("   the tasks themselves (true)",
            f"{b['total_cpu_us_per_task'] - b['cpu_us_per_task']:.0f}",
            [f"{v:.0f}" for v in tasks_cpu]),
        row("   of which their 2 log files (us)", f"{b['log_files_us']:.0f}", [],
            "created in the bare launcher's children, in zriver's keeper"),
        row("the task.submit call of the batch (ms)", "", each(".1f", "submit_call_ms")),
        row("other load (throughput runs)", f"{b['other_load']:.0%}", each(".0%", "other_load")),
    ]
    for pair, versus in s["versus"].items():
        text = f"{pair}: throughput {versus['throughput']:.2f}x, CPU per task " \
               f"{versus['cpu_per_task']:.2f}x"
        if "latency_p50" in versus:
            text += f", completed p50 {versus['latency_p50']:.2f}x"
        lines.append(text + " (medians of per-round ratios)")
    lines.append(f"load average at the end: {m['loadavg']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1000, help="tasks per throughput batch")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--samples", type=int, default=200, help="latency samples per round")
    parser.add_argument("--skip-latency", action="store_true", help="throughput rounds only")
    parser.add_argument("--clusters", default="split,embedded",
                        help="comma-separated clusters to measure in each round, of "
                        f"{', '.join(CLUSTERS)} (default: split,embedded; the table compares "
                        "each with the first)")
    parser.add_argument("--security", choices=("both", "curve", "none"), default=None,
                        help="instead of --clusters: split clusters with authentication on "
                        "(curve), off (none), or both in the same rounds")
    parser.add_argument("--noise-threshold", type=float, default=0.10,
                        help="a round during which other processes used more than this share "
                        "of the machine is noisy: it is re-run and left out of the medians")
    parser.add_argument("--extra-rounds", type=int, default=3,
                        help="at most this many rounds beyond --rounds to replace noisy ones")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="overall time bound")
    parser.add_argument("--profile", choices=("none", "cprofile", "cputime", "py-spy", "attach"),
                        default="none", help="see the module docstring")
    parser.add_argument("--attach", help="with --profile attach: a command run against each "
                        "role during the throughput rounds and stopped with SIGINT; {pid}, "
                        "{role} and {out} (a path prefix in --profile-dir) are filled in")
    parser.add_argument("--profile-dir", help="where profiles go (required with --profile)")
    parser.add_argument("--wrapper", help="start the roles as `python WRAPPER <role> --config "
                        "...` instead of `python -m zriver <role> ...` (to try a patch)")
    parser.add_argument("--json", help="also write the raw results to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if not 1 <= args.tasks <= 100_000 or not 1 <= args.rounds <= 20 \
            or not 1 <= args.samples <= 10_000 or not 0 <= args.extra_rounds <= 20:
        parser.error("--tasks 1..100000, --rounds 1..20, --samples 1..10000, "
                     "--extra-rounds 0..20")
    if (args.profile == "attach") != bool(args.attach):
        parser.error("--profile attach and --attach go together")
    if args.wrapper and args.profile in ("cprofile", "cputime"):
        parser.error("--wrapper does not combine with --profile cprofile/cputime")
    if args.profile != "none" and not args.profile_dir:
        parser.error("--profile needs --profile-dir (the temporary directory is removed)")

    return run_and_report(run, table, args)


def run_and_report(run, table, args, what: str = "benchmark",
                   failed=lambda result: False) -> int:
    """``run(args)`` with SIGTERM as Ctrl-C; print ``table(result)``, write ``--json``.
    Exit status: 0, 1 when it failed (``BenchError`` or ``failed(result)``), 130 when
    interrupted (every bench cleans up in its own ``finally``)."""
    def interrupted(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        result = run(args)
    except BenchError as exc:
        print(f"{what} failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{what} interrupted (roles stopped, temporary directory removed)",
              file=sys.stderr)
        return 130
    print()
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 1 if failed(result) else 0


if __name__ == "__main__":
    sys.exit(main())
