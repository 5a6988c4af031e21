"""The seam for in-process front ends (the SSH relay and the web API to come): ``Host.call``
runs an op as a principal through the same op table, role checks and effects as a ZeroMQ
request, and ``Host.bus`` carries the events the XPUB carries."""

from __future__ import annotations

import asyncio

import pytest

from zriver.errors import Forbidden
from zriver.principal import ADMIN, USER, Principal
from zriver.protocol import decode

ADMIN_P = Principal("test", ADMIN, key="K" * 40)
EVE = Principal("eve", USER, key="E" * 40)


def test_call_runs_ops_as_a_principal_and_the_bus_carries_events(cluster):
    seen: list[tuple[bytes, dict]] = []

    async def scenario():
        host = cluster.host
        done = asyncio.get_running_loop().create_future()

        def listener(topic: bytes, frame: bytes) -> None:
            body = decode(frame).body
            seen.append((topic, body))
            if body.get("state") == "completed" and not done.done():
                done.set_result(body)

        unsubscribe = host.bus.subscribe(b"evt.task.", listener)
        spec = {"command": ["true"], "workdir": "/", "user": "root"}
        reply = await host.call(ADMIN_P, "task.submit", {"tasks": [spec]})
        [task_id] = reply["ids"]
        waited = await host.call(ADMIN_P, "task.wait", {"ids": [task_id], "timeout": 20})
        await asyncio.wait_for(done, 20)
        unsubscribe()
        with pytest.raises(Forbidden, match="belongs to 'test'"):
            await host.call(EVE, "task.kill", {"id": task_id})
        with pytest.raises(Forbidden, match="needs the role admin"):
            await host.call(EVE, "node.drain", {"name": "n1"})
        return task_id, waited

    task_id, waited = cluster.run(scenario)
    assert waited == {"done": True, "tasks": [{"id": task_id, "state": "completed",
                                               "exit_code": 0}]}
    states = [state for topic, body in seen if topic == f"evt.task.{task_id}".encode()
              for state in body["passed"] + [body["state"]]]  # a tick's states in one event
    assert states[0] == "pending" and states[-1] == "completed"
    assert cluster.client().call("task.get", {"id": task_id})["task"]["owner"] == "test"
