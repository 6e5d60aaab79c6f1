"""The formats of the files on the shared volume: task, result and status documents, the
batch's settings and the settled index. Where they live and how they are written is store.py.

Layout of the orchestration folder (``/orchestration`` in the containers)::

    tasks/ID.json      what a worker must do         (Task; written by the manager or orch submit)
    status/ID.json     where the task stands now     (TaskStatus; orch, spawn-worker, then the worker)
    results/ID.json    how its latest attempt ended  (TaskResult; written once per attempt)
    logs/ID.jsonl      the agent's raw transcript    (the worker)
    logs/ID.log        what the worker printed       (the worker; what `docker logs` shows)
    attempts/ID/N.*    earlier attempts' result, transcript and log, kept by orch retry
    index/settled-G.json  what orch shows of every task that has a result (SettledIndex; orch)
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from . import config, limits
from .egress_choice import check_hosts, check_policy
from .errors import InvalidInput

FORMAT_VERSION = 1

# Task ids become container names (worker-ID) and file names: Docker's name rules, kept short.
TASK_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
# The prompt reaches Claude Code on its standard input, which has no size limit of its own;
# this one keeps a prompt well inside what a model's context can take (1 MiB of UTF-8).
MAX_PROMPT_BYTES = 1_048_576


class State(StrEnum):
    SUBMITTED = "submitted"  # written, not started yet
    QUEUED = "queued"  # waiting for a free slot or for the tasks it depends on
    BLOCKED = "blocked"  # will not run: a task it depends on did not succeed
    STARTING = "starting"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    # Stopped by anyone but orch cancel: an engine shutdown, docker stop or kill by hand, a host
    # reboot. Not the task's fault: the batch runs it again (BatchSettings.resume_interrupted).
    INTERRUPTED = "interrupted"
    # Its budget (or the batch's) was spent: the control plane's relay refused its next request.
    BUDGET_EXCEEDED = "budget_exceeded"


_STATES = {state.value: state for state in State}
FINISHED_STATES = frozenset(
    {State.SUCCESS, State.FAILED, State.TIMEOUT, State.CANCELLED, State.INTERRUPTED, State.BUDGET_EXCEEDED}
)
ACTIVE_STATES = frozenset({State.STARTING, State.RUNNING})
# Nothing more happens to these without someone acting (orch retry, orch start).
SETTLED_STATES = FINISHED_STATES | {State.BLOCKED}


_NUMBERS = re.compile(r"(\d+)")


def natural_key(text: str) -> list[Any]:
    """Sort key under which task-9 comes before task-10."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in _NUMBERS.split(text)]


# Every time stamp on the volume and in the logs: UTC, to the second.
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def parse_time(stamp: str | None) -> datetime | None:
    try:
        return datetime.strptime(stamp, TIME_FORMAT).replace(tzinfo=UTC) if stamp else None
    except ValueError:
        return None


def format_time(when: datetime) -> str:
    return when.astimezone(UTC).strftime(TIME_FORMAT)


def utc_now() -> str:
    return format_time(datetime.now(UTC))


def validate_task_id(task_id: object, field_name: str = "id") -> str:
    """A task id names a container (worker-ID), files and a git branch (orchestrator/ID):
    Docker's name rules, kept short, and git's ref rules."""
    if not isinstance(task_id, str) or not TASK_ID_PATTERN.fullmatch(task_id):
        raise InvalidInput(
            f"{field_name} {task_id!r} is not a valid task id: use 1 to 63 letters, digits, '.', '_' or '-',"
            " starting with a letter or digit"
        )
    if ".." in task_id or task_id.endswith((".", ".lock")):
        raise InvalidInput(
            f"{field_name} {task_id!r} is not a valid task id: git refuses it in a branch name "
            "(no '..', and no '.' or '.lock' at the end)"
        )
    return task_id


