"""Shared fixtures: an in-process cluster factory that always cleans up what it started."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from cluster import Cluster  # noqa: E402


@pytest.fixture
def make_cluster(tmp_path):
    """``make_cluster(runners={"n1": {"cores": 2}}, host={...})`` -> a started ``Cluster``."""
    started: list[Cluster] = []

    def make(runners=None, host=None) -> Cluster:
        cluster = Cluster(tmp_path / f"c{len(started)}", runners, host)
        started.append(cluster)
        return cluster.start()

    yield make
    for cluster in started:
        cluster.stop()


@pytest.fixture
def cluster(make_cluster) -> Cluster:
    """One runner ``n1`` offering 2 cores and 4G."""
    return make_cluster({"n1": {"cores": 2, "memory": "4G"}})
