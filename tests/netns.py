"""Network namespaces for multi-host fault tests (not a test module; needs root and iproute2).

``NetNamespace`` makes a namespace ``zrt-<pid>-<n>`` joined to the root namespace by a veth pair
on a private /30 of its own: ``10.213.<N>.1`` on the root end (where a host binds, the host's
``bind_address``), ``10.213.<N>.2`` inside (where a runner lives). The namespace has only ``lo``
and its veth end and no default route, so nothing inside can reach any other address; nothing is
added to the root namespace but the veth end and its address (no iptables rule, no route there).

``cut()`` makes the link silent the way a pulled cable or a dead switch is: every packet to and
from the namespace is dropped by iptables rules *inside* the namespace (``INPUT -i`` and
``OUTPUT -o`` on its veth end), so neither side gets a RST or an ICMP error: connects time out and
established TCP connections hang in retransmission (``tests/test_netns.py`` checks both).
``cut(mode="link")`` instead sets the root end down (the namespace end loses its carrier); the
root side then drops its routes to the namespace, which is less like a real partition.
``restore()`` undoes either; TCP connections that did not time out meanwhile carry on.

``run(...)``/``command(...)`` run a program inside with ``nsenter --net`` (only the network
namespace changes: unlike ``ip netns exec`` it keeps ``/sys`` and its cgroup mounts, so a runner
in there still makes its memory cgroups). ``close()`` deletes the veth pair and the namespace;
``cleanup_stale()`` removes those of earlier runs whose process is gone (a crashed session),
by the name prefix and pid. Use it as a context manager, or through the ``netns`` fixture::

    with NetNamespace() as ns:
        cluster.start_host(bind_address=ns.host_addr)
        cluster.start_runner("n1", netns=ns)
        ns.cut(); ...; ns.restore()
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

from zriver.client.probe import process_alive

PREFIX = "zrt-"
#: Root-side veth names are ``zr<pid>h<n>`` (at most 15 characters), the inner end ``zr<pid>r<n>``.
_LINK = re.compile(r"^zr(\d+)[hr](\d+)$")
_NS = re.compile(rf"^{PREFIX}(\d+)-(\d+)$")
SUBNET = "10.213"
_LOCK = Path("/run/zriver-test-netns.lock")
_TIMEOUT = 20


def available() -> str | None:
    """None when namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "iptables", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (tests/run.sh installs iproute2)"
    return None


def sh(*args: str, check: bool = True, timeout: float = _TIMEOUT) -> subprocess.CompletedProcess:
    """Run ``args``; fail with its stderr when ``check`` and it exits non-zero."""
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {result.returncode}: "
                           f"{result.stderr.strip() or result.stdout.strip()}")
    return result


