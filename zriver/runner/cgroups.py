"""Memory limits for native tasks: a cgroup per task when possible, else an address-space rlimit.

``MemoryLimiter.probe()`` finds a writable memory controller (cgroup v1 ``memory`` mount or a
cgroup v2 mount with the ``memory`` controller enabled) from ``/proc/self/mountinfo`` and tries
to create a group; it answers ``"cgroup"`` or ``"rlimit"``, which the runner reports and
``zriver health`` shows. With a cgroup, a task killed by the kernel's OOM killer is recognised
from the group's ``oom_kill`` counter. With the rlimit fallback an allocation simply fails inside
the task (there is no OOM kill to detect), so such a task ends ``failed``.

A process is moved into its group right after spawning: it runs for microseconds before the
limit applies, long before any interpreter could allocate.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

import structlog

log = structlog.get_logger("zriver.runner")

CGROUP = "cgroup"
RLIMIT = "rlimit"


def _mounts() -> list[tuple[str, str, str]]:
    """(mount point, fs type, super options) of every cgroup mount."""
    result = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return result
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) >= 5 and len(tail) >= 3 and tail[0] in ("cgroup", "cgroup2"):
            result.append((fields[4], tail[0], tail[2]))
    return result


class MemoryLimiter:
    """Creates, fills, reads and removes memory cgroups ``<mount>/zriver/<node>-task-<id>``.

    The node name is part of the group name so that several runners on one machine (tests,
    ``zriver up`` beside a real runner) never share a group."""

    def __init__(self, node: str, group_prefix: str = "zriver") -> None:
        self.node = node
        self.prefix = group_prefix
        self.root: Path | None = None
        self.version = 0
        self.method = RLIMIT

    def probe(self) -> str:
        for mount, fstype, options in _mounts():
            if fstype == "cgroup" and "memory" in options.split(","):
                candidate, version = Path(mount) / self.prefix, 1
            elif fstype == "cgroup2" and "memory" in _read(Path(mount) / "cgroup.controllers"):
                candidate, version = Path(mount) / self.prefix, 2
            else:
                continue
            try:
                candidate.mkdir(exist_ok=True)
                if version == 2:
                    (candidate / "cgroup.subtree_control").write_text("+memory")
                probe = candidate / f"probe-{os.getpid()}"
                probe.mkdir(exist_ok=True)
                probe.rmdir()
            except OSError as exc:
                log.info("cgroup.unusable", mount=mount, error=str(exc))
                continue
            self.root, self.version, self.method = candidate, version, CGROUP
            break
        log.info("memory_limit.method", method=self.method, root=str(self.root or ""))
        return self.method

    def group(self, task_id: int) -> Path | None:
        return None if self.root is None else self.root / f"{self.node}-task-{task_id}"

    def apply(self, task_id: int, pid: int, limit: int) -> None:
        """Limit ``pid`` (and its future children) to ``limit`` bytes."""
        group = self.group(task_id)
        if group is None:
            resource.prlimit(pid, resource.RLIMIT_AS, (limit, limit))
            return
        group.mkdir(exist_ok=True)
        if self.version == 1:
            (group / "memory.limit_in_bytes").write_text(str(limit))
            swap = group / "memory.memsw.limit_in_bytes"
            if swap.exists():
                try:
                    swap.write_text(str(limit))
                except OSError:
                    pass
        else:
            (group / "memory.max").write_text(str(limit))
            try:
                (group / "memory.swap.max").write_text("0")
            except OSError:
                pass
        (group / "cgroup.procs").write_text(str(pid))

    def oom_killed(self, task_id: int) -> bool:
        """Whether the kernel OOM-killed something in the task's group."""
        group = self.group(task_id)
        if group is None or not group.exists():
            return False
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        for line in _read(group / name).splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value) > 0
        return False

    def remove(self, task_id: int) -> None:
        group = self.group(task_id)
        if group is not None:
            try:
                group.rmdir()
            except OSError:
                pass


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
