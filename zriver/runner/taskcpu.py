"""CPU use of containers, read from their cgroups (cheap file reads; no Docker API call).

``ContainerCpu.sample({task_id: container_id})`` returns ``{task_id: percent of one core}``
since the previous sample of the same container (the first sample of a container gives
nothing). It knows cgroup v1 (``cpuacct.usage``, nanoseconds) and v2 (``cpu.stat``
``usage_usec``) under Docker's ``cgroupfs`` (``docker/<id>``) and ``systemd``
(``system.slice/docker-<id>.scope``) layouts; a container whose group it cannot find is left
out (the host then judges idleness by sessions alone).
"""

from __future__ import annotations

import time
from pathlib import Path

from zriver.runner.cgroups import _mounts


def _usage_files() -> list[tuple[Path, str]]:
    """(mount, kind) of the mounts that account CPU: ``v1`` cpuacct or ``v2``."""
    found = []
    for point, fstype, options in _mounts():
        if fstype == "cgroup" and "cpuacct" in options.split(","):
            found.append((Path(point), "v1"))
        elif fstype == "cgroup2":
            found.append((Path(point), "v2"))
    return found


def _read_ns(mount: Path, kind: str, container: str) -> int | None:
    for group in (f"docker/{container}", f"system.slice/docker-{container}.scope"):
        try:
            if kind == "v1":
                return int((mount / group / "cpuacct.usage").read_text())
            for line in (mount / group / "cpu.stat").read_text().splitlines():
                if line.startswith("usage_usec "):
                    return int(line.split()[1]) * 1000
        except (OSError, ValueError):
            continue
    return None


class ContainerCpu:
    """Samples containers' CPU time; see the module docstring."""

    def __init__(self) -> None:
        self._mounts = _usage_files()
        self._last: dict[str, tuple[float, int]] = {}

    def used_ns(self, container: str) -> int | None:
        for mount, kind in self._mounts:
            value = _read_ns(mount, kind, container)
            if value is not None:
                return value
        return None

    def sample(self, containers: dict[int, str]) -> dict[int, float]:
        now, result, seen = time.monotonic(), {}, set()
        for task_id, container in containers.items():
            used = self.used_ns(container)
            if used is None:
                continue
            seen.add(container)
            before = self._last.get(container)
            self._last[container] = (now, used)
            if before is not None and now > before[0]:
                result[task_id] = round(100.0 * (used - before[1]) / 1e9 / (now - before[0]), 2)
        for gone in set(self._last) - seen:
            del self._last[gone]
        return result
