"""Each task as orch shows it (TaskView): its files and the state they add up to, or the entry the
settled index keeps of it, read into the same plain fields either way."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from . import config
from .errors import InvalidInput, UserError
from .settled_index import SettledTask
from .spending import task_account
from .store import OrchestrationDir, read_json
from .tasks import (
    ACTIVE_STATES,
    TASK_ID_PATTERN,
    State,
    Task,
    TaskResult,
    TaskStatus,
    parse_time,
)


def result_cost(result: TaskResult | None) -> float | None:
    """What the attempt cost: the relay's measure when there is one, else the agent's own claim."""
    if result is None:
        return None
    measured = (result.usage or {}).get("cost_usd")
    if isinstance(measured, int | float) and not isinstance(measured, bool):
        return float(measured)
    return result.cost_usd


@dataclass(frozen=True, slots=True)
class TaskView:
    """One task as orch shows it, in plain fields: read from its files (``from_files``), or from
    the entry the settled index keeps of a task that has a result (``from_settled``: none of its
    files is read, and ``task``, ``status`` and ``result`` stay None)."""

    id: str
    state: State
    worker_type: str
    attempt: int
    depends_on: tuple[str, ...] = ()
    started_at: str | None = None
    duration_seconds: float | None = None  # of an attempt that ended
    cost: float | None = None
    message: str | None = None  # why it is where it is (an error, a note), or what file is damaged
    branch: str | None = None
    pushed: bool | None = None
    batch: str | None = None  # the batch it belongs to (batches.py)
    # Its files, when they were read.
    task: Task | None = None
    status: TaskStatus | None = None
    result: TaskResult | None = None
    problem: str | None = None  # a file of the task that cannot be read
    resumed: int = 0  # how often it was queued again by itself after an interruption
    settled: SettledTask | None = None  # the settled index's entry it was made from

    @classmethod
    def from_settled(cls, entry: SettledTask) -> TaskView:
        return cls(
            entry.id, entry.state, entry.worker_type, entry.attempt, entry.depends_on, entry.started_at,
            entry.duration_seconds, entry.cost_usd, entry.error, entry.branch, entry.pushed, entry.batch, settled=entry,
        )  # fmt: skip

    @classmethod
    def from_files(
        cls,
        task_id: str,
        state: State,
        task: Task | None = None,
        status: TaskStatus | None = None,
        result: TaskResult | None = None,
        *,
        problem: str | None = None,
        archived: int = 0,
        resumed: int = 0,
    ) -> TaskView:
        """``archived``: the number of the last attempt kept under attempts/ID/, which counts
        only when neither file says which attempt this is."""
        worker_type = (task.worker if task else None) or (status.worker_type if status else None)
        attempt = (result.attempt if result else None) or (status.attempt if status else None) or archived + 1
        started_at = (result.started_at if result else None) or (status.started_at if status else None)
        message = problem or (result.error if result else status.message if status else None)
        return cls(
            task_id, state, worker_type or config.DEFAULT_WORKER_TYPE, attempt, task.depends_on if task else (),
            started_at, result.duration_seconds if result else None, result_cost(result), message,
            result.branch if result else None, result.pushed if result else None,
            (task.batch if task else None) or (status.batch if status else None),
            task=task, status=status, result=result, problem=problem, resumed=resumed,
        )  # fmt: skip

    def with_live_cost(self, accounts: Mapping[str, Mapping[str, Any]]) -> TaskView:
        """While it runs, what the relay has measured so far (spend.json)."""
        if self.state not in ACTIVE_STATES:
            return self
        cost = (accounts.get(task_account(self.id)) or {}).get("cost_usd")
        return dataclasses.replace(self, cost=float(cost)) if isinstance(cost, int | float) else self

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
            self.id, self.state, self.worker_type, self.attempt, self.depends_on, self.started_at,
            self.duration_seconds, self.cost, self.result.error, self.branch, self.pushed, self.batch,
        )  # fmt: skip

    @property
    def container(self) -> str:
        return config.container_name(self.id)

    def duration(self, now: datetime) -> float | None:
        """How long the attempt took, or has taken so far while a worker runs it."""
        if self.duration_seconds is not None or self.state not in ACTIVE_STATES:
            return self.duration_seconds
        started = parse_time(self.started_at)
        return None if started is None else max(0.0, (now - started).total_seconds())

    def to_json(self, now: datetime) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state.value,
            "worker": self.worker_type,
            "attempt": self.attempt,
            "depends_on": list(self.depends_on),
            "started_at": self.started_at,
            "duration_seconds": round_seconds(self.duration(now)),
            "cost_usd": self.cost,
            "message": self.message,
            "container": self.container,
            "branch": self.branch,
            "pushed": self.pushed,
            "batch": self.batch,
        }


def round_seconds(value: float | None) -> float | None:
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
    return TaskView.from_files(
        task_id, state, task, status, result, problem=problem, archived=archived, resumed=resumed
    )


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


def select(views: list[TaskView], ids: Iterable[str]) -> list[TaskView]:
    """The views of ``ids``, in the order given; an unknown id is an error."""
    by_id = {view.id: view for view in views}
    missing = [task_id for task_id in ids if task_id not in by_id]
    if missing:
        raise UserError(f"no such task: {', '.join(missing)} (see `orch status`)")
    return [by_id[task_id] for task_id in dict.fromkeys(ids)]


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


def attempt_files(orch: OrchestrationDir, task_id: str) -> list[int]:
    folder = orch.attempt_dir(task_id)
    return sorted(int(p.stem) for p in folder.glob("*.json") if p.stem.isdigit()) if folder.is_dir() else []
