"""Shared fixtures: an in-process cluster factory that always cleans up what it started."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from cluster import Cluster  # noqa: E402


@pytest.fixture(autouse=True)
def own_zriver_home(tmp_path_factory, monkeypatch):
    """Every test gets an empty ``ZRIVER_HOME`` (and no ``ZRIVER_*`` from the environment):
    the keys, endpoints and configs of whoever runs the suite never leak into it."""
    for name in ("ZRIVER_HOST", "ZRIVER_KEY", "ZRIVER_HOST_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ZRIVER_HOME", str(tmp_path_factory.mktemp("zriver-home")))


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
