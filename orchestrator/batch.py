"""The batch as a whole: every task's true state, and the changes orch makes to it.

A task's state comes from three places, in this order of authority:

1. ``results/ID.json``: once written, the attempt is over and this says how it ended.
2. The worker container: a worker that exited without writing a result died (killed,
   out of memory, crashed), whatever its status file still says.
3. ``status/ID.json``: everything else (submitted, queued, blocked, starting, running).

``reconcile`` applies rule 2 and writes down what it finds, so that the next reader (a
new manager, a person with ``cat``) sees the same truth. Every change goes through the
volume's state lock.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from . import config, limits
from .errors import InvalidInput, UserError
from .tasks import (
    ACTIVE_STATES,
    FINISHED_STATES,
    SETTLED_STATES,
    TASK_ID_PATTERN,
    AlreadyExists,
    OrchestrationDir,
    SettledIndex,
    SettledTask,
    State,
    Task,
    TaskResult,
    TaskStatus,
    check_prompt,
    parse_time,
    read_json,
    utc_now,
    validate_task_id,
    write_json_once,
)

# A worker that spawn has not created or started after this long never will be: its
# spawner died (a manager stopped mid-spawn). The task goes back to the queue.
STARTING_GRACE_SECONDS = 120
# A created container is started a moment later by whoever created it; one still not started
# after this long (given to the dispatcher, which knows no spawn of its own is under way) was
# left by a spawner that died.
CREATED_GRACE_SECONDS = 30
GENERATED_ID = re.compile(r"task-(\d+)")

log = logging.getLogger("orchestrator.batch")


@dataclass(frozen=True)
class TaskView:
    """One task as orch shows it: its files, and the state they add up to."""

    id: str
    state: State
    task: Task | None = None
    status: TaskStatus | None = None
    result: TaskResult | None = None
    problem: str | None = None  # a file of the task that cannot be read
    archived: int = 0  # the number of the last attempt kept under attempts/ID/
    resumed: int = 0  # how often it was queued again by itself after an interruption
    # A task taken from the settled index: none of its files was read, this is what orch shows of them.
    settled: SettledTask | None = None

    @classmethod
    def from_settled(cls, entry: SettledTask) -> TaskView:
        return cls(entry.id, entry.state, settled=entry)

    def settled_entry(self) -> SettledTask | None:
        """What the settled index keeps of this task: once it has a result, and its files read well."""
        if self.settled is not None:
            return self.settled
        if self.result is None or self.task is None or self.problem is not None:
            return None
        if self.state is State.INTERRUPTED:
            # Not settled for good: the dispatcher may queue it again, and counts its resumes.
            return None
        return SettledTask(
            id=self.id,
            state=self.state,
            worker_type=self.worker_type,
            attempt=self.attempt,
            depends_on=self.depends_on,
            started_at=self.started_at,
            duration_seconds=self.result.duration_seconds,
            cost_usd=self.result.cost_usd,
            error=self.result.error,
            branch=self.result.branch,
            pushed=self.result.pushed,
        )

    @property
    def worker_type(self) -> str:
        if self.settled is not None:
            return self.settled.worker_type
        return (
            (self.task.worker if self.task else None)
            or (self.status.worker_type if self.status else None)
            or config.DEFAULT_WORKER_TYPE
        )

    @property
    def container(self) -> str:
        return config.container_name(self.id)

    @property
    def attempt(self) -> int:
        if self.settled is not None:
            return self.settled.attempt
        for source in (self.result, self.status):
            if source is not None and source.attempt:
                return source.attempt
        return self.archived + 1

    @property
    def started_at(self) -> str | None:
        if self.settled is not None:
            return self.settled.started_at
        if self.result is not None and self.result.started_at:
            return self.result.started_at
        return self.status.started_at if self.status is not None else None

    def duration(self, now: datetime) -> float | None:
        if self.settled is not None:
            return self.settled.duration_seconds
        if self.result is not None:
            return self.result.duration_seconds
        started = parse_time(self.started_at)
        if started is None or self.state not in ACTIVE_STATES:
            return None
        return max(0.0, (now - started).total_seconds())

    @property
    def cost(self) -> float | None:
        if self.settled is not None:
            return self.settled.cost_usd
        return self.result.cost_usd if self.result is not None else None

    @property
    def branch(self) -> str | None:
        if self.settled is not None:
            return self.settled.branch
        return self.result.branch if self.result is not None else None

    @property
    def pushed(self) -> bool | None:
        if self.settled is not None:
            return self.settled.pushed
        return self.result.pushed if self.result is not None else None

    @property
    def message(self) -> str | None:
        if self.settled is not None:
            return self.settled.error
        if self.problem:
            return self.problem
        if self.result is not None:
            return self.result.error
        return self.status.message if self.status is not None else None

    @property
    def depends_on(self) -> tuple[str, ...]:
        if self.settled is not None:
            return self.settled.depends_on
        return self.task.depends_on if self.task else ()

    def to_json(self, now: datetime) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state.value,
            "worker": self.worker_type,
            "attempt": self.attempt,
            "depends_on": list(self.depends_on),
            "started_at": self.started_at,
            "duration_seconds": _round(self.duration(now)),
            "cost_usd": self.cost,
            "message": self.message,
            "container": self.container,
            "branch": self.branch,
            "pushed": self.pushed,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def load_view(orch: OrchestrationDir, task_id: str) -> TaskView:
    """The task's files and the state they add up to. A file that cannot be read is reported
    (``problem``) and does not hide the others: a damaged result still counts as an attempt
    that ended (``orch retry`` runs the task again), a damaged status as a worker to look for."""
    problems: list[str] = []

    def load(what: Callable[[str], Any]) -> Any:
        try:
            return what(task_id)
        except InvalidInput as exc:
            problems.append(str(exc).replace(f"{orch.root}/", ""))  # results/ID.json is ...: short for the table
            return None

    task = load(orch.load_task)
    status = load(orch.load_status)
    damaged_status = bool(problems) and task is not None
    result = load(orch.load_result)
    damaged_result = result is None and orch.result_path(task_id).exists()
    if task is None or damaged_result:
        state = State.FAILED
    elif result is not None:
        state = result.status
    elif damaged_status:
        state = State.STARTING  # reconcile asks the engine whether a worker is there
    elif status is not None:
        state = status.state
    else:
        state = State.SUBMITTED  # a task file written by hand, not started yet
    problem = "; ".join(problems) or None
    if problem and damaged_result:
        problem += f" (`orch retry {task_id}` runs the task again)"
    # Attempts kept under attempts/ID/ matter only when neither file says which attempt this is.
    known = (result and result.attempt) or (status and status.attempt)
    archived = 0 if known else max(attempt_files(orch, task_id), default=0)
    resumed = interruptions(orch, task_id) if state is State.INTERRUPTED else 0
    return TaskView(task_id, state, task, status, result, problem, archived, resumed)


def load_views(orch: OrchestrationDir, ids: Iterable[str] | None = None) -> list[TaskView]:
    return [load_view(orch, task_id) for task_id in (orch.task_ids() if ids is None else ids)]


def check_known(orch: OrchestrationDir, ids: Iterable[str]) -> list[str]:
    """``ids`` once each, in the order given; an id with no task file is an error (as ``select``),
    found without listing every task of the volume."""
    ids = list(dict.fromkeys(ids))
    missing = [t for t in ids if not TASK_ID_PATTERN.fullmatch(t) or not orch.task_path(t).is_file()]
    if missing:
        raise UserError(f"no such task: {', '.join(missing)} (see `orch status`)")
    return ids


_Signature = tuple[tuple[int, int, int] | None, ...]


class ViewCache:
    """The batch's views for a process that looks again and again (orch wait, the dispatcher,
    orch status --watch), or once over a long history (orch status). A task that has a result is
    read from its files once, then taken from the settled index (tasks.SettledIndex), which this
    cache keeps up to date on the volume; the files of the other tasks are read again only when
    they changed. Call ``views`` holding the state lock: the index is written under it, and
    ``orch retry`` takes tasks out of it under it."""

    # A file changed this recently may change again without its timestamp moving (timestamps
    # advance by clock ticks): it is read again next time whatever its signature says.
    RACY_SECONDS = 2.0

    def __init__(self, orch: OrchestrationDir):
        self.orch = orch
        self.key: tuple[int, int] | None = None  # of the index the settled views come from
        self.whole = False  # its base and additions were read well
        self.base: dict[str, SettledTask] = {}
        self.added: dict[str, SettledTask] = {}
        self.settled: dict[str, TaskView] = {}
        self.unsettled: dict[str, tuple[_Signature | None, TaskView]] = {}
        self.listing: tuple[tuple[int, int, int] | None, list[str]] = (None, [])
        self.changes = 0  # how often a view was made anew: unchanged, ``views`` gives what it gave
        # The last views of every task: the listing, the index key, the views, where the open ones are.
        self.last: tuple[list[str], tuple[int, int] | None, list[TaskView], list[int]] | None = None

    def views(self, ids: Iterable[str] | None = None) -> list[TaskView]:
        """The views of ``ids`` (check them first: ``check_known``), else of every task. For a few
        tasks the index is not worth reading: their files are, unless this cache holds it already."""
        if ids is None or self.key is not None:
            self._refresh()  # another process may have written a newer one (orch retry: fewer tasks)
        chosen = self.task_ids() if ids is None else list(ids)
        if ids is None and self.last is not None and self.last[0] is chosen and self.last[1] == self.key:
            return self._again(*self.last)
        views: list[TaskView] = []
        found: dict[str, SettledTask] = {}
        still: list[int] = []  # where the tasks read from their files are
        for task_id in chosen:
            view = self.settled.get(task_id)
            if view is None:
                view = self._load(task_id)
                entry = view.settled_entry()
                if entry is not None:
                    found[task_id] = entry
                still.append(len(views))
            views.append(view)
        known = set(chosen) if ids is None else None
        if known is not None and (found or not known.issuperset(self.settled)):
            self._add(found, known)
        elif found and self.key is not None:
            self._add(found, None)
        if ids is None:
            self.last = (chosen, self.key, views, [p for p in still if chosen[p] not in self.settled])
        return views

    def _again(self, chosen: list[str], key: object, views: list[TaskView], still: list[int]) -> list[TaskView]:
        """Every task again, with no task added or removed and the same index: only those not
        settled can have changed (over a long history, most rounds of orch wait --all)."""
        views = list(views)
        found: dict[str, SettledTask] = {}
        for position in still:
            view = views[position] = self._load(chosen[position])
            entry = view.settled_entry()
            if entry is not None:
                found[view.id] = entry
        if found:
            self._add(found, None)
        # Those the index could not take stay here: their files are the only word on them.
        self.last = (chosen, self.key, views, [p for p in still if chosen[p] not in self.settled])
        return views

    def task_ids(self) -> list[str]:
        """Every task on the volume, listed again only when the tasks folder changed."""
        signature = _signature(self.orch.root / "tasks")
        if signature is None or signature != self.listing[0]:
            self.listing = (signature, self.orch.task_ids())
            self.changes += 1
        return self.listing[1]

    def _refresh(self) -> None:
        """The settled views of the latest index, when another process wrote a newer one: its
        additions alone while the base is the one held."""
        key = self.orch.settled_key()
        if key == self.key:
            return
        if key is not None and self.key is not None and self.whole and key[0] == self.key[0] and key[1]:
            additions = self.orch.read_settled(key)
            if additions is not None:
                self.key, before = key, self.added
                self.added = dict(additions.tasks)
                self._settle({k: v for k, v in self.added.items() if before.get(k) != v})
                return
        # A part damaged: none of it is taken (orch retry may have written around it), and the
        # next tasks found settled make a new base.
        key, base, added = self.orch.load_settled_index()
        self.key, self.whole = key, base is not None and added is not None
        self.base, self.added = (dict(base or {}), dict(added or {})) if self.whole else ({}, {})
        self.settled = {}
        self._settle({**self.base, **self.added})

    def _settle(self, entries: Mapping[str, SettledTask]) -> None:
        self.changes += 1
        for task_id, entry in entries.items():
            self.settled[task_id] = TaskView.from_settled(entry)
            self.unsettled.pop(task_id, None)

    def _load(self, task_id: str) -> TaskView:
        paths = (self.orch.task_path(task_id), self.orch.status_path(task_id), self.orch.result_path(task_id))
        signature: _Signature | None = tuple(_signature(path) for path in paths)
        cached = self.unsettled.get(task_id)
        if cached is not None and cached[0] == signature:
            return cached[1]
        view = load_view(self.orch, task_id)
        self.unsettled[task_id] = (signature, view)
        self.changes += 1
        return view

    def _add(self, found: Mapping[str, SettledTask], known: Collection[str] | None) -> None:
        """Write the tasks just found settled into the index: in its additions file, or in a new
        base once there are many, or to leave out tasks whose file is gone (``known`` lists every
        task). Until it is written, they are read from their files."""
        entries = {**self.base, **self.added, **found}
        if known is not None:
            entries = {task_id: entry for task_id, entry in entries.items() if task_id in known}
        added = {**self.added, **found}
        try:
            many = len(added) > SettledIndex.ADDITIONS_LIMIT
            if self.key is None or not self.whole or many or len(entries) < len(self.base) + len(added):
                self.key = self.orch.write_settled_index(entries, self.key)
                self.base, self.added, self.whole = entries, {}, True
                self.settled = {task_id: view for task_id, view in self.settled.items() if task_id in entries}
            else:
                self.key = self.orch.write_settled_additions(added, self.key)
                self.added = added
        except (OSError, UserError) as exc:
            # A volume this user may not write, or full: orch still works, only slower.
            log.debug("the settled index could not be written: %s", exc)
            return
        self._settle(found)


def _signature(path: Path) -> tuple[int, int, int] | None:
    """What changes when a file is replaced or written: its inode, size and time of change; None
    when it does not exist, or changed too recently to be told apart from a change to come."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    if time.time() - info.st_mtime < ViewCache.RACY_SECONDS:
        return (-1, -1, time.monotonic_ns())  # never equal to another: read again
    return (info.st_ino, info.st_size, info.st_mtime_ns)


