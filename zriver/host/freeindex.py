"""Usable nodes filed by what they have free, for the scheduler's placement walk.

A placement wants the best node by its policy's key: ``(-free, name)`` for spread, ``(free,
name)`` for pack, where *free* is the node's free core count (CPU tasks) or free GPU count (GPU
tasks), among the nodes with at least as many free as the task asks for. Free counts are small
integers, so nodes sit in buckets by count with their names sorted in each bucket, and
``walk`` yields names in exactly that key order, best bucket first, never visiting a bucket
below the ask. The caller stops at the first node that passes its other checks (memory,
features, NUMA zone, GPU ids, the reservation): a plain request costs O(log nodes), a
constrained one the nodes it passes over on the way.

What is filed (``FreeIndex.file``, called by the scheduler after every change of a node's free
resources or usability):

* ``cores``: usable nodes with a free core, by free core count;
* ``gpus``: usable nodes with a free core and a free GPU, by free GPU count;
* the number of usable nodes at each free GPU count (``most_free`` needs the largest).

A node with no free core takes no task (every request asks for a core at least), so neither
walk visits it: a full node costs nothing, whatever its GPUs. Pure: no I/O, no clock.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from typing import Iterator


class Buckets:
    """Names filed under small integers: the counts in order, each with its names in order."""

    __slots__ = ("_counts", "_names")

    def __init__(self) -> None:
        self._counts: list[int] = []
        self._names: dict[int, list[str]] = {}

    def add(self, count: int, name: str) -> None:
        names = self._names.get(count)
        if names is None:
            self._names[count] = [name]
            insort(self._counts, count)
        else:
            insort(names, name)

    def remove(self, count: int, name: str) -> None:
        """Unfile ``name`` from ``count`` (where it must be filed)."""
        names = self._names[count]
        del names[bisect_left(names, name)]
        if not names:
            del self._names[count]
            del self._counts[bisect_left(self._counts, count)]

    def top(self) -> int:
        """The largest count filed, 0 when none is."""
        return self._counts[-1] if self._counts else 0

    def walk(self, least: int, descending: bool) -> Iterator[str]:
        """Names under counts of at least ``least``: by count (largest first when
        ``descending``), then by name. Do not file or unfile while walking."""
        counts = self._counts[bisect_left(self._counts, least):]
        for count in reversed(counts) if descending else counts:
            yield from self._names[count]

    def filed(self) -> dict[str, int]:
        """name -> count, for checks."""
        return {name: count for count, names in self._names.items() for name in names}


class FreeIndex:
    """The scheduler's usable nodes by free cores and free GPUs (see the module docstring)."""

    __slots__ = ("cores", "gpus", "_gpu_counts", "_gpu_levels", "_filed")

    def __init__(self) -> None:
        self.cores = Buckets()
        self.gpus = Buckets()
        self._gpu_counts: dict[int, int] = {}  # free GPU count -> usable nodes with it
        self._gpu_levels: list[int] = []  # the keys of _gpu_counts, in order
        self._filed: dict[str, tuple[int, int]] = {}  # name -> (free cores, free GPUs)

    def file(self, name: str, cores: int, gpus: int) -> None:
        """``name`` is usable with ``cores`` and ``gpus`` free (refile it if it moved)."""
        old = self._filed.get(name)
        self._filed[name] = (cores, gpus)
        old_cores, old_gpus = old if old is not None else (0, 0)
        if cores != old_cores:
            if old_cores:
                self.cores.remove(old_cores, name)
            if cores:
                self.cores.add(cores, name)
        walked, walk = (old_gpus if old_cores else 0), (gpus if cores else 0)
        if walk != walked:
            if walked:
                self.gpus.remove(walked, name)
            if walk:
                self.gpus.add(walk, name)
        if gpus != old_gpus:
            self._count_gpus(old_gpus, -1)
            self._count_gpus(gpus, 1)

    def drop(self, name: str) -> None:
        """``name`` is not usable; no-op when not filed."""
        if name in self._filed:
            self.file(name, 0, 0)
            del self._filed[name]

    def _count_gpus(self, gpus: int, step: int) -> None:
        if not gpus:
            return
        count = self._gpu_counts.get(gpus, 0) + step
        if count:
            if gpus not in self._gpu_counts:
                insort(self._gpu_levels, gpus)
            self._gpu_counts[gpus] = count
        else:
            del self._gpu_counts[gpus]
            del self._gpu_levels[bisect_left(self._gpu_levels, gpus)]

    def most_free(self) -> tuple[int, int]:
        """The largest free core count and free GPU count of any usable node (0 when none)."""
        return self.cores.top(), self._gpu_levels[-1] if self._gpu_levels else 0

    def walk(self, gpus: bool, least: int, spread: bool) -> Iterator[str]:
        """Names of nodes with at least ``least`` free cores (free GPUs when ``gpus``), in the
        order of the policy's key: most free first when ``spread``, else fewest; ties by name."""
        return (self.gpus if gpus else self.cores).walk(least, descending=spread)

    def check(self, free: dict[str, tuple[int, int]]) -> None:
        """Assert that exactly the usable nodes ``free`` (name -> free counts) are filed, right."""
        assert self._filed == free, "free index: nodes filed under stale counts"
        assert self.cores.filed() == {n: c for n, (c, _) in free.items() if c}, "core buckets off"
        assert self.gpus.filed() == {n: g for n, (c, g) in free.items() if c and g}, \
            "GPU buckets off"
        counts: dict[int, int] = {}
        for _, gpus in free.values():
            if gpus:
                counts[gpus] = counts.get(gpus, 0) + 1
        assert self._gpu_counts == counts, "free GPU counts off"
        assert self._gpu_levels == sorted(counts), "free GPU levels off"
