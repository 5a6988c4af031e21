"""What this node has (cores, NUMA zones, memory, GPUs) and how busy it is right now.

``detect`` is called once at start; ``usage`` on every heartbeat. Neither raises for missing
hardware: no NUMA sysfs means one zone, no NVIDIA driver means an empty GPU list.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import psutil

from zriver import __version__
from zriver.config import RunnerSettings
from zriver.runner import gpus
from zriver.sizes import parse_size

NODE_SYSFS = Path("/sys/devices/system/node")


def parse_cpulist(text: str) -> list[int]:
    """``0-3,8,10-11`` -> ``[0, 1, 2, 3, 8, 10, 11]``; empty text -> ``[]``."""
    cores: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        if "-" in part:
            low, high = part.split("-", 1)
            cores.extend(range(int(low), int(high) + 1))
        else:
            cores.append(int(part))
    return cores


def numa_zones(usable: list[int], sysfs: Path = NODE_SYSFS) -> list[list[int]]:
    """Usable cores grouped by NUMA node; one zone holding all when sysfs says nothing."""
    zones = []
    for node_dir in sorted(sysfs.glob("node[0-9]*"), key=lambda p: int(p.name[4:])):
        try:
            cores = [c for c in parse_cpulist((node_dir / "cpulist").read_text()) if c in usable]
        except OSError:
            continue
        if cores:
            zones.append(cores)
    return zones or [list(usable)]


def detect(settings: RunnerSettings, memory_limit_method: str) -> dict[str, Any]:
    """The registration info of this node; settings may override cores, zones, memory, GPUs."""
    usable = sorted(os.sched_getaffinity(0))
    zones = numa_zones(usable)
    if settings.numa_zones:
        zones = [parse_cpulist(part) for part in settings.numa_zones.split(";") if part.strip()]
    elif settings.cores:
        zones = [list(range(settings.cores))] if settings.cores > len(usable) else [
            [c for c in zone if c in usable[: settings.cores]] for zone in zones
        ]
        zones = [zone for zone in zones if zone]
    memory = parse_size(settings.memory) if settings.memory else psutil.virtual_memory().total
    return {
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "version": __version__,
        "cores": [c for zone in zones for c in zone],
        "zones": zones,
        "memory": memory,
        "gpus": declared_gpus(settings.gpus) if settings.gpus >= 0 else gpus.inventory(),
        "labels": dict(settings.labels),
        "memory_limit": memory_limit_method,
    }


def declared_gpus(count: int) -> list[dict[str, Any]]:
    """GPUs declared by the ``gpus`` setting instead of detected (tests, dev machines)."""
    return [{"index": i, "uuid": f"declared-{i}", "name": "declared", "memory": 0}
            for i in range(count)]


def usage() -> dict[str, Any]:
    """Live figures for a heartbeat (cheap: no blocking sampling)."""
    mem = psutil.virtual_memory()
    load = os.getloadavg()
    return {
        "cpu_percent": psutil.cpu_percent(interval=None),
        "memory_used": mem.total - mem.available,
        "memory_total": mem.total,
        "load": [round(x, 2) for x in load],
        "temperatures": _temperatures(),
        "gpus": gpus.usage(),
    }


def _temperatures() -> dict[str, float]:
    try:
        sensors = psutil.sensors_temperatures()
    except (AttributeError, OSError):
        return {}
    result = {}
    for chip, readings in sensors.items():
        for i, reading in enumerate(readings):
            label = reading.label or f"{chip}{i}"
            result[label] = reading.current
    return result