def forget_settled(orch: OrchestrationDir, ids: Collection[str]) -> None:
    """Take tasks out of the settled index, before their result is moved away (orch retry); hold
    the state lock. Fails when the index cannot be written: a task left in it would show its old
    result for ever."""
    key, base, added = orch.load_settled_index()
    if base is None or added is None:
        return  # taken for none by its readers; the next one written is a new base, from the files
    tasks = {**base, **added}
    if any(task_id in tasks for task_id in ids):
        orch.write_settled_index({k: v for k, v in tasks.items() if k not in ids}, key)


def select(views: list[TaskView], ids: Iterable[str]) -> list[TaskView]:
    """The views of ``ids``, in the order given; an unknown id is an error."""
    by_id = {view.id: view for view in views}
    missing = [task_id for task_id in ids if task_id not in by_id]
    if missing:
        raise UserError(f"no such task: {', '.join(missing)} (see `orch status`)")
    return [by_id[task_id] for task_id in dict.fromkeys(ids)]


class Engine(Protocol):
    """What the batch's rules ask of the engine (engine.py has Docker's)."""

    def containers(self, names: list[str]) -> dict[str, Mapping[str, Any]]: ...

    def remove(self, name: str) -> None: ...

    def rename(self, name: str, new_name: str) -> bool: ...

    def signal(self, name: str, signal: str) -> None: ...

    def stop(self, name: str, grace: int | None = None) -> None: ...

    def workers(self) -> list[tuple[str, bool]]: ...


