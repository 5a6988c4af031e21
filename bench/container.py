#!/usr/bin/env python
"""Container-task overhead: zriver's Docker backend against raw ``docker run --rm``.

Starts a real host and a real runner as two processes (``python -m zriver host`` and ``python
-m zriver runner``, configs in a temporary directory, ephemeral ports on 127.0.0.1, runner
``cores = 2``), creates an env from a tiny local image (Debian's static busybox imported with
``docker import``, see ``tests/docker_images.py``; no registry needed), syncs it to the runner
with one warm-up task, then measures the trivial command ``true``:

* latency: ``--samples`` tasks one at a time, submit -> ``completed`` as seen by the client
  (the ``evt.task.<id>`` event with the final state, published after the host committed the
  result), beside ``docker run --rm IMAGE true`` of **the same image** (the runner's copy),
  timed the same way from the same client process; samples are interleaved;
* throughput: ``--tasks`` one-core tasks submitted at once to the 2-core node, until
  ``task.wait`` says all are final (all must be ``completed``), beside the same number of
  ``docker run --rm`` launched two at a time (the parallelism the node's 2 cores give zriver).

Rounds of throughput alternate (raw, zriver, raw, ...); the table shows medians and ratios.
Targets (docs/performance.md): latency p50 within 1.15x raw, throughput at least 0.90x raw.

    python bench/container.py [--samples 30] [--tasks 200] [--rounds 1] [--json out.json]

Everything it makes (containers, images, the temporary directory, the two roles) is removed
at the end, also on failure.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from dispatch import (BenchError, die_with_parent, percentile, stop_roles,  # noqa: E402
                      wait_endpoints)
from docker_images import docker_available, ensure_busybox_image  # noqa: E402

from zriver.client.api import Client  # noqa: E402
from zriver import lifecycle as lc  # noqa: E402
from zriver.protocol import decode  # noqa: E402

COMMAND = ["true"]


class Roles:
    """A host and a runner, each its own process, in ``root``."""

    def __init__(self, root: Path, prefix: str) -> None:
        self.root, self.prefix = root, prefix
        self.procs: dict[str, subprocess.Popen] = {}
        self.client: Client | None = None
        self.endpoint = ""

    def _launch(self, role: str, config: Path) -> None:
        env = dict(os.environ, ZRIVER_HOME=str(self.root), PYTHONUNBUFFERED="1")
        with open(self.root / f"{role}.log", "wb") as out:
            self.procs[role] = subprocess.Popen(
                [sys.executable, "-m", "zriver", role, "--config", str(config)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                cwd=str(self.root), preexec_fn=die_with_parent)

    def _alive(self) -> None:
        for role, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.root / f"{role}.log").read_text(errors="replace")[-3000:]
                raise BenchError(f"zriver {role} exited with {proc.returncode}:\n{tail}")

    def start(self) -> None:
        host_dir = self.root / "host"
        (self.root / "host.toml").write_text(
            f'data_dir = "{host_dir}"\nrouter_port = 0\nxsub_port = 0\nxpub_port = 0\n'
            'stream_port = 0\nrelay_port = -1\nweb_port = -1\nsecurity = "none"\n'
            f'heartbeat_interval = 1.0\nenv_image_prefix = "{self.prefix}-host"\n')
        self._launch("host", self.root / "host.toml")
        endpoints = wait_endpoints(host_dir / "endpoints.json", self._alive, 30.0, "the host")
        port = lambda name: int(endpoints[name].rsplit(":", 1)[1])  # noqa: E731
        self.endpoint = f"tcp://127.0.0.1:{port('router')}"
        (self.root / "runner.toml").write_text(
            f'router_port = {port("router")}\nxsub_port = {port("xsub")}\n'
            f'name = "bench-node"\ndata_dir = "{self.root / "runner"}"\ncores = 2\n'
            f'image_prefix = "{self.prefix}-node"\nkey = "none"\n')
        self._launch("runner", self.root / "runner.toml")
        self.client = Client(self.endpoint, timeout=30.0)
        deadline = time.monotonic() + 30
        while True:
            self._alive()
            nodes = self.client.call("node.list")["nodes"]
            if any(n["state"] == "online" and "docker" in n["backends"] for n in nodes):
                return
            if time.monotonic() > deadline:
                raise BenchError(f"the runner did not come online with Docker: {nodes}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        stop_roles(self.procs, grace=15)


class Zriver:
    """Submits trivial container tasks and times them from the client."""

    def __init__(self, roles: Roles, workdir: str) -> None:
        self.client = roles.client
        self.workdir = workdir
        self.sub = self.client.subscribe(["evt.task."])
        time.sleep(0.3)  # let the subscription reach the host (slow joiner)

    def spec(self) -> dict[str, Any]:
        return {"command": COMMAND, "backend": "docker", "container": "bench", "cores": 1,
                "workdir": self.workdir, "owner": "bench"}

    def one(self) -> float:
        while self.sub.poll(0):
            self.sub.recv_multipart()
        t0 = time.perf_counter()
        [task_id] = self.client.call("task.submit", {"tasks": [self.spec()]})["ids"]
        while True:
            if not self.sub.poll(60_000):
                raise BenchError(f"no final event for task {task_id} within 60 s")
            topic, frame = self.sub.recv_multipart()
            body = decode(frame, 1 << 26).body
            if body.get("id") == task_id and lc.is_final(body.get("state", "")):
                elapsed = time.perf_counter() - t0
                if body["state"] != lc.COMPLETED:
                    raise BenchError(f"task {task_id} ended {body['state']}: {body}")
                return elapsed

    def throughput(self, count: int) -> float:
        t0 = time.perf_counter()
        ids = self.client.call("task.submit", {"tasks": [self.spec()] * count})["ids"]
        summaries = self.client.wait(ids)
        elapsed = time.perf_counter() - t0
        bad = [s for s in summaries if s["state"] != lc.COMPLETED]
        if bad:
            raise BenchError(f"{len(bad)} tasks did not complete, e.g. {bad[0]}")
        return count / elapsed

    def close(self) -> None:
        self.sub.close(linger=0)


class Raw:
    """``docker run --rm IMAGE true`` through the docker CLI, as a person would run it."""

    def __init__(self, image: str) -> None:
        self.docker = shutil.which("docker")
        if self.docker is None:
            raise BenchError("the docker CLI is not on PATH")
        self.image = image

    def one(self) -> float:
        t0 = time.perf_counter()
        result = subprocess.run([self.docker, "run", "--rm", "--cpus", "1", self.image,
                                 *COMMAND], stdin=subprocess.DEVNULL, capture_output=True)
        elapsed = time.perf_counter() - t0
        if result.returncode != 0:
            raise BenchError(f"docker run failed: {result.stderr.decode(errors='replace')}")
        return elapsed

    def throughput(self, count: int, parallel: int) -> float:
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
            list(pool.map(lambda _: self.one(), range(count)))
        return count / (time.perf_counter() - t0)


def run(args: argparse.Namespace) -> dict[str, Any]:
    if not docker_available():
        raise BenchError("no Docker daemon answers (tests/run.sh starts one)")
    base = ensure_busybox_image()
    prefix = f"zbench{secrets.token_hex(3)}"
    root = Path(tempfile.mkdtemp(prefix="zriver-bench-container-"))
    roles = Roles(root, prefix)
    zriver = None
    try:
        roles.start()
        reply = roles.client.call("env.create", {"name": "bench", "image": base}, timeout=300)
        version = reply["version"]["version"]
        zriver = Zriver(roles, str(root))
        zriver.one()  # warm-up: the runner loads the env once
        raw = Raw(f"{prefix}-node/bench:{version}")  # the very image the runner uses
        raw.one()
        result: dict[str, Any] = {"samples": args.samples, "tasks": args.tasks,
                                  "image_size": reply["version"]["size"], "rounds": []}
        lat_raw, lat_z = [], []
        for _ in range(args.samples):
            lat_raw.append(raw.one())
            lat_z.append(zriver.one())
        result["latency"] = {
            "raw_p50": statistics.median(lat_raw), "zriver_p50": statistics.median(lat_z),
            "raw_p90": percentile(lat_raw, 90), "zriver_p90": percentile(lat_z, 90)}
        for _ in range(args.rounds):
            row = {"raw_tasks_per_s": raw.throughput(args.tasks, 2),
                   "zriver_tasks_per_s": zriver.throughput(args.tasks)}
            result["rounds"].append(row)
            print(f"round: raw {row['raw_tasks_per_s']:.2f}/s, "
                  f"zriver {row['zriver_tasks_per_s']:.2f}/s", file=sys.stderr, flush=True)
        result["throughput"] = {
            key: statistics.median(r[key] for r in result["rounds"])
            for key in ("raw_tasks_per_s", "zriver_tasks_per_s")}
        return result
    finally:
        if zriver is not None:
            zriver.close()
        roles.stop()
        _cleanup(prefix)
        shutil.rmtree(root, ignore_errors=True)


def _cleanup(prefix: str) -> None:
    import docker

    client = docker.from_env()
    for item in client.api.containers(all=True):
        names = [n.lstrip("/") for n in item.get("Names") or []]
        if any(n.startswith(prefix) for n in names) or (item.get("Image") or "").startswith(prefix):
            with contextlib.suppress(Exception):
                client.api.remove_container(item["Id"], force=True)
    for image in client.api.images():
        for tag in image.get("RepoTags") or []:
            if tag.startswith(prefix):
                with contextlib.suppress(Exception):
                    client.api.remove_image(tag, force=True)


def table(result: dict[str, Any]) -> str:
    lat, thr = result["latency"], result["throughput"]
    rows = [
        ("latency p50 (s)", lat["raw_p50"], lat["zriver_p50"], lat["zriver_p50"] / lat["raw_p50"]),
        ("latency p90 (s)", lat["raw_p90"], lat["zriver_p90"], lat["zriver_p90"] / lat["raw_p90"]),
        (f"throughput, {result['tasks']} tasks (tasks/s)", thr["raw_tasks_per_s"],
         thr["zriver_tasks_per_s"], thr["zriver_tasks_per_s"] / thr["raw_tasks_per_s"]),
    ]
    lines = [f"{'':44}{'docker run --rm':>16}{'zriver':>10}{'ratio':>8}"]
    for name, raw, ours, ratio in rows:
        lines.append(f"{name:44}{raw:>16.3f}{ours:>10.3f}{ratio:>8.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=30, help="latency samples per side")
    parser.add_argument("--tasks", type=int, default=200, help="tasks per throughput round")
    parser.add_argument("--rounds", type=int, default=1, help="throughput rounds per side")
    parser.add_argument("--json", help="also write the raw figures here")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        result = run(args)
    except BenchError as exc:
        print(f"bench/container.py: {exc}", file=sys.stderr)
        return 1
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
