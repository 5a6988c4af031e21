"""Start, watch and stop real ``zriver host`` / ``zriver runner`` processes in tests.

Every role runs as ``python -m zriver <role> --config <file>`` with its TOML config written into
the test's temporary directory. Its stdout and stderr (where zriver logs) go to
``<dir>/<name>.log``, so a failing test can show what the process said (``RoleProcess.tail``).

Synchronisation is always by polling real state with a deadline, never by a fixed sleep:

* a host is ready when ``<data_dir>/endpoints.json`` names *its* pid (a host killed with -9
  leaves the file of its previous life behind) and it answers ``cluster.hello``;
* a runner is ready when the host lists its node as ``online``;
* ``wait_until`` polls any predicate and fails with a message (and the logs of every process
  of the cluster) when the deadline passes, or at once when a process died unexpectedly.

``Cluster`` is a context manager that owns every process it started and, whatever happens,
ends them on exit (SIGTERM, a bounded wait, then SIGKILL), together with any task process
group a test registered with ``adopt_group`` (tasks of a runner killed with -9 outlive it).

Typical use::

    with Cluster(tmp_path) as cluster:
        host = cluster.start_host(heartbeat_interval=0.2)
        cluster.start_runner("n1", cores=2)
        client = cluster.client()
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import psutil
import pytest

import zriver
from zriver import keys as keyfiles
from zriver.client.api import Client
from zriver.errors import Unavailable, ZriverError

T = TypeVar("T")

#: Seconds a host or runner may take to become ready (interpreter start and imports included).
READY_TIMEOUT = 20.0
#: Seconds a role gets to stop after SIGTERM before it is killed.
STOP_TIMEOUT = 5.0
#: Polling period of every waiting helper (how often state is looked at, not a synchronisation).
POLL = 0.05

_PACKAGE_ROOT = str(Path(zriver.__file__).resolve().parent.parent)
_FINAL = frozenset({"completed", "failed", "killed", "killed_oom", "lost"})


# ---- generic helpers -----------------------------------------------------------------------
def wait_until(predicate: Callable[[], T], timeout: float, what: str,
               diagnose: Callable[[], str] | None = None) -> T:
    """Poll ``predicate`` until it returns something truthy (returned); fail after ``timeout``.

    ``what`` says what was awaited; ``diagnose`` adds context to the failure (logs, last state).
    A predicate that raises ``Unavailable`` (the host does not answer yet) counts as "not yet";
    any other error propagates.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = predicate()
            if result:
                return result
        except Unavailable as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            message = f"timed out after {timeout:.1f}s waiting for {what}"
            if last_error is not None:
                message += f" (last error: {last_error})"
            if diagnose is not None:
                message += "\n" + diagnose()
            raise AssertionError(message)
        time.sleep(POLL)