def _age_seconds(stamp: str | None, now: datetime) -> float:
    when = parse_time(stamp)
    return (now - when).total_seconds() if when else float("inf")


def death_notice(container: str, state: Mapping[str, Any]) -> str:
    """Why a worker container ended, in words."""
    code = state.get("ExitCode")
    if code is None and state.get("Error"):
        # A swarm job that was never placed, or whose container could not be made.
        return f"the worker {container} never ran: {state['Error']}"
    if state.get("OOMKilled"):
        return f"the worker container {container} was killed: out of memory (exit code {code})"
    detail = " (killed by SIGKILL)" if code == 137 else " (killed by SIGTERM)" if code == 143 else ""
    error = f": {state['Error']}" if state.get("Error") else ""
    kept = f"; whatever it did is in the container ({container})" if interrupted(state) else ""
    return f"the worker container {container} exited with code {code}{detail} without writing a result{error}{kept}"


def interrupted(state: Mapping[str, Any]) -> bool:
    """Whether a worker that ended without a result was stopped from outside (killed by a signal
    or by the engine going away) rather than failing by itself (a crash, out of memory)."""
    return not state.get("OOMKilled") and state.get("ExitCode") in (137, 143, 255)


def record_outcome(
    orch: OrchestrationDir,
    view: TaskView,
    state: State,
    error: str,
    *,
    worker_exit_code: int | None = None,
) -> TaskView:
    """Write the result of an attempt that the worker could not write itself."""
    now = datetime.now(UTC)
    result = TaskResult(
        task_id=view.id,
        status=state,
        output="",
        completed_at=utc_now(),
        started_at=view.started_at,
        duration_seconds=_round(view.duration(now)),
        error=error,
        attempt=view.attempt,
        worker_exit_code=worker_exit_code,
    )
    try:
        orch.write_result(result)
    except AlreadyExists:
        return load_view(orch, view.id)  # the worker got there first; its word stands
    orch.update_status(view.id, state, message=error)
    return load_view(orch, view.id)


