"""Faults around a task, with real processes (``zriver host`` and ``zriver runner``):

* the Docker daemon restarted (SIGTERM, then started again, as ``systemctl restart docker``
  would) under a running container task. It is a *private* dockerd of the test's own (own
  socket, data root, exec root, no bridge, no iptables), so the machine's daemon that other
  tests use is never touched and always keeps running whatever happens here;
* the disk full while a task writes its log: the runner's data dir (logs and ``runner.db``) is
  a tmpfs of a few MB, and a task writes more than fits;
* the host's store unwritable: its data dir is a tmpfs that is filled up under the running
  host (a read-only remount cannot be done under a process holding files open for writing,
  and root ignores permission bits; a full filesystem fails the writes of open files too),
  and a host started on a read-only bind mount.

What each test observed is printed (``pytest -s``) and recorded in ``docs/reliability.md``
(section "Faults around a task: Docker restarts, full disks, a read-only store").
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import psutil
import pytest

from docker_fixtures import docker_client  # noqa: F401  (fixture: fails under CI=true)
from docker_images import ensure_busybox_image
from procs import Cluster, wait_until
from zriver.errors import Unavailable, ZriverError

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

HOST_SETTINGS = {"heartbeat_interval": 0.2, "heartbeat_misses": 5}
RUNNER_SETTINGS = {"cores": 2, "request_timeout": 1.0, "kill_grace": 1.0}
FINAL = {"completed", "failed", "killed", "killed_oom", "lost"}


# ---- mounts --------------------------------------------------------------------------------
def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
    return result


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``path``; lazily unmounted afterwards, whatever happens."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    sh("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path))
    try:
        yield path
    finally:
        sh("umount", "-l", str(path), check=False)


def fill(directory: Path, name: str = "filler") -> int:
    """Write zeros into ``directory/name`` until the filesystem is full; the bytes written."""
    written = 0
    chunk = b"\0" * 65536
    with open(directory / name, "wb", buffering=0) as out:
        for _ in range(1 << 16):  # bounded: 4 GiB at most
            try:
                written += out.write(chunk)
            except OSError as exc:
                assert exc.errno == 28, exc  # ENOSPC
                break
        for size in (4096, 512, 1):  # the last partial pages
            for _ in range(64):
                try:
                    written += out.write(b"\0" * size)
                except OSError:
                    break
    return written


def free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


# ---- a private Docker daemon -----------------------------------------------------------------
class PrivateDocker:
    """A dockerd of this test's own under ``root`` (short: unix socket paths are limited),
    started like ``tests/run.sh`` starts the machine's (``setsid``, its log to a file)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sock = root / "d.sock"
        self.url = f"unix://{self.sock}"
        self.log = root / "dockerd.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> float:
        """Start dockerd and wait until it answers; the seconds that took."""
        dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
        started = time.monotonic()
        with open(self.log, "ab") as out:
            # In a network namespace of its own: a dockerd with "--bridge none" deletes the
            # machine's docker0, which the shared daemon's containers need.
            self.proc = subprocess.Popen(
                ["unshare", "--net", "--", dockerd, "--host", self.url, "--data-root", str(self.root / "data"),
                 "--exec-root", str(self.root / "x"), "--pidfile", str(self.root / "d.pid"),
                 "--bridge", "none", "--iptables=false", "--ip-masq=false",
                 "--ip-forward=false", "--shutdown-timeout", "2"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        wait_until(self.answers, timeout, "the private dockerd to answer", self.tail)
        return time.monotonic() - started

    def answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"the private dockerd exited {self.proc.returncode}\n"
                                 f"{self.tail()}")
        result = subprocess.run(["docker", "-H", self.url, "version", "--format",
                                 "{{.Server.Version}}"], capture_output=True, text=True,
                                timeout=20)
        return result.returncode == 0 and bool(result.stdout.strip())

    def stop(self, timeout: float = 20) -> float:
        """SIGTERM (its containers are stopped, as on ``systemctl stop docker``), wait; the
        seconds it took. SIGKILL after ``timeout``."""
        started = time.monotonic()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        return time.monotonic() - started

    def close(self) -> None:
        """Stop it, end what it left (its containerd shims, found by our exec root), remove
        its files. Never raises."""
        try:
            self.stop()
        except Exception:
            pass
        marker = str(self.root)
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if any(marker in part for part in proc.info["cmdline"] or []):
                    proc.kill()
            except psutil.Error:
                continue
        for mount in reversed(Path("/proc/self/mounts").read_text().splitlines()):
            target = mount.split()[1]
            if target.startswith(marker):
                sh("umount", "-l", target, check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def tail(self, lines: int = 20) -> str:
        try:
            return "--- private dockerd log ---\n" + "\n".join(
                self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(no dockerd log: {exc})"


@pytest.fixture
def private_docker(docker_client) -> Iterator[PrivateDocker]:  # noqa: F811
    """A started private dockerd holding the busybox test image; removed afterwards."""
    root = Path(f"/tmp/zrd-{os.getpid()}-{time.monotonic_ns() % 10**6}")
    root.mkdir(parents=True)
    daemon = PrivateDocker(root)
    try:
        daemon.start()
        previous = os.environ.get("DOCKER_HOST")
        os.environ["DOCKER_HOST"] = daemon.url  # ensure_busybox_image runs the docker CLI
        try:
            ensure_busybox_image()
        finally:
            if previous is None:
                del os.environ["DOCKER_HOST"]
            else:
                os.environ["DOCKER_HOST"] = previous
        yield daemon
    finally:
        daemon.close()


def counts(tasks: dict[int, dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for task in tasks.values():
        out[task["state"]] = out.get(task["state"], 0) + 1
    return out


# ---- 1. the Docker daemon restarted under a running container --------------------------------
@pytest.mark.docker
def test_docker_daemon_restart_under_a_running_container(private_docker: PrivateDocker,
                                                         tmp_path: Path) -> None:
    with Cluster(tmp_path / "c") as cluster:
        cluster.start_host(docker_host=private_docker.url, env_image_prefix="zrt-host",
                           **HOST_SETTINGS)
        runner = cluster.start_runner("n1", docker_host=private_docker.url,
                                      image_prefix="zrt-runner", docker_probe_interval=0.5,
                                      **RUNNER_SETTINGS)
        with cluster.host.client(timeout=120) as client:
            client.call("env.create", {"name": "bb", "image": "zriver-test-busybox",
                                       "commit": True}, timeout=120)
        spec = {"backend": "docker", "container": "bb", "workdir": "/"}
        warm = cluster.submit(["true"], **spec)  # the runner loads the env version once
        assert cluster.wait_final([warm], 60)[warm]["state"] == "completed"

        # A container that traps SIGTERM (a shell as PID 1 would ignore it, and dockerd would
        # wait 10 s before its SIGKILL): it says so and exits 143, like most programs.
        task_id = cluster.submit(["sh", "-c", "trap 'echo got TERM; exit 143' TERM; "
                                              "echo started; while :; do sleep 0.05; done"],
                                 **spec)
        cluster.wait_task_state(task_id, "running", timeout=30)
        log = runner.data_dir / "logs" / f"{task_id}.out"
        cluster.wait_for(lambda: log.exists() and "started" in log.read_text(), 10,
                         "the container's first output")

        stop_took = private_docker.stop()
        restart_at = time.monotonic()
        start_took = private_docker.start()
        task = cluster.wait_final([task_id], 30)[task_id]
        final_after = time.monotonic() - restart_at
        def docker_back() -> dict | None:
            node = cluster.nodes()["n1"]
            return node if "docker" in node["backends"] else None

        node_back = cluster.wait_for(docker_back, 20, "docker back in n1's backends")
        back_after = time.monotonic() - restart_at
        after = cluster.submit(["sh", "-c", "echo after"], **spec)
        after_task = cluster.wait_final([after], 30)[after]
        figures = {"final state": task["state"], "exit code": task["exit_code"],
                   "detail": task["detail"], "output": log.read_text().split("\n"),
                   "dockerd stop (s)": round(stop_took, 2),
                   "dockerd start (s)": round(start_took, 2),
                   "restart to final (s)": round(final_after, 2),
                   "restart to docker usable again (s)": round(back_after, 2),
                   "next container task": after_task["state"]}
        print("\ndocker daemon restart:", figures)

        assert (task["state"], task["exit_code"]) == ("failed", 143), task
        assert "143" in task["detail"], task
        assert log.read_text() == "started\ngot TERM\n"
        assert node_back["state"] == "online" and runner.alive()
        assert (after_task["state"], after_task["exit_code"]) == ("completed", 0), after_task
        assert (runner.data_dir / "logs" / f"{after}.out").read_text() == "after\n"
        assert [e["state"] for e in cluster.task(task_id)["events"]].count("running") == 1


# ---- 2. the disk full while a task writes its log --------------------------------------------
def test_full_disk_while_a_task_writes_its_log(tmp_path: Path) -> None:
    data = tmp_path / "runner-data"
    with tmpfs(data, "8m"), Cluster(tmp_path / "c") as cluster:
        cluster.start_host(**HOST_SETTINGS)
        runner = cluster.start_runner("n1", data_dir=str(data), **RUNNER_SETTINGS)
        before = cluster.submit(["sh", "-c", "echo before"])
        assert cluster.wait_final([before], 10)[before]["state"] == "completed"

        # 16 MB to stdout into an 8 MB filesystem.
        writer = cluster.submit(["dd", "if=/dev/zero", "bs=64k", "count=256"])
        task = cluster.wait_final([writer], 30)[writer]
        full = free_bytes(data)
        # More tasks while the disk is still full, long enough (0.3 s) for the runner to write
        # their start records and updates into runner.db on that full disk: each one ends,
        # and the runner keeps working.
        during = [cluster.submit(["sh", "-c", "sleep 0.3; echo during"]) for _ in range(3)]
        during_tasks = cluster.wait_final(during, 20)
        assert runner.alive(), runner.tail()

        # Space comes back (an operator removes the big log): everything works as before.
        (data / "logs" / f"{writer}.out").unlink()
        freed_at = time.monotonic()
        after = cluster.submit(["sh", "-c", "echo after"])
        after_task = cluster.wait_final([after], 20)[after]
        figures = {"writer": (task["state"], task["exit_code"], task["detail"]),
                   "writer stderr": (data / "logs" / f"{writer}.err").read_text()[:200],
                   "free bytes when full": full,
                   "tasks while full": {i: (t["state"], t["exit_code"], t["detail"])
                                        for i, t in during_tasks.items()},
                   "after space came back": (after_task["state"], after_task["exit_code"]),
                   "free to completed (s)": round(time.monotonic() - freed_at, 2),
                   "runner log errors": runner.log.read_text(errors="replace").count("Error")}
        print("\nfull disk:", figures)

        assert task["state"] in ("failed", "completed") and task["state"] in FINAL, task
        assert all(t["state"] in FINAL for t in during_tasks.values())
        assert (after_task["state"], after_task["exit_code"]) == ("completed", 0), after_task
        assert (data / "logs" / f"{after}.out").read_text() == "after\n"
        assert runner.alive() and cluster.nodes()["n1"]["state"] == "online"
        assert "Traceback" not in runner.log.read_text(errors="replace"), runner.tail()


# ---- 3. the host's store unwritable ------------------------------------------------------
def store_ids(cluster: Cluster) -> set[int]:
    """Every task id the host lists (page after page: a page holds 1,000 at most)."""
    ids: set[int] = set()
    before = None
    with cluster.host.client(timeout=5) as client:
        for _ in range(1000):  # bounded: a million rows
            reply = client.call("task.list", {"limit": 1000, "before": before})
            ids |= {t["id"] for t in reply["tasks"]}
            before = reply.get("next")
            if before is None:
                break
    return ids


def test_host_store_full_under_a_running_host(tmp_path: Path) -> None:
    home = tmp_path / "c" / "host"
    with tmpfs(home, "24m"), Cluster(tmp_path / "c") as cluster:
        cluster.start_host(**HOST_SETTINGS)
        cluster.start_runner("n1", **RUNNER_SETTINGS)
        spec = {"command": ["true"], "cores": 1, "workdir": str(tmp_path), "owner": "t",
                "user": "root"}  # root: tmp_path is root's only
        with cluster.host.client(timeout=3) as client:
            before = client.call("task.submit", {"tasks": [spec] * 20})["ids"]
        filled = fill(home)
        acked_full: list[int] = []
        outcomes: dict[str, int] = {}
        started = time.monotonic()
        with cluster.host.client(timeout=3) as client:
            for _ in range(40):  # bounded: 40 batches of 50 while the disk is full
                try:
                    acked_full += client.call("task.submit", {"tasks": [spec] * 50})["ids"]
                    outcome = "acknowledged"
                except Unavailable as exc:
                    outcome = "error unavailable" if "store" in str(exc) else "no reply"
                except ZriverError as exc:
                    outcome = f"error {exc.code}"
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
                if outcome == "no reply" or not cluster.host.alive():
                    break
        full_for = time.monotonic() - started
        host_alive = cluster.host.alive()
        (home / "filler").unlink()
        freed_at = time.monotonic()
        if not host_alive:
            cluster.restart_host()
        with cluster.host.client(timeout=3) as client:
            after = client.call("task.submit", {"tasks": [spec] * 5})["ids"]
        acked = before + acked_full + after
        stored = store_ids(cluster)
        lost = sorted(set(acked) - stored)
        log = cluster.host.log.read_text(errors="replace")
        print("\nhost store full:", {
            "filled bytes": filled, "batches while full": outcomes,
            "acked while full": len(acked_full),
            "distinct ids acked while full": len(set(acked_full)),
            "ids acked while full and reissued after": len(set(acked_full) & set(after)),
            "host alive": host_alive,
            "seconds full": round(full_for, 2), "acked": len(acked), "stored": len(stored),
            "acked but lost": len(lost), "first lost": lost[:3],
            "FullError tracebacks in the host log": log.count("apsw.FullError")})

        assert not lost, f"{len(lost)} acknowledged submits are not in the store: {lost[:10]}"
        assert host_alive, "the host died of a full disk"
        assert set(outcomes) <= {"acknowledged", "error unavailable"}, outcomes
        assert outcomes.get("error unavailable"), f"nothing was refused while full: {outcomes}"
        assert "Traceback" not in log, "a traceback in the host's log"
        tasks = cluster.wait_final(acked, 30)
        assert all(t["state"] == "completed" for t in tasks.values()), counts(tasks)
        print("all final", round(time.monotonic() - freed_at, 2), "s after space came back")


def test_host_on_a_read_only_store_says_so_and_restarts_cleanly(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root")
    with Cluster(tmp_path / "c") as cluster:
        cluster.start_host(**HOST_SETTINGS)
        cluster.start_runner("n1", **RUNNER_SETTINGS)
        first = cluster.submit(["sh", "-c", "echo first"])
        assert cluster.wait_final([first], 10)[first]["state"] == "completed"
        settings = {**cluster.host.settings, **cluster.host.ports()}
        cluster.host.terminate()
        home = cluster.home
        sh("mount", "--bind", str(home), str(home))
        try:
            sh("mount", "-o", "remount,bind,ro", str(home))
            with pytest.raises(OSError):
                (home / "probe").write_text("x")  # read-only even for root
            host = cluster.restart_host(wait=False)
            started = time.monotonic()
            status = host.proc.wait(timeout=20)
            host.expected_exit = True  # observed and asserted below
            exited_after = time.monotonic() - started
        finally:
            sh("umount", "-l", str(home), check=False)
        tail = host.tail(8)
        print("\nread-only store:", {"exit status": status,
                                      "exited after (s)": round(exited_after, 2),
                                      "log": tail})
        assert status != 0
        assert "read-only" in tail.lower() or "readonly" in tail.lower(), tail
        assert "Traceback" not in tail, f"a traceback instead of a message:\n{tail}"

        # Writable again: a host starts on the same store and ports, with its tasks.
        restart_at = time.monotonic()
        cluster.start_host(**settings)
        cluster.wait_node_state("n1", "online", timeout=20)
        assert cluster.task(first)["state"] == "completed"
        second = cluster.submit(["sh", "-c", "echo second"])
        assert cluster.wait_final([second], 10)[second]["state"] == "completed"
        print("writable again: a new task completed",
              round(time.monotonic() - restart_at, 2), "s after the restart")
