"""Fake runners for tests of big clusters (not a test module): plain DEALER sockets that
register as runners of 4 cores, 2 NUMA zones and 0-2 fake GPUs each, then only keep their
sockets open (no heartbeats: a test keeps them online by raising ``heartbeat_misses``).
A host with ``security = "none"`` accepts them."""

from __future__ import annotations

import dataclasses

import zmq

from zriver.protocol import decode, encode


class FakeRunners:
    """``count`` runners ``fake000``... registered with the host at ``endpoint``."""

    def __init__(self, endpoint: str, count: int) -> None:
        self.context = zmq.Context.instance()
        self.sockets = []
        for i in range(count):
            sock = self.context.socket(zmq.DEALER)
            sock.linger = 0
            name = f"fake{i:03d}"
            sock.setsockopt(zmq.IDENTITY, f"r:{name}".encode())
            sock.connect(endpoint)
            gpus = [{"index": g, "uuid": f"GPU-{i}-{g}", "name": "FakeGPU", "memory": 16 << 30}
                    for g in range(i % 3)]
            info = {"cores": [0, 1, 2, 3], "zones": [[0, 1], [2, 3]], "memory": 16 << 30,
                    "gpus": gpus, "hostname": name, "version": "test", "labels": {}}
            sock.send(encode("runner.register", 1, {"name": name, "info": info, "tasks": []}))
            self.sockets.append(sock)
        for sock in self.sockets:
            assert sock.poll(10_000), "the host did not answer a registration"
            assert decode(sock.recv()).op == "ok"

    def close(self) -> None:
        for sock in self.sockets:
            sock.close(linger=0)


def keep_online(cluster) -> None:
    """Fake runners send no heartbeats: make ``cluster``'s host never judge them silent
    (run it on the host's loop: ``cluster.call_soon(lambda: keep_online(cluster))``)."""
    cluster.host.settings = cluster.host.core.settings = dataclasses.replace(
        cluster.host.settings, heartbeat_misses=1_000_000)