def reconcile(
    orch: OrchestrationDir,
    views: list[TaskView],
    engine: Engine,
    *,
    starting_grace: float = STARTING_GRACE_SECONDS,
    only: Collection[str] | None = None,
) -> list[TaskView]:
    """Check the tasks that should have a worker against the engine; hold the state lock.
    ``only``: the worker containers to look at (those an engine event named), else every one.

    A task marked starting whose worker does not exist yet may be a spawn under way; after
    ``starting_grace`` seconds it is taken for one that died and queued again. The dispatcher,
    the only one that marks tasks starting before their container exists, passes 0 and leaves
    out the tasks it is starting: it holds the dispatcher lock, so the others' spawns are over.
    """
    active = [
        view
        for view in views
        if view.state in ACTIVE_STATES and view.result is None and (only is None or view.container in only)
    ]
    if not active:
        return views
    containers = engine.containers([view.container for view in active])
    now = datetime.now(UTC)
    updated: dict[str, TaskView] = {}
    for view in active:
        info = containers.get(view.container)
        age = _age_seconds(view.status.updated_at if view.status else None, now)
        if info is None:
            if view.state is State.STARTING:
                if age > starting_grace:
                    orch.update_status(view.id, State.QUEUED, message="its worker was never created; queued again")
                    updated[view.id] = load_view(orch, view.id)
                continue
            updated[view.id] = record_outcome(
                orch, view, _stopped_state(view), f"the worker container {view.container} is gone and left no result"
            )
            continue
        state = info.get("State") or {}
        status = state.get("Status")
        if status == "created" and age > max(starting_grace, CREATED_GRACE_SECONDS):
            engine.remove(view.container)
            orch.update_status(view.id, State.QUEUED, message="its worker was created but never started; queued again")
            updated[view.id] = load_view(orch, view.id)
        elif status in ("exited", "dead"):
            fresh = load_view(orch, view.id)  # it may have written its result as it exited
            if fresh.result is not None:
                updated[view.id] = fresh
                continue
            code = state.get("ExitCode")
            updated[view.id] = record_outcome(
                orch,
                view,
                _stopped_state(view, State.INTERRUPTED if interrupted(state) else State.FAILED),
                death_notice(view.container, state),
                worker_exit_code=code if isinstance(code, int) else None,
            )
    return [updated.get(view.id, view) for view in views]


