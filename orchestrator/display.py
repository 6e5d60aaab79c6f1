"""What orch prints: the status table and its JSON, the progress line, money and durations."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from .tasks import SETTLED_STATES, State
from .views import TaskView


def now() -> datetime:
    return datetime.now(UTC)


def money(value: float | None) -> str:
    return "-" if value is None else f"${value:.2f}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def clock(stamp: str | None) -> str:
    return stamp[11:19] if stamp and len(stamp) >= 19 else "-"


def shorten(value: str | None, limit: int = 70) -> str:
    value = " ".join((value or "").split())
    return value if len(value) <= limit else value[: limit - 3] + "..."


def branch(view: TaskView) -> str:
    if not view.branch:
        return "-"
    return view.branch if view.pushed else f"{view.branch} (not pushed)"


def summary(views: Sequence[TaskView]) -> str:
    counts = Counter(v.state.value for v in views)
    order = [s.value for s in State]
    parts = ", ".join(f"{counts[s]} {s}" for s in order if counts[s])
    total = sum(v.cost or 0.0 for v in views)
    return f"{len(views)} task{'s' if len(views) != 1 else ''}: {parts or 'none'} · total cost {money(total)}"


def status_table(views: Sequence[TaskView]) -> str:
    at = now()
    rows = [("ID", "STATE", "WORKER", "STARTED", "DURATION", "COST", "BRANCH", "NOTE")]
    for v in views:
        note = v.message if v.state is not State.SUCCESS else ""
        if v.attempt > 1:
            note = f"attempt {v.attempt}" + (f"; {note}" if note else "")
        rows.append(
            (v.id, v.state.value, v.worker_type, clock(v.started_at), duration(v.duration(at)), money(v.cost),
             branch(v), shorten(note))
        )  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1] for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines) + "\n" + summary(views)


def status_json(
    views: Sequence[TaskView],
    batch: str | None = None,
    accounts: Mapping[str, Mapping[str, Any]] | None = None,
    gate: Mapping[str, Any] | None = None,
    egress: Mapping[str, Mapping[str, int]] | None = None,
) -> str:
    """The document, one task a line: json's C encoder writes each, where an indented dump would
    go through its Python one, slower by far over thousands of tasks. ``batch``: whose tasks
    these are (None: the tasks named, or every task)."""
    at = now()
    tasks = ",\n".join(f"    {json.dumps(v.to_json(at))}" for v in views)
    counts = json.dumps(dict(Counter(v.state.value for v in views)))
    total = json.dumps(round(sum(v.cost or 0.0 for v in views), 6))
    listed = f"[\n{tasks}\n  ]" if views else "[]"
    return (
        f'{{\n  "batch": {json.dumps(batch)},\n  "tasks": {listed},\n  "counts": {counts},\n'
        f'  "total_cost_usd": {total},\n  "relay": {json.dumps({"accounts": accounts or {}, "gate": gate})},\n'
        # Connections through the egress proxy, a task's allowed and refused (its worker made one at least).
        f'  "egress": {json.dumps(egress or {})}\n}}'
    )


def progress_line(views: Sequence[TaskView], elapsed: float) -> str:
    counts = Counter(v.state for v in views)
    done = sum(counts[s] for s in SETTLED_STATES)
    failed = done - counts[State.SUCCESS]
    running = counts[State.RUNNING] + counts[State.STARTING]
    cost = sum(v.cost or 0.0 for v in views)
    return (
        f"{done}/{len(views)} done ({counts[State.SUCCESS]} ok, {failed} not) · {running} running · "
        f"{counts[State.QUEUED]} queued · {money(cost)} · {duration(elapsed)}"
    )