def toml_value(value: Any) -> str:
    """``value`` as a TOML literal (str, bool, int, float, or a table of strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def write_config(path: Path, settings: dict[str, Any]) -> Path:
    """Write ``settings`` as a flat TOML file (the layout every zriver role reads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{key} = {toml_value(value)}\n" for key, value in settings.items()))
    return path


def missing(message: str) -> None:
    """A prerequisite this machine lacks: skip the test, but fail it under ``CI=true``
    (tests/run.sh installs every prerequisite, so CI must not pass by skipping)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie awaiting its reaper counts as gone)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def group_members(pgid: int) -> list[int]:
    """Pids of the live (non-zombie) processes whose process group is ``pgid``."""
    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.pid) == pgid:
                members.append(proc.pid)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return members


def keepers_of(data_dirs: list[Path]) -> list[psutil.Process]:
    """The live task keepers (``zriver.runner.keeper``) serving any of ``data_dirs``."""
    wanted = {os.path.realpath(str(d)) for d in data_dirs}
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if (proc.info["status"] != psutil.STATUS_ZOMBIE and len(cmdline) >= 2
                and "zriver.runner.keeper" in cmdline and
                os.path.realpath(cmdline[-1]) in wanted):
            found.append(proc)
    return found


def end_keepers(data_dirs: list[Path]) -> None:
    """SIGKILL the task groups of the keepers of ``data_dirs``, then the keepers (a runner
    stopped without ``--kill-tasks`` leaves its tasks to its keeper: a test must not)."""
    for keeper in keepers_of(data_dirs):
        try:
            for child in keeper.children():
                try:
                    os.killpg(child.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            keeper.kill()
        except psutil.Error:
            pass


ADMIN = "test"
"""The admin key's name in test clusters (tasks submitted with it are owned by "test")."""


def admin_key_file(home: Path) -> Path:
    return home / "keys" / "client.key_secret"


def make_admin_key(home: Path) -> Path:
    """What ``zriver init keys`` makes for the admin: a pair where the CLI finds it
    (``$ZRIVER_HOME/keys/client.key_secret``) and the copy the host imports at start."""
    secret = admin_key_file(home)
    public, _ = keyfiles.ensure_client_pair(secret, ADMIN, "admin")
    keyfiles.ensure_admin_import(home, public, ADMIN)
    return secret


def role_environment(home: Path) -> dict[str, str]:
    """The environment of a role or CLI process: ``ZRIVER_HOME`` set, nothing inherited that
    points at another cluster, and this checkout importable whatever the working directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZRIVER_")}
    env["ZRIVER_HOME"] = str(home)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


# ---- one role process ----------------------------------------------------------------------
class RoleProcess:
    """One ``zriver host`` or ``zriver runner`` subprocess and its log file."""

    def __init__(self, role: str, name: str, config: Path, log: Path, env: dict[str, str],
                 cwd: Path, wrap: Callable[[list[str]], list[str]] | None = None) -> None:
        """``wrap`` turns the command line into the one to run (e.g. ``NetNamespace.command``:
        inside a network namespace); it must exec the role, so that ``pid`` is the role's."""
        self.role, self.name, self.config, self.log = role, name, config, log
        self.expected_exit = False
        command = [sys.executable, "-m", "zriver", role, "--config", str(config)]
        with open(log, "ab") as out:
            out.write(f"---- starting {role} {name} ----\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                wrap(command) if wrap else command,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def check_alive(self) -> None:
        """Fail with the process's log when it exited although nobody stopped it."""
        if not self.alive() and not self.expected_exit:
            raise AssertionError(f"{self.role} {self.name} exited unexpectedly with status "
                                 f"{self.proc.returncode}\n{self.tail()}")

    def kill9(self) -> None:
        """SIGKILL this process only (its tasks, in their own process groups, survive)."""
        self.expected_exit = True
        if self.alive():
            self.proc.kill()
        self.proc.wait(timeout=STOP_TIMEOUT)

    def terminate(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL; return the exit status."""
        self.expected_exit = True
        if self.alive():
            self.proc.terminate()
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(timeout=STOP_TIMEOUT)

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError as exc:
            text = f"(no log: {exc})"
        body = "\n".join(text.splitlines()[-lines:])
        return f"--- {self.role} {self.name} (pid {self.pid}) log tail ---\n{body}"


class HostProcess(RoleProcess):
    """A host; ``endpoints`` is what it wrote to ``endpoints.json`` once ready. Clients of it
    made here use the admin key of its data dir (see ``Cluster``)."""

    def __init__(self, data_dir: Path, settings: dict[str, Any], **kwargs: Any) -> None:
        self.data_dir = data_dir
        self.settings = settings
        self.endpoints: dict[str, Any] = {}
        super().__init__(**kwargs)

    @property
    def host_key(self) -> str:
        return self.endpoints.get("host_key", "")

    def client(self, timeout: float = 2.0, key: Path | None = None) -> Client:
        """A client with ``key`` (a secret key file; default: the admin's), or a plain one
        when the host runs with ``security = "none"``."""
        if not self.host_key:
            return Client(self.endpoint, timeout=timeout, key="none")
        return Client(self.endpoint, timeout=timeout, key=str(key or admin_key_file(self.data_dir)),
                      host_key=self.host_key)

    @property
    def endpoint(self) -> str:
        return self.endpoints["router"]

    def ports(self) -> dict[str, int]:
        """The ports this host actually bound (to restart a host on the same ones)."""
        names = {"router": "router", "xsub": "xsub", "xpub": "xpub", "streams": "stream",
                 "relay": "relay"}
        return {f"{name}_port": int(self.endpoints[key].rsplit(":", 1)[1])
                for key, name in names.items() if key in self.endpoints}

    def _read_endpoints(self) -> dict[str, Any] | None:
        self.check_alive()
        try:
            data = json.loads((self.data_dir / "endpoints.json").read_text())
        except (OSError, ValueError):
            return None
        return data if data.get("pid") == self.pid else None  # not a previous life's file

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> dict[str, Any]:
        self.endpoints = wait_until(self._read_endpoints, timeout,
                                    f"host {self.name} to write its endpoints.json", self.tail)
        with self.client() as client:
            wait_until(lambda: client.call("cluster.hello", timeout=1), timeout,
                       f"host {self.name} to answer", self.tail)
        return self.endpoints


class RunnerProcess(RoleProcess):
    """A runner; ``netns`` is the network namespace it runs in (None: the machine's own)."""

    def __init__(self, data_dir: Path, settings: dict[str, Any], netns: Any = None,
                 **kwargs: Any) -> None:
        self.data_dir = data_dir
        self.settings = settings
        self.netns = netns
        super().__init__(wrap=netns.command if netns is not None else None, **kwargs)


# ---- a whole cluster -----------------------------------------------------------------------
class Cluster:
    """The processes of one test cluster under ``base``; ends them all on exit.

    Directory layout: ``base/host`` (host data dir and ``ZRIVER_HOME``), ``base/runner-<name>``
    (runner data dirs), ``base/logs/<role>-<name>.log``, ``base/config/*.toml``.
    """

    def __init__(self, base: Path) -> None:
        self.base = Path(base)
        self.home = self.base / "host"
        self.home.mkdir(parents=True, exist_ok=True)
        make_admin_key(self.home)
        (self.base / "logs").mkdir(exist_ok=True)
        self.env = role_environment(self.home)
        self.host: HostProcess | None = None
        self.runners: dict[str, RunnerProcess] = {}
        self.processes: list[RoleProcess] = []
        self.groups: set[int] = set()
        self._clients: list[Client] = []

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- starting ------------------------------------------------------------------------
    def _log(self, role: str, name: str) -> Path:
        return self.base / "logs" / f"{role}-{name}.log"

    def start_host(self, wait: bool = True, **settings: Any) -> HostProcess:
        """Start a host on ``base/host`` (ports 0 unless given) and wait until it answers."""
        settings = {"data_dir": str(self.home), "bind_address": "127.0.0.1", "router_port": 0,
                    "xsub_port": 0, "xpub_port": 0, "stream_port": 0, "relay_port": 0,
                    "web_port": 0, **settings}
        config = write_config(self.base / "config" / "host.toml", settings)
        host = HostProcess(self.home, settings, role="host", name="host", config=config,
                           log=self._log("host", "host"), env=self.env, cwd=self.base)
        self.host = host
        self.processes.append(host)
        if wait:
            host.wait_ready()
        return host

    def restart_host(self, wait: bool = True) -> HostProcess:
        """Start a new host with the previous one's settings, data dir and actual ports
        (the old one must be gone: killed or terminated)."""
        old = self.host
        assert old is not None and not old.alive(), "stop the host before restarting it"
        return self.start_host(wait, **{**old.settings, **old.ports()})

    def start_runner(self, name: str, wait: bool = True, netns: Any = None,
                     **settings: Any) -> RunnerProcess:
        """Start runner ``name`` connected to the current host; wait until it is online.

        ``netns`` (a ``netns.NetNamespace``) runs it inside that network namespace; the host
        must then be bound to an address the namespace reaches (its ``host_addr``, or the
        ``host_addr`` of another namespace, to which a route is added)."""
        assert self.host is not None and self.host.endpoints, "start the host first"
        ports = self.host.ports()
        address = self.host.settings.get("bind_address", "127.0.0.1")
        if netns is not None and address != netns.host_addr:
            assert address.startswith("10.213."), f"a namespace cannot reach {address}"
            netns.route_to(address)
        settings = {"host": address, "router_port": ports["router_port"],
                    "xsub_port": ports["xsub_port"], "name": name,
                    "data_dir": str(self.base / f"runner-{name}"),
                    **self._runner_key(name), **settings}
        config = write_config(self.base / "config" / f"runner-{name}.toml", settings)
        runner = RunnerProcess(Path(settings["data_dir"]), settings, netns=netns, role="runner",
                               name=name, config=config, log=self._log("runner", name),
                               env=self.env, cwd=self.base)
        self.runners[name] = runner
        self.processes.append(runner)
        if wait:
            self.wait_node_state(name, "online")
        return runner

    def restart_runner(self, name: str, wait: bool = True) -> RunnerProcess:
        """Start runner ``name`` again with the same settings and data dir (connected to the
        current host)."""
        old = self.runners[name]
        assert not old.alive(), "stop the runner before restarting it"
        settings = {key: value for key, value in old.settings.items()
                    if key not in ("name", "host", "router_port", "xsub_port", "host_key")}
        return self.start_runner(name, wait, netns=old.netns, **settings)

    def _runner_key(self, name: str) -> dict[str, str]:
        """Runner ``name``'s key settings: its own pair (made once, under ``base/keys``),
        trusted by the host as node ``name`` (``key.add`` by the admin, as a person would
        with ``zriver keys add --role runner NAME -- KEY``)."""
        if not self.host.host_key:
            return {"key": "none"}
        secret = self.base / "keys" / f"runner-{name}.key_secret"
        public, _ = keyfiles.ensure_client_pair(secret, name, "runner")
        listed = {k["public_key"] for k in self.call("key.list")["keys"]}
        if public not in listed:
            self.call("key.add", {"name": name, "role": "runner", "public_key": public})
        return {"key": str(secret), "host_key": self.host.host_key}

    def user_key(self, name: str, role: str = "user") -> Path:
        """A person's key pair, trusted by the host as ``name`` with ``role``."""
        secret = self.base / "keys" / f"{role}-{name}.key_secret"
        public, _ = keyfiles.ensure_client_pair(secret, name, role)
        self.call("key.add", {"name": name, "role": role, "public_key": public})
        return secret

    # -- talking to the host -------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        assert self.host is not None
        return self.host.endpoint

    def connect(self, endpoint: str, timeout: float = 2.0) -> Client:
        """The admin's client of ``endpoint`` (a host of this cluster, maybe not started yet:
        every life of the host has the same key, kept in its data dir)."""
        host_key = keyfiles.load_public(keyfiles.host_public_file(self.home)) if (
            keyfiles.host_public_file(self.home).exists()) else ""
        if not host_key:
            return Client(endpoint, timeout=timeout, key="none")
        return Client(endpoint, timeout=timeout, key=str(admin_key_file(self.home)),
                      host_key=host_key)

    def client(self, timeout: float = 2.0, key: Path | None = None) -> Client:
        """A client of the current host (the admin's, unless ``key``), closed with the
        cluster."""
        client = self.host.client(timeout, key)
        self._clients.append(client)
        return client

    def call(self, op: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One request on a fresh short-lived connection (safe across host restarts)."""
        with self.host.client(timeout=2) as client:
            return client.call(op, body)

    def nodes(self) -> dict[str, dict[str, Any]]:
        return {node["name"]: node for node in self.call("node.list")["nodes"]}

    def task(self, task_id: int) -> dict[str, Any]:
        """``task.get``: the task's public fields plus ``events``."""
        reply = self.call("task.get", {"id": task_id})
        return {**reply["task"], "events": reply["events"]}

    def submit(self, command: list[str], **spec: Any) -> int:
        body = {"command": command, "cores": 1, "workdir": str(self.base), "owner": "test",
                "user": "root", **spec}  # root: tests write into root-only temporary dirs
        return self.call("task.submit", {"tasks": [body]})["ids"][0]

    # -- waiting on state ----------------------------------------------------------------
    def check_alive(self) -> None:
        for proc in self.processes:
            proc.check_alive()

    def diagnostics(self) -> str:
        """The log tail of every role (a restarted role appends to its predecessor's log)."""
        latest = {proc.log: proc for proc in self.processes}
        return "\n".join(proc.tail() for proc in latest.values())

    def wait_for(self, predicate: Callable[[], T], timeout: float, what: str) -> T:
        """``wait_until`` that also fails early when a role process died unexpectedly."""
        def check() -> T:
            self.check_alive()
            return predicate()

        return wait_until(check, timeout, what, self.diagnostics)

    def wait_node_state(self, name: str, state: str, timeout: float = READY_TIMEOUT) -> dict:
        def node() -> dict | None:
            found = self.nodes().get(name)
            return found if found and found["state"] == state else None

        return self.wait_for(node, timeout, f"node {name} to be {state}")

    def wait_task_state(self, task_id: int, states: str | set[str], timeout: float) -> dict:
        wanted = {states} if isinstance(states, str) else set(states)
        last: dict[str, Any] = {}

        def reached() -> dict | None:
            last["task"] = task = self.task(task_id)
            return task if task["state"] in wanted else None

        try:
            return self.wait_for(reached, timeout, f"task {task_id} to be {'/'.join(wanted)}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nlast seen: {last.get('task')}") from None

    def wait_final(self, task_ids: list[int], timeout: float) -> dict[int, dict[str, Any]]:
        """Wait until every task is final; return ``task.get`` of each (with its events)."""
        tasks: dict[int, dict[str, Any]] = {}

        def done() -> bool:
            for task_id in task_ids:
                if task_id not in tasks:
                    task = self.task(task_id)
                    if task["state"] in _FINAL:
                        tasks[task_id] = task
            return len(tasks) == len(task_ids)

        try:
            self.wait_for(done, timeout, f"tasks {task_ids} to end")
        except AssertionError as exc:
            states = {}
            for task_id in task_ids:
                try:
                    states[task_id] = self.task(task_id)["state"]
                except ZriverError as err:
                    states[task_id] = f"? ({err})"
            raise AssertionError(f"{exc}\nstates: {states}") from None
        return tasks

    # -- cleaning up ---------------------------------------------------------------------
    def adopt_group(self, pgid: int) -> None:
        """SIGKILL process group ``pgid`` on close (e.g. a task orphaned by a killed runner)."""
        self.groups.add(pgid)

    def close(self) -> None:
        """End every process this cluster started, runners first; never raises for a
        process that is already gone."""
        for client in self._clients:
            client.close()
        self._clients.clear()
        for proc in sorted(self.processes, key=lambda p: p.role == "host"):
            try:
                proc.terminate()
            except (OSError, subprocess.TimeoutExpired):
                pass
        end_keepers([proc.data_dir for proc in self.processes if proc.role == "runner"])
        for pgid in self.groups:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