def _stopped_state(view: TaskView, otherwise: State = State.FAILED) -> State:
    """What a worker that died without a result amounts to: what orch asked for, else ``otherwise``."""
    reason = view.status.stop_reason if view.status else None
    return {"cancelled": State.CANCELLED, "timeout": State.TIMEOUT}.get(reason or "", otherwise)


# --- Dependencies.


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


def needs_dispatcher(views: Iterable[TaskView], resume_limit: int = 0) -> bool:
    """Work a dispatcher can move on: a worker under way, a queued task that does not wait for
    a task nobody started, or an interrupted task to run again."""
    views = list(views)
    by_id = {v.id: v for v in views}
    return any(
        v.state in ACTIVE_STATES
        or (v.state is State.QUEUED and not unstarted_dependencies(v, by_id))
        or resumable(v, resume_limit)
        for v in views
    )


# --- Interruptions: an engine shutdown, a docker stop by hand, a host reboot.


def interruptions(orch: OrchestrationDir, task_id: str) -> int:
    """How many earlier attempts of the task were interrupted (and so run again)."""
    count = 0
    for number in attempt_files(orch, task_id):
        try:
            earlier = TaskResult.from_json(read_json(orch.attempt_path(task_id, number, "json")))
        except InvalidInput:
            continue
        count += earlier.status is State.INTERRUPTED
    return count