def check_prompt(prompt: object, what: str) -> str:
    """A prompt that can reach the agent whole: text, not empty, no NUL, valid Unicode, and
    at most MAX_PROMPT_BYTES of UTF-8."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidInput(f"{what} must be a non-empty string")
    if "\0" in prompt:
        raise InvalidInput(
            f"{what} holds a NUL character (at character {prompt.index(chr(0))}), which cannot reach the agent"
        )
    try:
        size = len(prompt.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidInput(f"{what} is not valid Unicode text (a lone surrogate at character {exc.start})") from None
    if size > MAX_PROMPT_BYTES:
        raise InvalidInput(f"{what} is {size:,} bytes of UTF-8; the limit is {MAX_PROMPT_BYTES:,} bytes (1 MiB)")
    return prompt


def check_budget(value: object, what: str) -> float | None:
    """A budget in USD: a number, 0 or more (0: nothing may be spent); None when unset."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < float("inf"):
        raise InvalidInput(f"{what} must be a number of USD, 0 or more, not {value!r}")
    return float(value)


def check_fields(data: Mapping[str, Any], known: Sequence[str], what: str) -> None:
    """A field the format does not know is a mistake (``"timout": 5`` would otherwise run with
    the default timeout, silently): refused, with the closest known name."""
    for name in data:
        if name in known:
            continue
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise InvalidInput(
            f"{what}: unknown field {name!r}{hint}; fields of your own go under 'meta' (an object kept as it is)"
        )


BATCH_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,40}")


def validate_batch_id(batch_id: object, what: str = "batch") -> str:
    if not isinstance(batch_id, str) or not BATCH_ID_PATTERN.fullmatch(batch_id):
        raise InvalidInput(f"{what} {batch_id!r} is not a batch id (lower-case letters, digits and '-', up to 41)")
    return batch_id


def _batch_id(data: Mapping[str, Any], what: str) -> str | None:
    value = data.get("batch")
    return None if value is None else validate_batch_id(value, f"{what}: field 'batch' is")


