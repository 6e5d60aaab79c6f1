"""The files on the shared volume: task, result and status documents, and how they are written.

Layout of the orchestration folder (``/orchestration`` in the containers)::

    tasks/ID.json     what a worker must do        (Task; written by the manager)
    status/ID.json    where the task stands now    (TaskStatus; spawn-worker, then the worker)
    results/ID.json   how it ended                 (TaskResult; the worker, once)
    logs/ID.jsonl     the agent's raw transcript   (the worker)
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import StrEnum
from pathlib import Path
from typing import Any

from .errors import InvalidInput

FORMAT_VERSION = 1
DEFAULT_ROOT = Path("/orchestration")

# Task ids become container names (worker-ID) and file names: Docker's name rules, kept short.
TASK_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
# Long prompts go on claude's command line; Linux refuses a single argument over 128 KiB.
MAX_PROMPT_CHARS = 100_000


class State(StrEnum):
    QUEUED = "queued"
    STARTING = "starting"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED_STATES


FINISHED_STATES = frozenset({State.SUCCESS, State.FAILED, State.TIMEOUT, State.CANCELLED})
RESULT_STATES = FINISHED_STATES


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def validate_task_id(task_id: object, field_name: str = "id") -> str:
    if not isinstance(task_id, str) or not TASK_ID_PATTERN.fullmatch(task_id):
        raise InvalidInput(
            f"{field_name} {task_id!r} is not a valid task id: use 1 to 63 letters, digits, '.', '_' or '-',"
            " starting with a letter or digit"
        )
    return task_id


def _require_object(data: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise InvalidInput(f"{what} must be a JSON object, not {type(data).__name__}")
    return data


def _optional(data: Mapping[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = data.get(name)
    if value is None:
        return None
    # bool is an int in Python; a JSON true is never a number here.
    if not isinstance(value, kind) or (
        isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,))
    ):
        raise InvalidInput(f"{what}: field {name!r} has the wrong type ({type(value).__name__})")
    return value


@dataclass(frozen=True)
class Task:
    """``tasks/ID.json``. Fields the project does not know are kept as they are."""

    id: str
    prompt: str
    model: str | None = None
    timeout: int | None = None  # seconds the agent may run
    extra: Mapping[str, Any] = field(default_factory=dict)

    KNOWN = ("id", "prompt", "model", "timeout")

    @classmethod
    def from_json(cls, data: Any) -> Task:
        data = _require_object(data, "task")
        task_id = validate_task_id(data.get("id"), "field 'id'") if "id" in data else None
        if task_id is None:
            raise InvalidInput("task: field 'id' is missing")
        what = f"task {task_id}"
        prompt = data.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidInput(f"{what}: field 'prompt' must be a non-empty string")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise InvalidInput(f"{what}: field 'prompt' is {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}")
        model = _optional(data, "model", str, what)
        timeout = _optional(data, "timeout", int, what)
        if timeout is not None and timeout <= 0:
            raise InvalidInput(f"{what}: field 'timeout' must be a positive number of seconds")
        extra = {k: v for k, v in data.items() if k not in cls.KNOWN}
        return cls(id=task_id, prompt=prompt, model=model or None, timeout=timeout, extra=extra)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id, "prompt": self.prompt}
        if self.model:
            data["model"] = self.model
        if self.timeout is not None:
            data["timeout"] = self.timeout
        return {**data, **self.extra}


@dataclass(frozen=True)
class TaskResult:
    """``results/ID.json``: written once by the worker when the task ends, whatever the outcome."""

    task_id: str
    status: State
    output: str
    completed_at: str
    started_at: str | None = None
    duration_seconds: float | None = None
    exit_code: int | None = None  # the agent's exit code; None when it never ran
    cost_usd: float | None = None
    num_turns: int | None = None
    session_id: str | None = None
    model: str | None = None
    error: str | None = None  # set on every outcome but success

    @property
    def succeeded(self) -> bool:
        return self.status is State.SUCCESS

    @classmethod
    def from_json(cls, data: Any) -> TaskResult:
        data = _require_object(data, "result")
        task_id = validate_task_id(data.get("task_id"), "field 'task_id'")
        what = f"result of {task_id}"
        try:
            status = State(data.get("status"))
        except ValueError:
            raise InvalidInput(f"{what}: field 'status' is {data.get('status')!r}") from None
        if status not in RESULT_STATES:
            raise InvalidInput(f"{what}: field 'status' is {status.value!r}, which is not a final state")
        output = data.get("output")
        if not isinstance(output, str):
            raise InvalidInput(f"{what}: field 'output' must be a string")
        completed_at = data.get("completed_at")
        if not isinstance(completed_at, str):
            raise InvalidInput(f"{what}: field 'completed_at' must be a string")
        return cls(
            task_id=task_id,
            status=status,
            output=output,
            completed_at=completed_at,
            started_at=_optional(data, "started_at", str, what),
            duration_seconds=_optional(data, "duration_seconds", (int, float), what),
            exit_code=_optional(data, "exit_code", int, what),
            cost_usd=_optional(data, "cost_usd", (int, float), what),
            num_turns=_optional(data, "num_turns", int, what),
            session_id=_optional(data, "session_id", str, what),
            model=_optional(data, "model", str, what),
            error=_optional(data, "error", str, what),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "status": self.status.value,
            "output": self.output,
            "completed_at": self.completed_at,
            "started_at": self.started_at,
            "duration_seconds": self.duration_seconds,
            "exit_code": self.exit_code,
            "cost_usd": self.cost_usd,
            "num_turns": self.num_turns,
            "session_id": self.session_id,
            "model": self.model,
            "error": self.error,
            "format_version": FORMAT_VERSION,
        }


@dataclass(frozen=True)
class TaskStatus:
    """``status/ID.json``: the latest known state of a task, rewritten at each step."""

    task_id: str
    state: State
    updated_at: str
    worker_type: str | None = None
    container: str | None = None
    message: str | None = None

    @classmethod
    def from_json(cls, data: Any) -> TaskStatus:
        data = _require_object(data, "status")
        task_id = validate_task_id(data.get("task_id"), "field 'task_id'")
        what = f"status of {task_id}"
        try:
            state = State(data.get("state"))
        except ValueError:
            raise InvalidInput(f"{what}: field 'state' is {data.get('state')!r}") from None
        updated_at = data.get("updated_at")
        if not isinstance(updated_at, str):
            raise InvalidInput(f"{what}: field 'updated_at' must be a string")
        return cls(
            task_id=task_id,
            state=state,
            updated_at=updated_at,
            worker_type=_optional(data, "worker_type", str, what),
            container=_optional(data, "container", str, what),
            message=_optional(data, "message", str, what),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "state": self.state.value,
            "updated_at": self.updated_at,
            "worker_type": self.worker_type,
            "container": self.container,
            "message": self.message,
            "format_version": FORMAT_VERSION,
        }


def write_atomic(path: Path, content: str | bytes, mode: int = 0o664) -> None:
    """Write a file so that a reader sees the old content or the new, never half of it."""
    data = content.encode("utf-8") if isinstance(content, str) else content
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInput(f"{path} does not exist") from None
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None


@dataclass(frozen=True)
class OrchestrationDir:
    """The shared folder, as seen by whoever holds it mounted."""

    root: Path = DEFAULT_ROOT

    SUBDIRS = ("tasks", "results", "status", "logs")

    @classmethod
    def from_env(cls) -> OrchestrationDir:
        return cls(Path(os.environ.get("ORCHESTRATION_DIR") or DEFAULT_ROOT))

    def ensure(self) -> None:
        for name in self.SUBDIRS:
            (self.root / name).mkdir(parents=True, exist_ok=True)

    def task_path(self, task_id: str) -> Path:
        return self.root / "tasks" / f"{task_id}.json"

    def result_path(self, task_id: str) -> Path:
        return self.root / "results" / f"{task_id}.json"

    def status_path(self, task_id: str) -> Path:
        return self.root / "status" / f"{task_id}.json"

    def log_path(self, task_id: str) -> Path:
        return self.root / "logs" / f"{task_id}.jsonl"

    def load_task(self, task_id: str) -> Task:
        path = self.task_path(task_id)
        task = Task.from_json(read_json(path))
        if task.id != task_id:
            raise InvalidInput(f"{path}: field 'id' is {task.id!r} but the file is named for {task_id!r}")
        return task

    def load_result(self, task_id: str) -> TaskResult:
        return TaskResult.from_json(read_json(self.result_path(task_id)))

    def write_result(self, result: TaskResult) -> None:
        write_json(self.result_path(result.task_id), result.to_json())

    def load_status(self, task_id: str) -> TaskStatus | None:
        path = self.status_path(task_id)
        return TaskStatus.from_json(read_json(path)) if path.exists() else None

    def update_status(
        self,
        task_id: str,
        state: State,
        *,
        message: str | None = None,
        worker_type: str | None = None,
        container: str | None = None,
    ) -> TaskStatus:
        """Record a new state, keeping what the previous status knew of the worker."""
        try:
            previous = self.load_status(task_id)
        except InvalidInput:
            previous = None  # a damaged status file is replaced, not fatal
        status = TaskStatus(
            task_id=task_id,
            state=state,
            updated_at=utc_now(),
            worker_type=worker_type or (previous.worker_type if previous else None),
            container=container or (previous.container if previous else None),
            message=message,
        )
        write_json(self.status_path(task_id), status.to_json())
        return status