def resumable(view: TaskView, limit: int) -> bool:
    return view.state is State.INTERRUPTED and view.result is not None and view.resumed < limit


def resume(orch: OrchestrationDir, engine: Engine, view: TaskView) -> TaskView:
    """Queue an interrupted task again, as orch retry would: the new attempt starts from what the
    interrupted one handed back (its pushed branch or its bundle); a container that holds the
    only copy of its work is kept under another name. Call it under the state lock."""
    result = view.result
    assert result is not None
    forget_settled(orch, [view.id])
    number = archive_attempt(orch, view)
    kept = f"{view.container}-attempt-{number}"
    renamed = engine.rename(view.container, kept)
    if result.pushed and result.branch:
        saved = f"it starts from {result.branch}, which attempt {number} pushed"
    elif result.bundle:
        saved = f"it starts from the bundle attempt {number} saved"
    elif renamed and not work_is_safe(result):
        saved = f"attempt {number}'s work, if any, is in the container {kept}"
    else:
        saved = f"attempt {number} had handed nothing back"
    message = f"resumed after attempt {number} was interrupted; {saved}"
    orch.update_status(view.id, State.QUEUED, attempt=number + 1, message=message)
    return load_view(orch, view.id)


def work_is_safe(result: TaskResult | None) -> bool:
    """Whether nothing of the attempt lives only in its container: its commits were pushed or
    bundled, or there were none, or the agent never ran."""
    if result is None:
        return False
    if result.pushed or result.bundle or result.archive or result.commits == 0:
        return True
    # No hand-back recorded: a worker that died or was killed may have left work in its clone.
    return result.base_commit is None and result.exit_code is None and result.worker_exit_code is None


# --- Changes orch makes. Each runs under the state lock.


def next_task_id(orch: OrchestrationDir) -> str:
    numbers = [int(m.group(1)) for name in orch.task_ids() if (m := GENERATED_ID.fullmatch(name))]
    return f"task-{max(numbers, default=0) + 1:03d}"


