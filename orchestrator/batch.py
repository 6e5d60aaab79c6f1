"""The batch's commands and their rules: submit, queue, cancel, retry, resume an interrupted
task, clean up, and whether a dispatcher has work. Every change goes through the volume's state
lock; a task's true state is reconcile.py's, its view views.py's.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import config, limits
from .batches import current_or_new, next_task_id
from .dependencies import unstarted_dependencies
from .egress_choice import check_hosts, check_policy
from .engine import Engine
from .errors import InvalidInput, UserError
from .reconcile import reconcile, record_outcome
from .settled import ViewCache, forget_settled
from .store import AlreadyExists, OrchestrationDir, read_json, write_json_once
from .tasks import (
    ACTIVE_STATES,
    FINISHED_STATES,
    SETTLED_STATES,
    Batch,
    State,
    Task,
    TaskResult,
    check_budget,
    check_prompt,
    validate_task_id,
)
from .views import TaskView, check_known, load_view, load_views

GENERATED_ID = re.compile(r"task-(\d+)")

log = logging.getLogger("orchestrator.batch")


# --- Dependencies.


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


def resumable(view: TaskView, limit: int) -> bool:
    return view.state is State.INTERRUPTED and view.result is not None and view.resumed < limit


def resume(orch: OrchestrationDir, engine: Engine, view: TaskView) -> TaskView:
    """Queue an interrupted task again, as orch retry would: the new attempt starts from what the
    interrupted one handed back (its pushed branch or its bundle); a container that holds the
    only copy of its work is kept under another name. Call it under the state lock."""
    result = view.result
    assert result is not None
    forget_settled(orch, [view.id])

    def message(number: int, kept: str, renamed: bool) -> str:
        if result.pushed and result.branch:
            saved = f"it starts from {result.branch}, which attempt {number} pushed"
        elif result.bundle:
            saved = f"it starts from the bundle attempt {number} saved"
        elif renamed and not work_is_safe(result):
            saved = f"attempt {number}'s work, if any, is in the container {kept}"
        else:
            saved = f"attempt {number} had handed nothing back"
        return f"resumed after attempt {number} was interrupted; {saved}"

    new_attempt(orch, engine, view, message)
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
    budget_usd: float | None = None,
    memory: str | None = None,
    cpus: str | None = None,
    pids_limit: str | None = None,
    disk: str | None = None,
    batch: Batch | None = None,
    egress: str | None = None,
    allow_hosts: Sequence[str] = (),
) -> Task:
    """Write a new task (never over an existing one) into ``batch`` (default: the current one, or a
    new one named after the prompt) and mark it submitted."""
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
    if batch is None:
        batch, _ = current_or_new(orch, prompt)
    task = Task(
        id=task_id or next_task_id(orch, batch),
        prompt=prompt,
        model=model,
        timeout=timeout,
        worker=worker,
        depends_on=tuple(deps),
        max_turns=max_turns,
        budget_usd=check_budget(budget_usd, "--budget-usd"),
        egress=check_policy(egress, "--egress"),
        allow_hosts=check_hosts(allow_hosts, "--allow-host"),
        memory=limits.check_memory(memory) if memory else None,
        cpus=limits.check_cpus(cpus) if cpus else None,
        pids_limit=limits.check_pids(pids_limit) if pids_limit else None,
        disk=limits.check_disk(disk) if disk else None,
        batch=batch.id,
    )
    if task.id in deps:
        raise InvalidInput("--depends-on names the task itself")
    try:
        write_json_once(orch.task_path(task.id), task.to_json())
    except AlreadyExists:
        raise InvalidInput(f"task {task.id} exists already; pick another --id") from None
    orch.update_status(task.id, State.SUBMITTED, worker_type=worker, attempt=1, batch=batch.id)
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
            number, kept, renamed = new_attempt(orch, engine, view, lambda n, _kept, _renamed: f"attempt {n + 1}")
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


def new_attempt(
    orch: OrchestrationDir, engine: Engine, view: TaskView, message: Callable[[int, str, bool], str]
) -> tuple[int, str, bool]:
    """Queue a new attempt of a task that ended: the finished attempt N's container is kept as
    worker-ID-attempt-N and its files under attempts/ID/; the status says attempt N+1, queued,
    with ``message(N, the container's new name, whether there was one)``. Returns those three.

    Each step leaves what the next round can finish. The container first: an engine that cannot
    answer (it is restarting) fails this before anything changed. The status next: until the
    result moves, the task still reads as ended (views take the result first), so one cut short
    here is queued again whole. The files last. (Files moved first, an engine failing after
    them left a task with neither its result nor a new attempt, which no round took up again.)"""
    number = attempt_number(orch, view)
    kept = f"{view.container}-attempt-{number}"
    renamed = engine.rename(view.container, kept)
    orch.update_status(view.id, State.QUEUED, attempt=number + 1, message=message(number, kept, renamed))
    archive_attempt(orch, view, number)
    return number, kept, renamed


def _attempt_moves(orch: OrchestrationDir, task_id: str, number: int) -> list[tuple[Path, Path]]:
    return [
        (orch.result_path(task_id), orch.attempt_path(task_id, number, "json")),
        (orch.log_path(task_id), orch.attempt_path(task_id, number, "jsonl")),
        (orch.worker_log_path(task_id), orch.attempt_path(task_id, number, "log")),
    ]


def attempt_number(orch: OrchestrationDir, view: TaskView) -> int:
    """The number the finished attempt is kept under: its own, unless that is taken already
    (files edited by hand, a damaged status): then the next free one, so that nothing kept is
    replaced and the retry still goes ahead."""
    number = view.attempt
    while any(source.exists() and target.exists() for source, target in _attempt_moves(orch, view.id, number)):
        number += 1
    return number


def archive_attempt(orch: OrchestrationDir, view: TaskView, number: int | None = None) -> int:
    """Move the finished attempt's result, transcript and log under attempts/ID/; returns its number."""
    number = attempt_number(orch, view) if number is None else number
    orch.attempt_dir(view.id).mkdir(parents=True, exist_ok=True)
    # The result moves last: until then the attempt still counts as finished, and a retry
    # cut short is simply run again.
    for source, target in reversed(_attempt_moves(orch, view.id, number)):
        if source.exists():
            os.replace(source, target)
    return number
