"""The host's live tasks by id, with the indexes its per-node and per-env questions need.

``TaskTable`` is a ``dict`` of ``id -> LiveTask`` (lookups stay plain dict lookups) that also
keeps, so that no handler walks every live task to answer a question about one node or one
env:

* ``on(node)``: the live tasks placed on a node (registration's reconciliation, a node lost or
  given up, its unstarted starts requeued): O(tasks on that node);
* ``of_env(name)``: the live docker tasks that run in env ``name`` (an env removed or pruned,
  the task counts ``env list`` shows);
* ``vps()``: the live VPS tasks (the idle check that runs every heartbeat interval);
* ``state_counts()``: how many live tasks are in each state (``task.counts``, which ``top``,
  ``shell`` and the web page re-read while tasks move): O(states), not O(tasks).

Contract: a task enters with ``table[id] = task`` and leaves with ``del table[id]``; its node
changes only through ``place(task, node)`` (``dispatch`` does it, in the places a task is
placed, retried or requeued), and its state only through ``set_state(task, state)``
(``dispatch.move`` and ``dispatch.retry``). A task's spec does not change once it is in the
table, so the env and kind indexes are fixed at entry. ``check()`` recomputes every index
and count by a scan (tests).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from zriver.host.model import LiveTask

_DOCKER, _VPS = "docker", "vps"


class TaskTable(dict):
    """``id -> LiveTask`` plus the indexes of the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self._by_node: dict[str, set[int]] = {}
        self._by_env: dict[str, set[int]] = {}
        self._vps: set[int] = set()
        self._states: Counter[str] = Counter()

    def __setitem__(self, task_id: int, task: "LiveTask") -> None:
        if task_id in self:
            self.__delitem__(task_id)
        super().__setitem__(task_id, task)
        self._states[task.state] += 1
        spec = task.spec
        if task.node is not None:
            self._by_node.setdefault(task.node, set()).add(task_id)
        if spec.backend == _DOCKER and spec.container:
            self._by_env.setdefault(spec.container, set()).add(task_id)
        if spec.kind == _VPS:
            self._vps.add(task_id)

    def __delitem__(self, task_id: int) -> None:
        task = self[task_id]
        super().__delitem__(task_id)
        self._states[task.state] -= 1
        _discard(self._by_node, task.node, task_id)
        _discard(self._by_env, task.spec.container, task_id)
        self._vps.discard(task_id)

    def pop(self, task_id: int, *default):
        if task_id not in self:
            if default:
                return default[0]
            raise KeyError(task_id)
        task = self[task_id]
        self.__delitem__(task_id)
        return task

    def clear(self) -> None:
        super().clear()
        self._by_node.clear()
        self._by_env.clear()
        self._vps.clear()
        self._states.clear()

    def update(self, *args, **kwargs) -> None:  # through __setitem__, keeping the indexes
        for task_id, task in dict(*args, **kwargs).items():
            self[task_id] = task

    def setdefault(self, task_id: int, task: "LiveTask"):
        if task_id not in self:
            self[task_id] = task
        return self[task_id]

    def place(self, task: "LiveTask", node: str | None) -> None:
        """Set ``task.node`` (``None``: back in the queue), keeping the node index."""
        if task.id in self:
            _discard(self._by_node, task.node, task.id)
            if node is not None:
                self._by_node.setdefault(node, set()).add(task.id)
        task.node = node

    def set_state(self, task: "LiveTask", state: str) -> None:
        """Set ``task.state``, keeping the counts per state."""
        if task.id in self:
            self._states[task.state] -= 1
            self._states[state] += 1
        task.state = state

    def state_counts(self) -> dict[str, int]:
        """Live tasks per state (states with none left out)."""
        return {state: n for state, n in self._states.items() if n}

    def on(self, node: str) -> list["LiveTask"]:
        """The live tasks placed on ``node``, by id (a list: callers may move them)."""
        return [self[i] for i in sorted(self._by_node.get(node, ()))]

    def of_env(self, name: str) -> list["LiveTask"]:
        """The live docker tasks whose env is ``name``, by id."""
        return [self[i] for i in sorted(self._by_env.get(name, ()))]

    def vps(self) -> list["LiveTask"]:
        """The live VPS tasks, by id."""
        return [self[i] for i in sorted(self._vps)]

    def nodes(self) -> Iterator[str]:
        """The nodes that hold at least one live task."""
        return iter(list(self._by_node))

    def check(self) -> None:
        """``AssertionError`` unless every index matches a scan of the tasks (for tests)."""
        by_node: dict[str, set[int]] = {}
        by_env: dict[str, set[int]] = {}
        for task_id, task in self.items():
            assert task.id == task_id, (task_id, task.id)
            if task.node is not None:
                by_node.setdefault(task.node, set()).add(task_id)
            if task.spec.backend == _DOCKER and task.spec.container:
                by_env.setdefault(task.spec.container, set()).add(task_id)
        assert by_node == self._by_node, (by_node, self._by_node)
        assert by_env == self._by_env, (by_env, self._by_env)
        assert self._vps == {i for i, t in self.items() if t.spec.kind == _VPS}
        assert self.state_counts() == dict(Counter(t.state for t in self.values()))


def _discard(index: dict[str, set[int]], key: str | None, task_id: int) -> None:
    if key is None:
        return
    ids = index.get(key)
    if ids is not None:
        ids.discard(task_id)
        if not ids:
            del index[key]