def submit(
    orch: OrchestrationDir,
    *,
    prompt: str,
    task_id: str | None,
    worker: str,
    depends_on: Iterable[str],
    timeout: int | None,
    max_turns: int | None,
    model: str | None,
    memory: str | None = None,
    cpus: str | None = None,
    pids_limit: str | None = None,
    disk: str | None = None,
) -> Task:
    """Write a new task (never over an existing one) and mark it submitted."""
    if task_id is not None:
        validate_task_id(task_id, "--id")
    config.worker_image(worker, "")  # validates the type
    check_prompt(prompt, "the prompt")
    if timeout is not None and timeout <= 0:
        raise InvalidInput("--timeout must be a positive number of seconds")
    if max_turns is not None and max_turns <= 0:
        raise InvalidInput("--max-turns must be a positive number")
    deps = list(dict.fromkeys(depends_on))
    for dep in deps:
        validate_task_id(dep, "--depends-on")
    known = set(orch.task_ids())
    unknown = [dep for dep in deps if dep not in known]
    if unknown:
        raise InvalidInput(f"--depends-on names {', '.join(unknown)}, which does not exist")
    task = Task(
        id=task_id or next_task_id(orch),
        prompt=prompt,
        model=model,
        timeout=timeout,
        worker=worker,
        depends_on=tuple(deps),
        max_turns=max_turns,
        memory=limits.check_memory(memory) if memory else None,
        cpus=limits.check_cpus(cpus) if cpus else None,
        pids_limit=limits.check_pids(pids_limit) if pids_limit else None,
        disk=limits.check_disk(disk) if disk else None,
    )
    if task.id in deps:
        raise InvalidInput("--depends-on names the task itself")
    try:
        write_json_once(orch.task_path(task.id), task.to_json())
    except AlreadyExists:
        raise InvalidInput(f"task {task.id} exists already; pick another --id") from None
    orch.update_status(task.id, State.SUBMITTED, worker_type=worker, attempt=1)
    return task


def queue(orch: OrchestrationDir, views: list[TaskView]) -> list[str]:
    """Hand submitted tasks to the dispatcher. Queued, starting or running ones are left as they are."""
    queued = []
    for view in views:
        if view.problem:
            raise UserError(f"task {view.id} cannot be started: {view.problem}")
        if view.state is State.SUBMITTED:
            orch.update_status(view.id, State.QUEUED, worker_type=view.worker_type, attempt=view.attempt)
            queued.append(view.id)
        elif view.state in FINISHED_STATES or view.state is State.BLOCKED:
            raise UserError(f"task {view.id} is {view.state.value}; use `orch retry {view.id}` to run it again")
    return queued


class NothingToCancel(UserError):
    pass


def cancel(orch: OrchestrationDir, engine: Engine, task_id: str) -> TaskView:
    """Stop the task's worker, or take the task off the queue; the task as it ends up.

    A running worker gets SIGTERM with its stop timeout (docker stop): it stops the agent, hands
    back what it has and writes a cancelled result.
    """
    with orch.locked():
        (view,) = load_views(orch, check_known(orch, [task_id]))
        if view.state in SETTLED_STATES:
            raise NothingToCancel(f"already {view.state.value}; nothing to cancel")
        if view.state not in ACTIVE_STATES:
            return record_outcome(orch, view, State.CANCELLED, "cancelled before its worker started")
        orch.update_status(task_id, view.state, message="cancel requested", stop_reason="cancelled")
    engine.stop(view.container)
    with orch.locked():
        view = load_view(orch, task_id)
        if view.result is not None:
            return view
        info = engine.containers([view.container]).get(view.container)
        if info is not None and (info.get("State") or {}).get("Status") == "created":
            engine.remove(view.container)  # created, never started: nothing to keep
            info = None
        if info is None:
            return record_outcome(orch, view, State.CANCELLED, "cancelled before its worker started")
        return reconcile(orch, [view], engine)[0]


@dataclass(frozen=True)
class Retried:
    task_id: str
    attempt: int | None  # the new attempt's number; None for a blocked task queued again
    kept_container: str | None = None  # where the earlier attempt's container is kept


