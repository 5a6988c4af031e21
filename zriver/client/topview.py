"""Lines of ``zriver top``: pure functions from model rows to styled text fragments.

Every function takes the width it may use and returns a list of ``(style, text)`` fragments of
exactly that many cells (padded or cut with ``…``), so that a selected row's highlight spans the
screen and a narrow terminal cuts columns off on the right instead of wrapping. Styles are
class names (``class:state.running``, ``class:bar.high``...) that ``top.STYLE`` colours.
"""

from __future__ import annotations

import time

from zriver.client.topmodel import Event, Node, Task
from zriver.sizes import format_duration, format_size

Fragments = list[tuple[str, str]]

BAR = 10
NAME = 16


def clip(fragments: Fragments, width: int, style: str = "") -> Fragments:
    """``fragments`` cut or padded to exactly ``width`` cells (one cell per character)."""
    out: Fragments = []
    left = width
    for frag_style, text in fragments:
        if left <= 0:
            break
        if len(text) > left:
            text = text[: left - 1] + "…" if left > 1 else text[:left]
        out.append((f"{style} {frag_style}".strip(), text))
        left -= len(text)
    if left > 0:
        out.append((style, " " * left))
    return out


def fit(text: str, width: int, right: bool = False) -> str:
    """``text`` in exactly ``width`` characters."""
    if len(text) > width:
        return text[: width - 1] + "…" if width > 1 else text[:width]
    return text.rjust(width) if right else text.ljust(width)


def bar(percent: float | None, width: int = BAR) -> Fragments:
    """``[█████·····]``-style gauge coloured by level; ``None`` (no data) is blank."""
    if percent is None:
        return [("class:dim", "·" * width)]
    percent = max(0.0, min(100.0, percent))
    filled = round(percent * width / 100)
    level = "low" if percent < 60 else "mid" if percent < 85 else "high"
    return [(f"class:bar.{level}", "█" * filled), ("class:bar.empty", "·" * (width - filled))]


def _percent(value: float | None) -> str:
    return "   -" if value is None else f"{value:3.0f}%"


def _state(state: str, width: int) -> tuple[str, str]:
    return f"class:state.{state}", fit(state, width)


# ---- nodes ---------------------------------------------------------------------------------
def node_header(width: int, name_width: int) -> Fragments:
    text = (f"{fit('NODE', name_width)} {fit('STATE', 9)} {fit('CPU', BAR + 5)} "
            f"{fit('MEMORY', BAR + 5)} {fit('CORES', 7, True)} {fit('ALLOCATED', 13, True)} "
            f"{fit('GPUS', 6 + 9)} {fit('TASKS', 5, True)} {fit('LOAD', 6, True)}  HEARTBEAT")
    return clip([("class:colhead", text)], width, "class:colhead")


def node_line(node: Node, width: int, name_width: int, now: float | None = None) -> Fragments:
    now = time.time() if now is None else now
    cpu, mem = node.cpu_percent, node.memory_percent
    out: Fragments = [("", fit(node.name, name_width) + " "), _state(node.status, 9), ("", " ")]
    out += bar(cpu) + [("", f" {_percent(cpu)} ")] + bar(mem) + [("", f" {_percent(mem)} ")]
    alloc = f"{format_size(node.memory_used)}/{format_size(node.memory)}"
    out.append(("", f"{fit(f'{node.cores_used}/{node.cores}', 7, True)} {fit(alloc, 13, True)} "))
    if node.gpus:
        out += bar(node.gpu_percent, 6)
        out.append(("", f" {fit(f'{node.gpus_free}/{len(node.gpus)} free', 8)}"))
    else:
        out.append(("class:dim", fit("-", 6 + 9)))
    load = node.heartbeat.get("load") or []
    load_text = f"{load[0]:.2f}" if load and isinstance(load[0], (int, float)) else "-"
    seen = "-" if node.heartbeat_at is None else format_duration(max(0.0, now - node.heartbeat_at))
    out.append(("", f" {fit(str(node.tasks), 5, True)} {fit(load_text, 6, True)}  {seen}"))
    if node.reason:
        out.append(("class:dim", f"  {node.reason}"))
    return clip(out, width)


# ---- tasks ---------------------------------------------------------------------------------
def task_header(width: int) -> Fragments:
    text = (f"{fit('ID', 7, True)} {fit('NAME', NAME)} {fit('STATE', 9)} {fit('NODE', 12)} "
            f"{fit('CORES', 5, True)} {fit('MEM', 6, True)} {fit('GPU', 3, True)} "
            f"{fit('AGE', 7, True)} {fit('OWNER', 10)} WHY / DETAIL")
    return clip([("class:colhead", text)], width, "class:colhead")


def task_line(task: Task, width: int, now: float | None = None) -> Fragments:
    now = time.time() if now is None else now
    since = task.started_at if task.state != "pending" and task.started_at else task.submitted_at
    age = "-" if since is None else format_duration(max(0.0, now - since))
    known = task.known
    out: Fragments = [
        ("", f"{fit(str(task.id), 7, True)} {fit(task.name or '-', NAME)} "),
        _state(task.state, 9),
        ("", f" {fit(task.node or '-', 12)} "
             f"{fit(str(task.cores) if known else '?', 5, True)} "
             f"{fit(format_size(task.memory) if task.memory else '-', 6, True)} "
             f"{fit(str(task.gpus) if task.gpus else '-', 3, True)} {fit(age, 7, True)} "
             f"{fit(task.owner or '-', 10)} "),
        ("class:detail", task.detail),
    ]
    return clip(out, width)


# ---- events --------------------------------------------------------------------------------
def event_header(width: int) -> Fragments:
    return clip([("class:colhead", f"{fit('TIME', 8)}  {fit('KIND', 4)}  WHAT")], width,
                "class:colhead")


def event_line(event: Event, width: int) -> Fragments:
    stamp = time.strftime("%H:%M:%S", time.localtime(event.at))
    return clip([("", f"{stamp}  {fit(event.kind, 4)}  "),
                 (f"class:state.{event.state}", event.text)], width)