def _namespaces() -> list[str]:
    out = sh("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _root_links() -> list[str]:
    out = sh("ip", "-o", "link", "show", check=False).stdout
    names = []
    for line in out.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@", 1)[0])
    return names


def cleanup_stale() -> list[str]:
    """Delete the namespaces and veth ends of earlier runs whose process is gone; return them."""
    removed = []
    for link in _root_links():
        match = _LINK.match(link)
        if match and not process_alive(int(match.group(1))):
            sh("ip", "link", "del", link, check=False)
            removed.append(link)
    for name in _namespaces():
        match = _NS.match(name)
        if match and not process_alive(int(match.group(1))):
            sh("ip", "netns", "del", name, check=False)
            removed.append(name)
    return removed


def _used_subnets() -> set[int]:
    out = sh("ip", "-o", "-4", "addr", "show", check=False).stdout
    return {int(m.group(1)) for m in re.finditer(rf"inet {re.escape(SUBNET)}\.(\d+)\.", out)}


class NetNamespace:
    """One namespace and its veth pair on ``10.213.<subnet>.0/30``; see the module doc."""

    _count = 0

    def __init__(self) -> None:
        why = available()
        if why:
            raise RuntimeError(why)
        NetNamespace._count += 1
        pid, n = os.getpid(), NetNamespace._count
        self.name = f"{PREFIX}{pid}-{n}"
        self.outer, self.inner = f"zr{pid}h{n}", f"zr{pid}r{n}"
        self.subnet = -1
        self.host_addr = self.inner_addr = ""
        self.cut_mode: str | None = None
        self._created = False

    # -- making and removing -------------------------------------------------------------
    def open(self) -> "NetNamespace":
        cleanup_stale()
        _LOCK.parent.mkdir(parents=True, exist_ok=True)
        with open(_LOCK, "w") as lock:  # one subnet per namespace, even across sessions
            fcntl.flock(lock, fcntl.LOCK_EX)
            used = _used_subnets()
            free = [i for i in range(1, 255) if i not in used]
            if not free:
                raise RuntimeError(f"every {SUBNET}.N.0/30 is in use")
            self.subnet = free[0]
            self.host_addr, self.inner_addr = f"{SUBNET}.{self.subnet}.1", f"{SUBNET}.{self.subnet}.2"
            self._created = True
            try:
                sh("ip", "netns", "add", self.name)
                sh("ip", "link", "add", self.outer, "type", "veth", "peer", "name", self.inner)
                sh("ip", "link", "set", self.inner, "netns", self.name)
                sh("ip", "addr", "add", f"{self.host_addr}/30", "dev", self.outer)
            except BaseException:
                self.close()
                raise
        try:
            sh("ip", "link", "set", self.outer, "up")
            self.ip("addr", "add", f"{self.inner_addr}/30", "dev", self.inner)
            self.ip("link", "set", self.inner, "up")
            self.ip("link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Remove the veth pair and the namespace (never raises; safe to call twice)."""
        if not self._created:
            return
        self._created = False
        sh("ip", "link", "del", self.outer, check=False)  # takes its peer with it
        sh("ip", "netns", "del", self.name, check=False)

    def __enter__(self) -> "NetNamespace":
        return self.open()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- running inside ------------------------------------------------------------------
    def command(self, args: list[str]) -> list[str]:
        """``args`` prefixed so that they run inside the namespace (``nsenter`` execs them:
        the pid of the started process is the program's)."""
        return ["nsenter", f"--net=/run/netns/{self.name}", "--"] + list(args)

    def run(self, *args: str, check: bool = True, timeout: float = _TIMEOUT
            ) -> subprocess.CompletedProcess:
        """Run ``args`` inside the namespace and wait for it."""
        return sh(*self.command(list(args)), check=check, timeout=timeout)

    def ip(self, *args: str) -> subprocess.CompletedProcess:
        return sh("ip", "-n", self.name, *args)

    def route_to(self, address: str) -> None:
        """Reach ``address`` (a root-side address of another of these namespaces, e.g. where
        the host is bound) through this namespace's root end."""
        self.ip("route", "replace", f"{address}/32", "via", self.host_addr)

    # -- the fault -----------------------------------------------------------------------
    def cut(self, mode: str = "drop") -> None:
        """Make the link silent (see the module doc): ``drop`` (default) or ``link``."""
        if self.cut_mode is not None:
            raise RuntimeError(f"{self.name} is already cut ({self.cut_mode})")
        if mode == "drop":
            self.run("iptables", "-w", "-I", "INPUT", "-i", self.inner, "-j", "DROP")
            self.run("iptables", "-w", "-I", "OUTPUT", "-o", self.inner, "-j", "DROP")
        elif mode == "link":
            sh("ip", "link", "set", self.outer, "down")
        else:
            raise ValueError(f"unknown cut mode {mode!r}")
        self.cut_mode = mode

    def restore(self) -> None:
        """Undo ``cut`` (a no-op when the link is whole)."""
        if self.cut_mode == "drop":
            self.run("iptables", "-w", "-D", "INPUT", "-i", self.inner, "-j", "DROP")
            self.run("iptables", "-w", "-D", "OUTPUT", "-o", self.inner, "-j", "DROP")
        elif self.cut_mode == "link":
            sh("ip", "link", "set", self.outer, "up")
            # the root end's connected route comes back with the link
        self.cut_mode = None

    def __repr__(self) -> str:
        return f"NetNamespace({self.name}, {self.host_addr} <-> {self.inner_addr})"


def namespaces(count: int) -> Iterator[list[NetNamespace]]:
    """A generator for fixtures: ``count`` open namespaces, all closed afterwards."""
    made: list[NetNamespace] = []
    try:
        for _ in range(count):
            made.append(NetNamespace().open())
        yield made
    finally:
        for ns in made:
            ns.close()
