"""Fixtures for tests that need a real Docker engine (not a test module).

Import them into a test module with ``from docker_fixtures import *`` (pytest puts ``tests/``
on ``sys.path``). ``docker_client`` fails under ``CI=true`` when no daemon answers and skips
otherwise. ``dcluster`` makes in-process clusters whose host and runners use image prefixes
unique to the test, so that several test sessions may share one Docker daemon, and the host's
images are never mistaken for a runner's own copy (each runner really loads). Teardown
removes every container (by the runners' ``zriver.runner`` label and the host's env container
names) and image (by prefix) the test made.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from docker_images import docker_available, ensure_busybox_image
from procs import missing

__all__ = ["docker_client", "busybox", "dcluster", "wait_docker_event", "SocketProxy",
           "submit_docker", "eventually", "udp_echo_in"]


@pytest.fixture(scope="session")
def docker_client():
    """A connected ``docker.DockerClient``; fail under CI=true when none answers, else skip."""
    if not docker_available():
        missing("no Docker daemon answers (tests/run.sh installs and starts one)")
    import docker

    client = docker.from_env(timeout=120)
    yield client
    client.close()


@pytest.fixture(scope="session")
def busybox(docker_client) -> str:
    """The tiny local test image (busybox applets under /bin)."""
    return ensure_busybox_image()


class DockerCluster:
    """Makes clusters with unique Docker prefixes and remembers what to clean up."""

    def __init__(self, make_cluster, client, tmp_path: Path) -> None:
        self.make_cluster = make_cluster
        self.client = client
        self.prefix = f"zt{os.getpid()}{secrets.token_hex(3)}"
        self.tmp_path = tmp_path
        self.clusters: list[Any] = []

    def __call__(self, runners: dict[str, dict] | None = None, host: dict | None = None):
        index = len(self.clusters)
        runners = {"n1": {"cores": 2, "memory": "4G"}} if runners is None else runners
        full = {name: {"image_prefix": f"{self.prefix}-c{index}-{name}",
                       "docker_probe_interval": 0.5, **spec} for name, spec in runners.items()}
        cluster = self.make_cluster(full, {"env_image_prefix": f"{self.prefix}-c{index}-host",
                                           **(host or {})})
        self.clusters.append(cluster)
        return cluster

    def runner_ids(self) -> set[str]:
        return {path.read_text().strip() for path in self.tmp_path.rglob("runner-id")}

    def cleanup(self) -> None:
        ids = self.runner_ids()
        for item in self.client.api.containers(all=True):
            labels = item.get("Labels") or {}
            names = [n.lstrip("/") for n in item.get("Names") or []]
            if labels.get("zriver.runner") in ids or any(n.startswith(self.prefix) for n in names):
                try:
                    self.client.api.remove_container(item["Id"], force=True)
                except Exception:
                    pass
        for image in self.client.api.images():
            for tag in image.get("RepoTags") or []:
                if tag.startswith(self.prefix):
                    try:
                        self.client.api.remove_image(tag, force=True)
                    except Exception:
                        pass


@pytest.fixture
def dcluster(make_cluster, docker_client, busybox, tmp_path):
    """``dcluster(runners={...}, host={...})`` -> a started cluster for container tasks."""
    factory = DockerCluster(make_cluster, docker_client, tmp_path)
    yield factory
    for cluster in factory.clusters:  # stop runners before removing their containers
        for name in list(cluster.runners):
            cluster.stop_runner(name)
    factory.cleanup()


def submit_docker(cluster, command: list[str], container: str = "bb", **spec) -> int:
    return cluster.submit(command, backend="docker", container=container, **spec)


def wait_docker_event(client, action: str, since: float | str, timeout: float = 20,
                      **filters) -> dict:
    """The first Docker event ``action`` (``pause``, ``destroy``...) matching ``filters``
    since ``since``; waits on Docker's event stream, fails after ``timeout``."""
    stream = client.events(since=since, until=time.time() + timeout,
                           filters={"event": action, **filters}, decode=True)
    try:
        for event in stream:
            return event
    finally:
        stream.close()
    raise AssertionError(f"no docker {action} event for {filters} within {timeout}s")


class SocketProxy:
    """A unix socket forwarding to the real Docker socket: stopping it looks, to a runner
    pointed at it, like the daemon going away (the real daemon keeps serving other tests)."""

    def __init__(self, path: Path, target: str = "/var/run/docker.sock") -> None:
        self.path, self.target = path, target
        self.url = f"unix://{path}"
        self._server: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> "SocketProxy":
        self.path.unlink(missing_ok=True)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(self.path))
        server.listen(64)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()
        return self

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self.target)
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self.path.unlink(missing_ok=True)
        with self._lock:
            conns, self._conns = self._conns, []
        for sock in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            except OSError:
                pass


def eventually(check: Callable[[], Any], timeout: float, what: str, sub=None) -> Any:
    """``check()`` once it is truthy; re-checked on each message of ``sub`` (a SUB socket on
    the host's events) or every 50 ms when there is none. Fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        if sub is not None:
            if sub.poll(100):
                sub.recv_multipart()
        else:
            threading.Event().wait(0.05)


UDP_ECHO_PORT = 5353
_UDP_ECHO = ("import socket\n"
             "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
             f"s.bind(('0.0.0.0', {UDP_ECHO_PORT}))\n"
             "print('ready', flush=True)\n"
             "while True:\n"
             "    data, peer = s.recvfrom(65535)\n"
             "    s.sendto(b'echo:' + data, peer)\n")


@contextlib.contextmanager
def udp_echo_in(client, container: str):
    """A UDP echo server (answers ``echo:`` + the datagram) on port ``UDP_ECHO_PORT`` inside
    ``container``'s network namespace: this machine's python entered with ``nsenter``
    (busybox has no UDP server). Yields the port; killed on exit."""
    pid = client.api.inspect_container(container)["State"]["Pid"]
    server = subprocess.Popen(["nsenter", "-t", str(pid), "-n", sys.executable, "-c", _UDP_ECHO],
                              stdout=subprocess.PIPE)
    try:
        assert server.stdout.readline() == b"ready\n"
        yield UDP_ECHO_PORT
    finally:
        server.kill()
        server.wait()
