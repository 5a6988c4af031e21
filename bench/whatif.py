"""What-if patches for the dispatch benchmark: try a hot-path change before making it.

``python bench/dispatch.py --wrapper bench/whatif.py`` starts the roles as
``python bench/whatif.py <role> --config ...``; the patches named in ``$ZRIVER_WHATIF``
(comma-separated) are applied to zriver in that process before the role starts. These are
throwaway approximations of the suggested changes in docs/performance.md, written against the
code as it was when they were measured: they monkeypatch internals, may stop applying after a
refactor, and are never imported by zriver itself. Nothing here is a supported feature.

Patches:

* ``sched_early_exit`` - ``Scheduler.schedule`` returns at once when no usable node has a free
  core (it builds the list of every queued request first: O(queue) per call).
* ``fast_to_wire``     - ``TaskSpec.to_wire`` copies its fields one level deep by hand instead
  of ``dataclasses.asdict`` (recursive deep copies).
* ``env_cache``        - ``bundle.child_environment`` copies a dict computed once instead of
  re-reading ``os.environ`` for every task.
* ``no_pin``           - the native backend does not pin the spawning thread to the task's
  cores (measures what pinning costs; a real fix would pin the child after the spawn or
  leave the loop thread pinned).
* ``prefetch=N``       - the runner advertises N extra cores and queues starts beyond its real
  core count locally, starting the next one from ``_on_exit`` without a host round trip.
* ``lazy_ack``         - the runner deletes acknowledged outbox rows in the next tick's
  transaction instead of a transaction of their own.
* ``inflight2``        - the runner may have two ``task.update`` batches in flight instead of
  one, so a task's final update does not wait for the ack of its ``running`` update (no resend
  timer in this approximation). Do not combine with ``lazy_ack``.
* ``batch_start``      - the host sends the ``task.start`` commands of one tick as one
  ``task.start_many`` message per runner (after the commit, like everything else).
* ``no_task_events``   - the host publishes no ``evt.task.*`` events (measures what they cost
  with one subscriber; throughput only: the latency phase needs the events).
* ``count=DIR``        - no change: counts messages per socket type and loop drains that
  received something, written to ``DIR/<role>-<pid>.json`` at exit.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import os
import sys
from pathlib import Path


def _patches() -> dict[str, str]:
    result = {}
    for item in filter(None, os.environ.get("ZRIVER_WHATIF", "").split(",")):
        name, _, value = item.strip().partition("=")
        result[name] = value
    return result


def sched_early_exit(_: str) -> None:
    from zriver.host import scheduler as sch

    original = sch.Scheduler.schedule

    def usable(node) -> bool:
        flag = getattr(node, "usable", None)
        return node.state == sch.ONLINE if flag is None else bool(flag)

    def schedule(self, *args, **kwargs):
        if not any(usable(n) and n.free_cores for n in self._nodes.values()):
            return []
        return original(self, *args, **kwargs)

    sch.Scheduler.schedule = schedule


def fast_to_wire(_: str) -> None:
    from zriver.spec import TaskSpec

    names = [field.name for field in dataclasses.fields(TaskSpec)]

    def to_wire(self):
        wire = {}
        for name in names:
            value = getattr(self, name)
            if isinstance(value, list):
                value = [dict(v) if isinstance(v, dict) else v for v in value]
            elif isinstance(value, dict):
                value = dict(value)
            wire[name] = value
        return wire

    TaskSpec.to_wire = to_wire


def env_cache(_: str) -> None:
    from zriver import bundle

    cached = bundle.child_environment()
    bundle.child_environment = lambda base=None: dict(cached) if base is None else dict(base)


def no_pin(_: str) -> None:
    from zriver.runner.backends import native

    original = native.NativeBackend._spawn

    def _spawn(self, job):
        return original(self, dataclasses.replace(job, cores=()))

    native.NativeBackend._spawn = _spawn


def prefetch(value: str) -> None:
    from zriver.runner import agent, resources

    extra = int(value or 8)
    detect = resources.detect

    def detect_more(settings, method):
        info = detect(settings, method)
        real = len(info["cores"])
        cores = list(range(real + extra))
        info.update(cores=cores, zones=[cores], real_cores=real)
        return info

    agent.resources.detect = detect_more
    start, on_exit = agent.Runner._start_task, agent.Runner._on_exit
    queues: dict[int, collections.deque] = {}

    def running(self) -> int:
        if hasattr(self, "running"):
            return len(self.running())
        return len(self.backend.running())

    def _start_task(self, body):
        queue = queues.setdefault(id(self), collections.deque())
        if running(self) >= self.info["real_cores"]:
            queue.append(body)
            return None
        return start(self, body)

    def _on_exit(self, task_id, outcome):
        on_exit(self, task_id, outcome)
        queue = queues.get(id(self))
        while queue and running(self) < self.info["real_cores"]:
            start(self, queue.popleft())

    agent.Runner._start_task = _start_task  # bound into the handler table by __init__
    agent.Runner._on_exit = _on_exit


def lazy_ack(_: str) -> None:
    from zriver.runner import agent, ledger

    pending: list[int] = []
    acknowledge = ledger.Ledger.acknowledge

    def stash(self, seqs):
        pending.extend(seqs)

    ledger.Ledger.acknowledge = stash
    flush = agent.Runner._flush

    def _flush(self):
        if not pending:
            return flush(self)
        seqs = pending[:]
        pending.clear()
        with self.ledger.conn:  # the deletes and the tick's writes commit together
            acknowledge(self.ledger, seqs)
            return flush(self)

    agent.Runner._flush = _flush
    on_acked = agent.Runner._on_batch_acked

    def _on_batch_acked(self, env):
        on_acked(self, env)
        if not self._flush_scheduled:  # the deletes happen at the end of this tick
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    agent.Runner._on_batch_acked = _on_batch_acked


def inflight2(_: str) -> None:
    from zriver.protocol import encode
    from zriver.runner import agent

    flush, on_reply = agent.Runner._flush, agent.Runner._on_reply

    def flights(self) -> dict[int, list[int]]:
        return self.__dict__.setdefault("_whatif_flights", {})

    def _send_next_batch(self):
        if len(flights(self)) >= 2 or not self.registered.is_set():
            return
        sent = {seq for seqs in flights(self).values() for seq in seqs}
        batch = [(s, u) for s, u in self._persisted if s not in sent][:agent.MAX_BATCH]
        if not batch:
            return
        rid = self._next_rid
        self._next_rid += 1
        flights(self)[rid] = [seq for seq, _ in batch]
        self._inflight = (rid, flights(self)[rid])  # non-None: the original code waits
        self.channel.send([encode("task.update", rid, {"name": self.name,
                                                      "updates": [u for _, u in batch]})])

    def _on_reply(self, env):
        seqs = flights(self).pop(env.rid, None)
        if seqs is None:
            return on_reply(self, env)
        self.ledger.acknowledge(seqs)
        done = set(seqs)
        for seq, update in self._persisted:
            if seq in done and update["state"] not in ("running", "paused"):
                self._known.discard((update["id"], update.get("attempt", 1)))
        self._persisted = [(s, u) for s, u in self._persisted if s not in done]
        self._inflight = next(iter(flights(self).items()), None)
        self._send_next_batch()
        return None

    def _flush(self):
        flush(self)
        self._send_next_batch()

    agent.Runner._send_next_batch = _send_next_batch
    agent.Runner._on_reply = _on_reply
    agent.Runner._flush = _flush


def batch_start(_: str) -> None:
    from zriver.host import service
    from zriver.protocol import encode
    from zriver.runner import agent

    command, flush = service.Host.command, service.Host.flush

    def host_command(self, node, op, body):
        if op != "task.start":
            return command(self, node, op, body)
        self.__dict__.setdefault("_whatif_starts", {}).setdefault(node, []).append(body)
        self.schedule_flush()
        return None

    def host_flush(self):
        flush(self)  # commits, then sends everything else queued in the tick
        starts = self.__dict__.get("_whatif_starts")
        if starts:
            self._whatif_starts = {}
            for node, bodies in starts.items():
                try:
                    self.router.send([service.RUNNER_PREFIX + node.encode(),
                                      encode("task.start_many", 0, {"starts": bodies})])
                except service.Unreachable:
                    pass  # (an approximation: the real change would requeue them)

    service.Host.command, service.Host.flush = host_command, host_flush
    init = agent.Runner.__init__

    def runner_init(self, settings):
        init(self, settings)
        self.handlers["task.start_many"] = lambda body: [
            self._start_task(start) for start in body["starts"]] and None

    agent.Runner.__init__ = runner_init


def no_task_events(_: str) -> None:
    from zriver.host import dispatch

    dispatch._publish = lambda *args, **kwargs: None


def count(out_dir: str) -> None:
    """Count messages sent/received per socket type and drains that received something;
    written to ``<out_dir>/<role>-<pid>.json`` when the role exits."""
    import atexit
    import json

    import zmq

    from zriver import wire

    counts: collections.Counter = collections.Counter()
    names = {zmq.ROUTER: "router", zmq.DEALER: "dealer", zmq.XPUB: "xpub", zmq.XSUB: "xsub",
             zmq.PUB: "pub"}
    send, recv = zmq.Socket.send_multipart, zmq.Socket.recv_multipart

    def send_multipart(self, frames, *args, **kwargs):
        counts["sent." + names.get(self.socket_type, "other")] += 1
        return send(self, frames, *args, **kwargs)

    def recv_multipart(self, *args, **kwargs):
        result = recv(self, *args, **kwargs)
        counts["received." + names.get(self.socket_type, "other")] += 1
        return result

    zmq.Socket.send_multipart, zmq.Socket.recv_multipart = send_multipart, recv_multipart
    readable = wire.Channel._on_readable

    def _on_readable(self):
        before = sum(v for k, v in counts.items() if k.startswith("received."))
        readable(self)
        if sum(v for k, v in counts.items() if k.startswith("received.")) > before:
            counts["drains_with_input"] += 1

    wire.Channel._on_readable = _on_readable
    role = sys.argv[1] if len(sys.argv) > 1 else "role"
    atexit.register(lambda: Path(out_dir, f"{role}-{os.getpid()}.json").write_text(
        json.dumps(counts)))


PATCHES = {f.__name__: f for f in (sched_early_exit, fast_to_wire, env_cache, no_pin, prefetch,
                                   lazy_ack, inflight2, batch_start, no_task_events, count)}


def main() -> int:
    for name, value in _patches().items():
        if name not in PATCHES:
            raise SystemExit(f"unknown what-if patch {name!r}; known: {', '.join(PATCHES)}")
        PATCHES[name](value)
    from zriver.cli import main as zriver_main

    return zriver_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
