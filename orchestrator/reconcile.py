"""A task's recorded state checked against the engine's.

A task's state comes from three places, in this order of authority:

1. ``results/ID.json``: once written, the attempt is over and this says how it ended.
2. The worker container: a worker that exited without writing a result died (killed,
   out of memory, crashed), whatever its status file still says.
3. ``status/ID.json``: everything else (submitted, queued, blocked, starting, running).

``reconcile`` applies rule 2 and writes down what it finds, so that the next reader (a new
manager, a person with ``cat``) sees the same truth. Call it under the volume's state lock.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import Any

from .engine import Engine
from .store import AlreadyExists, OrchestrationDir
from .tasks import (
    ACTIVE_STATES,
    State,
    TaskResult,
    parse_time,
    utc_now,
)
from .views import TaskView, load_view, round_seconds

# A worker that spawn has not created or started after this long never will be: its
# spawner died (a manager stopped mid-spawn). The task goes back to the queue.
STARTING_GRACE_SECONDS = 120


# A created container is started a moment later by whoever created it; one still not started
# after this long (given to the dispatcher, which knows no spawn of its own is under way) was
# left by a spawner that died.
CREATED_GRACE_SECONDS = 30


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
        duration_seconds=round_seconds(view.duration(now)),
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
