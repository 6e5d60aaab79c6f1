"""The batch's dependency graph: what blocks a task, what it waits for, cycles in hand-written
files. Every walk keeps a stack of its own: a chain may be thousands of tasks deep."""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence

from .tasks import (
    FINISHED_STATES,
    State,
)
from .views import TaskView


def unstarted_dependencies(view: TaskView, by_id: Mapping[str, TaskView]) -> list[str]:
    """The tasks, this one depends on directly or not, that were submitted but never started:
    until someone starts them, this one cannot run."""
    found: list[str] = []
    seen: set[str] = set()
    todo = collections.deque(view.depends_on)
    while todo:
        dep = todo.popleft()
        other = by_id.get(dep)
        if dep in seen or other is None:
            continue
        seen.add(dep)
        if other.state is State.SUBMITTED:
            found.append(dep)
        todo.extend(other.depends_on)
    return found


def dependency_cycles(by_id: Mapping[str, TaskView]) -> list[list[str]]:
    """Chains of dependencies that lead back where they started (possible in hand-written
    files), each as the ids round it: [a, b, a]. A walk with a stack of its own: a chain may be
    thousands of tasks deep."""
    color: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []
    for start in by_id:
        if start in color:
            continue
        color[start] = 1
        path = [start]
        stack = [iter(by_id[start].depends_on)]
        while stack:
            dep = next(stack[-1], None)
            if dep is None:
                color[path.pop()] = 2
                stack.pop()
            elif dep in by_id and color.get(dep) == 1:
                cycles.append([*path[path.index(dep) :], dep])
            elif dep in by_id and dep not in color:
                color[dep] = 1
                path.append(dep)
                stack.append(iter(by_id[dep].depends_on))
    return cycles


def blocking_reasons(views: Sequence[TaskView]) -> dict[str, str]:
    """Why each queued task will not run, for those that will not: a dependency that does not
    exist, did not succeed, is blocked itself, or goes round in a circle. One pass, dependencies
    before dependents, so that a chain blocks at once however long it is."""
    by_id = {v.id: v for v in views}
    reasons: dict[str, str] = {}
    for cycle in dependency_cycles(by_id):
        ring = cycle[:-1]
        for task_id in ring:
            if by_id[task_id].state is State.QUEUED and task_id not in reasons:
                turn = ring.index(task_id)
                path = [*ring[turn:], *ring[:turn], task_id]
                reasons[task_id] = f"its dependencies go round in a circle: {' -> '.join(path)}"
    done: set[str] = set()
    for start in by_id:
        walk: list[tuple[str, bool]] = [(start, False)]
        on_path: set[str] = set()
        while walk:
            task_id, deps_done = walk.pop()
            if task_id in done:
                continue
            view = by_id[task_id]
            if not deps_done:
                if task_id in on_path:
                    continue  # round a circle: reported above
                on_path.add(task_id)
                walk.append((task_id, True))
                walk.extend((dep, False) for dep in view.depends_on if dep in by_id and dep not in done)
                continue
            on_path.discard(task_id)
            done.add(task_id)
            if view.state is State.QUEUED and task_id not in reasons:
                reason = _blocking_reason(view, by_id, reasons)
                if reason:
                    reasons[task_id] = reason
    return reasons


def _blocking_reason(view: TaskView, by_id: Mapping[str, TaskView], reasons: Mapping[str, str]) -> str | None:
    for dep in view.depends_on:
        other = by_id.get(dep)
        if other is None:
            return f"it depends on {dep}, which does not exist"
        if other.state in FINISHED_STATES and other.state is not State.SUCCESS:
            return f"{dep} ended {other.state.value}"
        if other.state is State.BLOCKED or dep in reasons:
            return f"{dep} is blocked"
    return None


def with_submitted_dependencies(views: list[TaskView], chosen: list[TaskView]) -> list[TaskView]:
    """The chosen tasks and the submitted tasks they depend on, directly or not (so the chain
    can run). A walk with a list of its own: a chain may be thousands of tasks deep."""
    by_id = {v.id: v for v in views}
    ordered: dict[str, TaskView] = {}
    todo = list(reversed(chosen))
    while todo:
        view = todo.pop()
        if view.id in ordered:
            continue
        ordered[view.id] = view  # first, so that a cycle in hand-written files ends
        deps = [by_id[dep] for dep in view.depends_on if dep in by_id and by_id[dep].state is State.SUBMITTED]
        todo.extend(reversed(deps))
    return list(ordered.values())