def retry(orch: OrchestrationDir, engine: Engine, ids: Iterable[str]) -> list[Retried]:
    """Queue a new attempt of each task that ended without success; the earlier attempt's
    files move under attempts/ID/, its container is renamed worker-ID-attempt-N."""
    retried = []
    with orch.locked():
        views = reconcile(orch, load_views(orch, check_known(orch, ids)), engine)
        for view in views:
            if view.state is State.SUCCESS:
                raise UserError(f"task {view.id} succeeded; submit a new task to do more")
            if view.state not in SETTLED_STATES:
                raise UserError(f"task {view.id} is {view.state.value}; cancel it first (`orch cancel {view.id}`)")
        # Out of the settled index first: a retry cut short leaves the files as they were, which
        # orch reads again; never an index entry for a result that has moved away.
        forget_settled(orch, [view.id for view in views])
        for view in views:
            if view.state is State.BLOCKED and view.result is None:
                orch.update_status(view.id, State.QUEUED, message="queued again")
                retried.append(Retried(view.id, None))
                continue
            number = archive_attempt(orch, view)
            # The new worker needs the name; the old container (and its clone) is kept under another.
            kept = f"{view.container}-attempt-{number}"
            renamed = engine.rename(view.container, kept)
            orch.update_status(view.id, State.QUEUED, attempt=number + 1, message=f"attempt {number + 1}")
            retried.append(Retried(view.id, number + 1, kept if renamed else None))
        # Blocked tasks get another look: those whose dependencies can now succeed will run.
        for other in ViewCache(orch).views():
            if other.state is State.BLOCKED and other.result is None and other.settled is None:
                orch.update_status(other.id, State.QUEUED, message="queued again")
    return retried


def cleanup(orch: OrchestrationDir, engine: Engine, *, force: bool) -> tuple[list[str], list[str]]:
    """Remove the containers of finished workers of this volume, and those kept by retry; keep
    (and name) those whose work was neither pushed nor bundled, unless ``force``."""
    removed: list[str] = []
    kept: list[str] = []
    with orch.locked():
        # Whatever a dead worker's container says is written down before the container goes.
        views = {v.id: v for v in reconcile(orch, load_views(orch), engine)}
        for name, running in engine.workers():
            if running:
                continue
            task_id = config.container_task_id(name)
            view = views.get(task_id or "")
            earlier = config.container_attempt(name)
            if earlier is not None and task_id:
                result = attempt_result(orch, task_id, earlier)
            elif view is not None and view.state not in SETTLED_STATES:
                continue  # its task is not over: a worker being started
            else:
                result = view.result if view is not None else None
            if not force and not work_is_safe(result):
                kept.append(name)
                continue
            engine.remove(name)
            removed.append(name)
    return removed, kept


def attempt_result(orch: OrchestrationDir, task_id: str, attempt: int | None) -> TaskResult | None:
    """The result of an attempt of the task (None: the latest)."""
    if attempt is None:
        return orch.load_result(task_id)
    path = orch.attempt_path(task_id, attempt, "json")
    if not path.exists():
        view = load_view(orch, task_id)
        if view.attempt == attempt:
            return view.result
        raise UserError(f"task {task_id} has no attempt {attempt}")
    return TaskResult.from_json(read_json(path))


def archive_attempt(orch: OrchestrationDir, view: TaskView) -> int:
    """Move the finished attempt's result, transcript and log under attempts/ID/; returns its number."""
    number = view.attempt
    orch.attempt_dir(view.id).mkdir(parents=True, exist_ok=True)

    def moves_for(n: int) -> list[tuple[Path, Path]]:
        return [
            (orch.result_path(view.id), orch.attempt_path(view.id, n, "json")),
            (orch.log_path(view.id), orch.attempt_path(view.id, n, "jsonl")),
            (orch.worker_log_path(view.id), orch.attempt_path(view.id, n, "log")),
        ]

    # A number taken already (files edited by hand, a damaged status): the next free one, so
    # that nothing kept is replaced and the retry still goes ahead.
    while any(source.exists() and target.exists() for source, target in moves_for(number)):
        number += 1
    moves = moves_for(number)
    # The result moves last: until then the attempt still counts as finished, and a retry
    # cut short is simply run again.
    for source, target in reversed(moves):
        if source.exists():
            os.replace(source, target)
    return number


def attempt_files(orch: OrchestrationDir, task_id: str) -> list[int]:
    folder = orch.attempt_dir(task_id)
    return sorted(int(p.stem) for p in folder.glob("*.json") if p.stem.isdigit()) if folder.is_dir() else []