def _require_object(data: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise InvalidInput(f"{what} must be a JSON object, not {type(data).__name__}")
    return data


def _field(data: Mapping[str, Any], name: str, kind: type | tuple[type, ...], what: str, required: bool = False) -> Any:
    """``data[name]`` checked against ``kind``; a missing or null optional field is None."""
    value = data.get(name)
    if value is None:
        if required:
            raise InvalidInput(f"{what}: field {name!r} is missing")
        return None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int in Python; a JSON true is never a number here.
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise InvalidInput(f"{what}: field {name!r} has the wrong type ({type(value).__name__})")
    return value


def _state(data: Mapping[str, Any], name: str, what: str, allowed: frozenset[State] | None = None) -> State:
    value = data.get(name)
    try:
        state = State(str(value))
    except ValueError:
        raise InvalidInput(f"{what}: field {name!r} is {value!r}, not a known state") from None
    if allowed is not None and state not in allowed:
        raise InvalidInput(f"{what}: field {name!r} is {state.value!r}, which is not a final state")
    return state


def _document(record: Any) -> dict[str, Any]:
    """A frozen dataclass as its JSON document, with the format version."""
    data = {f.name: getattr(record, f.name) for f in fields(record)}
    return {**{k: v.value if isinstance(v, State) else v for k, v in data.items()}, "format_version": FORMAT_VERSION}


@dataclass(frozen=True)
class Task:
    """``tasks/ID.json``. Fields the project does not know are kept as they are."""

    id: str
    prompt: str
    model: str | None = None
    timeout: int | None = None  # seconds the agent may run
    worker: str | None = None  # worker type, for orch start (spawn-worker is told it)
    depends_on: tuple[str, ...] = ()  # tasks that must succeed before this one starts
    max_turns: int | None = None
    # What its worker may use (see limits.py); unset: the batch's or the manager's defaults.
    memory: str | None = None
    cpus: str | None = None
    pids_limit: int | None = None
    disk: str | None = None
    batch: str | None = None  # the batch (a request) it belongs to; None: hand-written, see batches.py
    budget_usd: float | None = None  # what its agent may spend, in USD, measured by the control plane's relay
    # Its egress (egress_choice.py): a policy by name (None: the batch's) and hosts added to it.
    egress: str | None = None
    allow_hosts: tuple[str, ...] = ()
    # Fields of the user's own, kept as they are: the one place for them (any other unknown field
    # is a mistake, refused with the closest known name).
    meta: Mapping[str, Any] | None = None

    KNOWN = ("id", "prompt", "model", "timeout", "worker", "depends_on", "max_turns", "memory", "cpus", "pids_limit",
             "disk", "batch", "budget_usd", "egress", "allow_hosts", "meta", "format_version")  # fmt: skip

    @classmethod
    def from_json(cls, data: Any) -> Task:
        data = _require_object(data, "task")
        task_id = validate_task_id(_field(data, "id", str, "task", required=True), "field 'id'")
        what = f"task {task_id}"
        check_fields(data, cls.KNOWN, what)
        prompt = check_prompt(data.get("prompt"), f"{what}: field 'prompt'")
        timeout = _field(data, "timeout", int, what)
        if timeout is not None and timeout <= 0:
            raise InvalidInput(f"{what}: field 'timeout' must be a positive number of seconds")
        max_turns = _field(data, "max_turns", int, what)
        if max_turns is not None and max_turns <= 0:
            raise InvalidInput(f"{what}: field 'max_turns' must be a positive number")
        worker = _field(data, "worker", str, what) or None
        if worker is not None and not config.WORKER_TYPE_PATTERN.fullmatch(worker):
            raise InvalidInput(f"{what}: field 'worker' is {worker!r}; use lower-case letters, digits, '.', '_' or '-'")
        depends_on = _field(data, "depends_on", list, what) or []
        for dep in depends_on:
            validate_task_id(dep, f"{what}: field 'depends_on' has")
        if task_id in depends_on:
            raise InvalidInput(f"{what}: field 'depends_on' names the task itself")
        try:
            memory = limits.check_memory(data["memory"]) if data.get("memory") is not None else None
            cpus = limits.check_cpus(data["cpus"]) if data.get("cpus") is not None else None
            pids_limit = limits.check_pids(data["pids_limit"]) if data.get("pids_limit") is not None else None
            disk = limits.check_disk(data["disk"]) if data.get("disk") is not None else None
        except InvalidInput as exc:
            raise InvalidInput(f"{what}: {exc}") from None
        return cls(
            id=task_id,
            prompt=prompt,
            model=_field(data, "model", str, what) or None,
            timeout=timeout,
            worker=worker,
            depends_on=tuple(dict.fromkeys(depends_on)),
            max_turns=max_turns,
            memory=memory,
            cpus=cpus,
            pids_limit=pids_limit,
            disk=disk,
            batch=_batch_id(data, what),
            budget_usd=check_budget(data.get("budget_usd"), f"{what}: field 'budget_usd'"),
            egress=check_policy(data.get("egress"), f"{what}: field 'egress'"),
            allow_hosts=check_hosts(_field(data, "allow_hosts", list, what) or (), f"{what}: field 'allow_hosts'"),
            meta=_field(data, "meta", dict, what),
        )

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id, "prompt": self.prompt}
        if self.model:
            data["model"] = self.model
        if self.timeout is not None:
            data["timeout"] = self.timeout
        if self.worker:
            data["worker"] = self.worker
        if self.depends_on:
            data["depends_on"] = list(self.depends_on)
        if self.max_turns is not None:
            data["max_turns"] = self.max_turns
        for name in ("memory", "cpus", "pids_limit", "disk", "batch", "budget_usd", "egress", "meta"):
            if getattr(self, name) is not None:
                data[name] = getattr(self, name)
        if self.allow_hosts:
            data["allow_hosts"] = list(self.allow_hosts)
        return data


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
    attempt: int | None = None  # 1 for the first run, 2 after one orch retry, ...
    worker_exit_code: int | None = None  # the container's, when the worker died without writing a result
    # What came back to the repository (none of it when the clone never happened).
    branch: str | None = None  # the task's branch, when it has commits
    base_commit: str | None = None  # where the branch was cut from REPO_BRANCH
    head_commit: str | None = None
    commits: int | None = None  # commits on the branch since base_commit
    files_changed: tuple[Mapping[str, Any], ...] = ()  # {"path", "added", "deleted"}; counts null for binary files
    pushed: bool | None = None  # the branch is on origin
    bundle: str | None = None  # when the push failed: the commits, saved on the volume
    # When the work could not be committed at all: the agent's clone as a tar archive on the volume.
    archive: str | None = None
    # The dependencies' work the branch started from ({"task_id", "branch", "commit"}); empty: REPO_BRANCH.
    started_from: tuple[Mapping[str, Any], ...] = ()
    # What the relay measured of its API use (tokens, requests, rate limits met, and ``cost_usd``,
    # priced from the API's own usage figures); ``cost_usd`` above is the agent's own claim.
    usage: Mapping[str, Any] | None = None
    rehearsal: bool = False  # true: a scripted model did the work, on a rehearsal's own origin (run.py --rehearsal)

    @property
    def succeeded(self) -> bool:
        return self.status is State.SUCCESS

    @classmethod
    def from_json(cls, data: Any) -> TaskResult:
        data = _require_object(data, "result")
        task_id = validate_task_id(data.get("task_id"), "field 'task_id'")
        what = f"result of {task_id}"
        number = (int, float)
        return cls(
            task_id=task_id,
            status=_state(data, "status", what, SETTLED_STATES),
            output=_field(data, "output", str, what, required=True),
            completed_at=_field(data, "completed_at", str, what, required=True),
            started_at=_field(data, "started_at", str, what),
            duration_seconds=_field(data, "duration_seconds", number, what),
            exit_code=_field(data, "exit_code", int, what),
            cost_usd=_field(data, "cost_usd", number, what),
            num_turns=_field(data, "num_turns", int, what),
            session_id=_field(data, "session_id", str, what),
            model=_field(data, "model", str, what),
            error=_field(data, "error", str, what),
            attempt=_field(data, "attempt", int, what),
            worker_exit_code=_field(data, "worker_exit_code", int, what),
            branch=_field(data, "branch", str, what),
            base_commit=_field(data, "base_commit", str, what),
            head_commit=_field(data, "head_commit", str, what),
            commits=_field(data, "commits", int, what),
            files_changed=tuple(_file_changes(data, what)),
            pushed=_field(data, "pushed", bool, what),
            bundle=_field(data, "bundle", str, what),
            archive=_field(data, "archive", str, what),
            started_from=tuple(_field(data, "started_from", list, what) or ()),
            usage=_field(data, "usage", dict, what),
            rehearsal=_field(data, "rehearsal", bool, what) or False,
        )

    def to_json(self) -> dict[str, Any]:
        data = _document(self)
        data["files_changed"] = [dict(change) for change in self.files_changed]
        data["started_from"] = [dict(point) for point in self.started_from]
        return data


