"""What the web board shows of a batch, and the interface of the backend that tells it.

The board (``dashboard.py``) asks a :class:`BoardBackend` and sends what it answers to the
browser as JSON. Most of it was written by agents (prompts, outputs, logs, diffs, branch
names, notes): it is data, carried as strings and shown as text, never as markup.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ..tasks import validate_task_id

# The columns of the board, in the order a task moves through them. budget_exceeded: the batch
# stopped the task because the batch's budget was spent.
BOARD_STATES = (
    "submitted",
    "queued",
    "blocked",
    "starting",
    "running",
    "success",
    "failed",
    "timeout",
    "cancelled",
    "interrupted",
    "budget_exceeded",
)

# A card's title is one line of the prompt; a prompt may be a megabyte on a single line.
TITLE_LIMIT = 200


def first_line(text: str, limit: int = TITLE_LIMIT) -> str:
    """The first line of ``text`` that holds something, cut to ``limit`` characters."""
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _check_count(value: int | None, what: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError(f"{what} must be a count, not {value!r}")


def _check_amount(value: float | None, what: str) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
    if value is not None and not ok:
        raise ValueError(f"{what} must be a finite amount of at least 0, not {value!r}")


@dataclass(frozen=True)
class TaskCard:
    """One task on the board."""

    id: str
    state: str  # one of BOARD_STATES
    title: str  # the first line of the prompt (first_line)
    started_at: str | None = None  # ISO 8601, UTC
    seconds: float | None = None  # the duration when finished, the time so far when running
    turns: int | None = None
    cost_usd: float | None = None
    depends_on: tuple[str, ...] = ()
    branch: str | None = None
    note: str | None = None  # the error, or the status's message

    def __post_init__(self) -> None:
        # A backend that names a state the page has no column for, or an id that is not a task
        # id (the page builds links from it), is a bug in the backend: refuse it here.
        validate_task_id(self.id)
        for dependency in self.depends_on:
            validate_task_id(dependency, "dependency")
        if self.state not in BOARD_STATES:
            raise ValueError(f"task {self.id}: {self.state!r} is not a state of the board")
        _check_count(self.turns, "turns")
        _check_amount(self.seconds, "seconds")
        _check_amount(self.cost_usd, "cost_usd")

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "title": self.title,
            "started_at": self.started_at,
            "seconds": None if self.seconds is None else round(self.seconds, 1),
            "turns": self.turns,
            "cost_usd": self.cost_usd,
            "depends_on": list(self.depends_on),
            "branch": self.branch,
            "note": self.note,
        }


@dataclass(frozen=True)
class Totals:
    """The batch as a whole."""

    by_state: Mapping[str, int]  # task counts; states without tasks may be left out
    cost_usd: float = 0.0
    budget_usd: float | None = None  # None: no budget
    workers_running: int = 0
    workers_limit: int | None = None
    rate_limit: str | None = None  # the API's state: "ok", "backing off for 6 s"; None: unknown

    def __post_init__(self) -> None:
        for state, count in self.by_state.items():
            if state not in BOARD_STATES:
                raise ValueError(f"totals: {state!r} is not a state of the board")
            _check_count(count, f"the count of {state}")
        _check_amount(self.cost_usd, "cost_usd")
        _check_amount(self.budget_usd, "budget_usd")
        _check_count(self.workers_running, "workers_running")
        _check_count(self.workers_limit, "workers_limit")

    def to_json(self) -> dict[str, Any]:
        return {
            "by_state": {state: self.by_state.get(state, 0) for state in BOARD_STATES},
            "cost_usd": self.cost_usd,
            "budget_usd": self.budget_usd,
            "workers_running": self.workers_running,
            "workers_limit": self.workers_limit,
            "rate_limit": self.rate_limit,
        }


@dataclass(frozen=True)
class BoardState:
    """Every task of the batch, in the order the board shows them, and the totals."""

    tasks: tuple[TaskCard, ...]
    totals: Totals

    def to_json(self) -> dict[str, Any]:
        return {"tasks": [card.to_json() for card in self.tasks], "totals": self.totals.to_json()}


@dataclass(frozen=True)
class FileChange:
    path: str
    added: int | None = None  # None for a binary file
    deleted: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "added": self.added, "deleted": self.deleted}


@dataclass(frozen=True)
class TaskDetail:
    """One task's page: its card, its prompt whole, and what its latest attempt gave back."""

    card: TaskCard
    prompt: str
    output: str | None = None  # the agent's final answer
    error: str | None = None
    attempt: int | None = None
    commits: int | None = None
    files_changed: tuple[FileChange, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "card": self.card.to_json(),
            "prompt": self.prompt,
            "output": self.output,
            "error": self.error,
            "attempt": self.attempt,
            "commits": self.commits,
            "files_changed": [change.to_json() for change in self.files_changed],
        }


@dataclass(frozen=True)
class LogChunk:
    """What the worker printed from byte ``offset`` on: whole lines, up to ``next_offset``."""

    text: str
    offset: int
    next_offset: int  # where the next request starts
    finished: bool  # the log will not grow any more (the task has settled)

    def __post_init__(self) -> None:
        _check_count(self.offset, "offset")
        _check_count(self.next_offset, "next_offset")
        if self.next_offset < self.offset:
            raise ValueError(f"a log chunk cannot end ({self.next_offset}) before it starts ({self.offset})")

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "offset": self.offset, "next_offset": self.next_offset, "finished": self.finished}


@dataclass(frozen=True)
class TaskDiff:
    """The task's branch against where it started: the files and the unified diff."""

    files: tuple[FileChange, ...]
    diff: str
    truncated: bool = False  # the backend cut a diff too large to show

    def to_json(self) -> dict[str, Any]:
        return {"files": [change.to_json() for change in self.files], "diff": self.diff, "truncated": self.truncated}


@dataclass(frozen=True)
class MergeOutcome:
    task_id: str
    state: str  # merged, already merged, conflict, not merged
    files: tuple[str, ...] = ()  # the conflicting files
    message: str | None = None  # why it was not merged

    def to_json(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "state": self.state, "files": list(self.files), "message": self.message}


@dataclass(frozen=True)
class MergeSummary:
    into: str | None  # the integration branch
    outcomes: tuple[MergeOutcome, ...] = ()
    message: str | None = None  # about the merge as a whole: the push failed, nothing to merge

    def to_json(self) -> dict[str, Any]:
        return {"into": self.into, "outcomes": [o.to_json() for o in self.outcomes], "message": self.message}


class BoardBackend(Protocol):
    """What the board asks of the batch. The server calls these from its request threads, so
    possibly several at once. A method given an unknown task raises ``KeyError`` (the board
    answers 404); an action refused raises ``orchestrator.errors.UserError`` (409, with its
    message, which is shown to the person)."""

    def board(self) -> BoardState: ...

    def task(self, task_id: str) -> TaskDetail | None: ...

    def log(self, task_id: str, offset: int) -> LogChunk: ...

    def diff(self, task_id: str) -> TaskDiff | None: ...

    def egress(self, task_id: str) -> list[Mapping[str, Any]]: ...

    def cancel(self, task_id: str) -> str: ...

    def retry(self, task_id: str) -> str: ...

    def merge(self) -> MergeSummary: ...
