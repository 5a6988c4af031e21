"""An in-process cluster for behaviour tests: a host and N runners on 127.0.0.1, ports bound to 0.

The cluster runs on its own event loop in a background thread; tests talk to it through the
real client over real sockets, exactly as a person's CLI would, and wait on state (``task.wait``
long-polls, event subscriptions), never on sleeps. ``stop`` ends every runner (and its tasks)
and the host, then checks the scheduler's invariants.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from procs import ADMIN, end_keepers

from zriver import keys as keyfiles

from zriver.client.api import Client
from zriver.config import HostSettings, RunnerSettings
from zriver.host.service import Host
from zriver.eventloop import new_loop
from zriver.roles import runner_for
from zriver.runner.agent import Runner

EMBEDDED = os.environ.get("ZRIVER_TEST_EMBEDDED") == "1"
"""Whether the fixture's runners speak to the host over the in-process link by default."""


class Cluster:
    """Host + runners in a thread. ``client()`` gives a connected ``Client``."""

    def __init__(self, root: Path, runners: dict[str, dict[str, Any]] | None = None,
                 host: dict[str, Any] | None = None) -> None:
        self.root = root
        defaults = {"data_dir": str(root / "host"), "router_port": 0, "xsub_port": 0,
                    "xpub_port": 0, "stream_port": 0, "relay_port": 0, "web_port": 0, "heartbeat_interval": 0.2, "heartbeat_misses": 3}
        self.host_settings = HostSettings(**{**defaults, **(host or {})})
        self.runner_specs = runners if runners is not None else {"n1": {}}
        self.loop = new_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.host: Host | None = None
        self.runners: dict[str, Runner] = {}
        self._clients: list[Client] = []
        self._runner_dirs: set[Path] = set()

    # ---- control -----------------------------------------------------------------------
    def run(self, fn: Callable[[], Any], timeout: float = 30) -> Any:
        """Run ``fn`` (a coroutine function) on the cluster loop and return its result."""
        return asyncio.run_coroutine_threadsafe(fn(), self.loop).result(timeout)

    def call_soon(self, fn: Callable[[], Any]) -> Any:
        """Run plain ``fn`` on the loop thread (to read or poke state safely)."""

        async def wrapper():
            return fn()

        return self.run(wrapper)

    def start(self) -> "Cluster":
        self.thread.start()
        self.run(self._start_host)
        for name, overrides in self.runner_specs.items():
            self.start_runner(name, **overrides)
        return self

    @property
    def secure(self) -> bool:
        return self.host_settings.security != "none"

    async def _start_host(self) -> None:
        bootstrap = []
        if self.secure:
            self.server_keys, _ = keyfiles.ensure_server_keys(self.host_settings.data_dir)
            public, _ = keyfiles.ensure_client_pair(self.admin_key, ADMIN, "admin")
            bootstrap = [(ADMIN, "admin", public)]
        self.host = Host(self.host_settings, bootstrap=bootstrap)
        await self.host.start()

    @property
    def admin_key(self) -> Path:
        """Where the CLI looks for its key when ``ZRIVER_HOME`` is the host's data dir."""
        return Path(self.host_settings.data_dir) / "keys" / "client.key_secret"

    def key_for(self, name: str, role: str) -> Path:
        """A key pair for ``name`` trusted by the host with ``role`` (``key.add`` by the
        admin, as ``zriver keys add`` does)."""
        secret = self.root / "keys" / f"{role}-{name}.key_secret"
        public, _ = keyfiles.ensure_client_pair(secret, name, role)
        known = {k["public_key"] for k in self.client().call("key.list")["keys"]}
        if public not in known:
            self.client().call("key.add", {"name": name, "role": role, "public_key": public})
        return secret

    def start_runner(self, name: str, embedded: bool = EMBEDDED, **overrides: Any) -> Runner:
        """Start runner ``name`` on the cluster's loop: over loopback sockets, or with
        ``embedded`` over an in-process link as ``zriver up`` runs its runner
        (``ZRIVER_TEST_EMBEDDED=1`` makes that every runner's default)."""
        settings = RunnerSettings(name=name, data_dir=str(self.root / name), kill_grace=2.0,
                                  request_timeout=1.0, log_poll_interval=0.05)
        if self.secure:
            settings = replace(settings, key=str(self.key_for(name, "runner")),
                               host_key=self.server_keys.public)
        else:
            settings = replace(settings, key="none")
        settings = replace(settings, **overrides)
        self._runner_dirs.add(Path(settings.data_dir))

        async def start() -> Runner:
            runner = runner_for(self.host, settings, embedded=embedded)
            await runner.start()
            await asyncio.wait_for(runner.registered.wait(), 10)
            return runner

        self.runners[name] = self.run(start)
        return self.runners[name]

    def stop_runner(self, name: str, kill_tasks: bool = True) -> None:
        runner = self.runners.pop(name)
        self.run(lambda: runner.stop(kill_tasks))

    def stop(self) -> None:
        for client in self._clients:
            client.close()
        try:
            for name in list(self.runners):
                self.stop_runner(name)
            if self.host is not None:
                self.call_soon(self.host.scheduler.validate)
                self.run(self.host.stop)
        finally:
            end_keepers(sorted(self._runner_dirs))
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    # ---- helpers for tests -------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return self.host.endpoints["router"]

    def cli_flags(self, key: Path | None = None) -> list[str]:
        """The CLI's flags that reach this cluster as its admin (or with ``key``)."""
        if not self.secure:
            return ["--host", self.endpoint, "--key", "none"]
        return ["--host", self.endpoint, "--key", str(key or self.admin_key),
                f"--host-key={self.server_keys.public}"]  # a z85 key may start with "-"

    def client(self, timeout: float = 10.0, key: Path | None = None) -> Client:
        """A client with ``key`` (a secret key file; default: the admin's)."""
        if self.secure:
            client = Client(self.endpoint, timeout, key=str(key or self.admin_key),
                            host_key=self.server_keys.public)
        else:
            client = Client(self.endpoint, timeout, key="none")
        self._clients.append(client)
        return client

    def submit(self, command: list[str], **spec: Any) -> int:
        return self.submit_many([{"command": command, **spec}])[0]

    def submit_many(self, specs: list[dict[str, Any]]) -> list[int]:
        """Submit ``specs``; a spec that names no ``user`` runs as root (the tests write into
        root-only temporary directories); pass ``user=None`` for the node's own choice."""
        full = [{"workdir": str(self.root), "owner": ADMIN, "user": "root", **spec}
                for spec in specs]
        return self.client_of(full[0]).call("task.submit", {"tasks": full})["ids"]

    def client_of(self, spec: dict[str, Any]) -> Client:
        """Who submits ``spec``: the admin, or, for a spec naming another owner and no
        ``user`` (which only admins may ask for), a user key of that name: the owner of a
        task is the key that submitted it."""
        owner = spec.get("owner", ADMIN)
        if not self.secure or owner == ADMIN or spec.get("user") is not None:
            return self.client()
        return self.client(key=self.key_for(owner, "user"))

    def wait(self, *ids: int) -> list[dict[str, Any]]:
        return self.client(timeout=60).wait(list(ids))

    def task(self, task_id: int) -> dict[str, Any]:
        return self.client().call("task.get", {"id": task_id})["task"]

    def wait_state(self, task_id: int, states: set[str], timeout: float = 10.0) -> dict:
        """Wait (on the event stream) until ``task_id`` is in one of ``states``."""
        client = self.client()
        sub = client.subscribe([f"evt.task.{task_id}"])
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                task = self.task(task_id)  # after subscribing: no event can slip between
                if task["state"] in states:
                    return task
                sub.poll(100)
                while sub.poll(0):
                    sub.recv_multipart()
            raise AssertionError(f"task {task_id} never reached {states}: {self.task(task_id)}")
        finally:
            sub.close(linger=0)

    def log(self, task_id: int, stream: str = "stdout") -> bytes:
        reply = self.client().call("task.logs", {"id": task_id, "stream": stream})
        return reply["data"]