def _file_changes(data: Mapping[str, Any], what: str) -> list[Mapping[str, Any]]:
    changes = _field(data, "files_changed", list, what) or []
    for change in changes:
        if not isinstance(change, Mapping) or not isinstance(change.get("path"), str):
            raise InvalidInput(f"{what}: field 'files_changed' holds an entry without a 'path'")
    return changes


@dataclass(frozen=True)
class TaskStatus:
    """``status/ID.json``: the latest known state of a task, rewritten at each step."""

    task_id: str
    state: State
    updated_at: str
    worker_type: str | None = None
    container: str | None = None
    message: str | None = None
    attempt: int | None = None
    started_at: str | None = None  # when the worker started running the current attempt
    stop_reason: str | None = None  # "cancelled" or "timeout" once orch has asked the worker to stop
    deadline: str | None = None  # when the agent's timeout runs out (set as the agent starts)
    batch: str | None = None  # the batch it belongs to (its task file's, or the current one when first recorded)

    @classmethod
    def from_json(cls, data: Any) -> TaskStatus:
        data = _require_object(data, "status")
        task_id = validate_task_id(data.get("task_id"), "field 'task_id'")
        what = f"status of {task_id}"
        return cls(
            task_id=task_id,
            state=_state(data, "state", what),
            updated_at=_field(data, "updated_at", str, what, required=True),
            worker_type=_field(data, "worker_type", str, what),
            container=_field(data, "container", str, what),
            message=_field(data, "message", str, what),
            attempt=_field(data, "attempt", int, what),
            started_at=_field(data, "started_at", str, what),
            stop_reason=_field(data, "stop_reason", str, what),
            deadline=_field(data, "deadline", str, what),
            batch=_field(data, "batch", str, what),
        )

    def to_json(self) -> dict[str, Any]:
        return _document(self)


@dataclass(frozen=True)
class BatchSettings:
    """``dispatcher.json``: what ``orch start`` set for the batch. On the volume, so that it
    reaches a dispatcher that is running already, and a new manager keeps it."""

    max_workers: int | None = None
    memory: str | None = None
    cpus: str | None = None
    pids_limit: int | None = None
    resume_interrupted: int | None = None  # how often an interrupted task is run again by itself
    disk: str | None = None
    budget_usd: float | None = None  # what the batch's agents may spend together (the relay's figure)
    egress: str | None = None  # the batch's egress policy by name (egress_choice.py); None: run.py's
    allow_hosts: tuple[str, ...] | None = None

    @classmethod
    def from_json(cls, data: Any) -> BatchSettings:
        data = _require_object(data, "dispatcher.json")
        max_workers = _field(data, "max_workers", int, "dispatcher.json")
        if max_workers is not None and max_workers <= 0:
            raise InvalidInput("dispatcher.json: field 'max_workers' must be a positive number")
        resume = _field(data, "resume_interrupted", int, "dispatcher.json")
        if resume is not None and resume < 0:
            raise InvalidInput("dispatcher.json: field 'resume_interrupted' must be 0 or more")
        memory, cpus, pids, disk = data.get("memory"), data.get("cpus"), data.get("pids_limit"), data.get("disk")
        return cls(
            max_workers=max_workers,
            memory=limits.check_memory(memory) if memory is not None else None,
            cpus=limits.check_cpus(cpus) if cpus is not None else None,
            pids_limit=limits.check_pids(pids) if pids is not None else None,
            resume_interrupted=resume,
            disk=limits.check_disk(disk) if disk is not None else None,
            budget_usd=check_budget(data.get("budget_usd"), "dispatcher.json: field 'budget_usd'"),
            egress=check_policy(data.get("egress"), "dispatcher.json: field 'egress'"),
            allow_hosts=check_hosts(
                _field(data, "allow_hosts", list, "dispatcher.json") or (), "dispatcher.json: field 'allow_hosts'"
            )
            or None,
        )

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        return {name: list(value) if isinstance(value, tuple) else value for name, value in data.items()}

    def resume_limit(self, default: int) -> int:
        """How often an interrupted task is queued again by itself: this batch's setting, else
        ``default`` ($ORCHESTRATOR_RESUME_INTERRUPTED, else once)."""
        return self.resume_interrupted if self.resume_interrupted is not None else default


@dataclass(frozen=True)
class Batch:
    """``batches/ID.json``: a batch of tasks, the ones of one request (orch batch new "...")."""

    id: str
    title: str
    created_at: str

    @classmethod
    def from_json(cls, data: Any) -> Batch:
        data = _require_object(data, "batch")
        batch_id = validate_batch_id(data.get("id"), "field 'id'")
        what = f"batch {batch_id}"
        return cls(
            id=batch_id,
            title=_field(data, "title", str, what, required=True),
            created_at=_field(data, "created_at", str, what, required=True),
        )

    def to_json(self) -> dict[str, Any]:
        return _document(self)
