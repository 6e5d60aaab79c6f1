"""The dispatcher: starts queued tasks as worker slots free up, until no work is left.

It runs in the background of the manager container (``orch dispatch``), one per volume:
it holds ``.dispatcher.lock`` on the volume for as long as it lives. ``orch start``,
``orch wait``, ``orch status`` and the manager's entrypoint start one when tasks are
queued or running and none holds the lock, so a new manager on the same volume picks up
where a stopped one left off. It exits when nothing is queued, starting or running.

It sleeps between rounds: ``docker events`` wakes it when a worker starts or dies, and
a round every few seconds catches tasks queued meanwhile. Workers are started in threads of
their own, as many at once as there are free slots: a start is mostly waiting on docker.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

from . import config, spending
from .batch import needs_dispatcher, resumable, resume
from .context import Context
from .dependencies import blocking_reasons, unstarted_dependencies
from .docker import (
    DockerError,
)
from .engine_events import EngineLook
from .errors import UserError
from .git import CLONE_TIMEOUT
from .limits import WorkerLimits
from .reconcile import reconcile, record_outcome
from .secrets import env_secrets, scrubber
from .settled import ViewCache
from .store import OrchestrationDir
from .tasks import ACTIVE_STATES, State, Task, parse_time, utc_now
from .views import TaskView, load_view
from .workerspec import WorkerExists, worker_spec

ROUND_SECONDS = 2.0  # between rounds when no engine event comes
# Threads that start workers; how many start at once is the number of free slots, up to this.
MAX_PARALLEL_STARTS = 64
# A worker stops its own agent at the task's timeout; orch steps in only when the worker
# itself is stuck: after this grace it is told to stop, then stopped, with time to push.
TIMEOUT_GRACE_SECONDS = 120
STOP_AFTER_SECONDS = 120
STOP_GRACE_SECONDS = 60  # what a stopped worker gets to commit, push and write its result

# --- Settings: the worker limit and the batch's resource limits live on the volume
# (BatchSettings), so that `orch start` reaches a dispatcher that is already running, and a
# new manager keeps them.


def max_workers(ctx: Context) -> int:
    return ctx.orch.load_settings().max_workers or ctx.settings.max_workers


def worker_limits(ctx: Context, task: Task | None) -> WorkerLimits:
    """The task's own limits, else the batch's, else the manager's defaults."""
    batch = ctx.orch.load_settings()
    limits = ctx.settings.worker_limits.over(batch.memory, batch.cpus, batch.pids_limit, batch.disk)
    return limits if task is None else limits.over(task.memory, task.cpus, task.pids_limit, task.disk)


# --- One dispatcher at a time.


def _try_lock(orch: OrchestrationDir) -> IO[bytes] | None:
    handle = orch.open_lock(orch.dispatcher_lock_path)  # held for the dispatcher's life
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def dispatcher_running(orch: OrchestrationDir) -> bool:
    handle = _try_lock(orch)
    if handle is None:
        return True
    handle.close()
    return False


def ensure_dispatcher(ctx: Context) -> bool:
    """Start a dispatcher in the background unless one runs; True when one was started."""
    orch = ctx.orch
    if dispatcher_running(orch):
        return False
    package_parent = str(Path(__file__).resolve().parent.parent)
    env = ctx.child_env()
    child_env = {**env, "PYTHONPATH": os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH", "")) if p)}
    with open(orch.dispatcher_log_path, "ab") as log:
        # Its own session: it outlives the orch command that started it, and Ctrl-C there.
        subprocess.Popen(
            [sys.executable, "-P", "-m", "orchestrator.orch", "dispatch"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env,
            cwd=str(orch.root),
            start_new_session=True,
        )
    return True


# --- The loop.

Spawner = Callable[[TaskView], None]


class Dispatcher:
    def __init__(self, ctx: Context, spawner: Spawner | None = None, out: IO[str] | None = None):
        self.ctx = ctx
        self.orch = ctx.orch
        self.scrub = scrubber(env_secrets(ctx.env))
        self.engine = ctx.engine
        self.spawner = spawner or self.spawn_worker
        self.out = out or sys.stdout
        self.waiting_messages: dict[str, str] = {}
        self.cache = ViewCache(ctx.orch)
        self.starting: set[str] = set()  # tasks whose worker a thread of this dispatcher is starting
        self.wake: Callable[[], None] = lambda: None  # ends the loop's sleep (a slot came free)
        self._say_lock = threading.Lock()

    def say(self, message: str) -> None:
        stamp = utc_now()
        with self._say_lock:  # starts report from threads of their own
            self.out.write(f"{stamp} dispatcher[{os.getpid()}]: {self.scrub(message)}\n")
            self.out.flush()

    def run(self) -> int:
        lock = _try_lock(self.orch)
        if lock is None:
            self.say("another dispatcher is running on this volume; leaving the work to it")
            return 0
        self.say(f"started (up to {max_workers(self.ctx)} workers)")
        under_way: dict[str, Future[None]] = {}
        pool = ThreadPoolExecutor(MAX_PARALLEL_STARTS, thread_name_prefix="start")
        try:
            with self.engine.events() as events:
                self.wake = events.wake
                while True:
                    under_way = {task_id: f for task_id, f in under_way.items() if not f.done()}
                    self.starting = set(under_way)
                    try:
                        to_start = self.round(events.look(), lock)
                    except (UserError, OSError) as exc:
                        # The engine restarting, a slow inspect: the queue must not die of it.
                        self.say(f"this round failed, trying again: {exc}")
                        events.ask_again()
                        events.wait(ROUND_SECONDS * 5)
                        continue
                    if to_start is None:
                        lock = None  # released by round(), under the state lock
                        self.say("no task is queued (that can run) or running; exiting")
                        return 0
                    for view in to_start:
                        under_way[view.id] = pool.submit(self.start, view)
                    events.wait(ROUND_SECONDS)
        finally:
            # Starts under way finish: each leaves its task and its container in step.
            pool.shutdown(wait=True)
            if lock is not None:
                lock.close()

    def round(self, look: EngineLook, lock: IO[bytes]) -> list[TaskView] | None:
        """One look at the batch; returns the tasks to start now (marked starting), or None when
        all is done. ``look``: the workers to ask the engine about."""
        with self.orch.locked():
            settings = self.orch.load_settings()  # once a round: orch start may change them
            resume_limit = settings.resume_limit(self.ctx.settings.resume_interrupted)
            views = self.cache.views()
            if look:
                # Not the workers this dispatcher is starting: their containers may not exist yet.
                skip = {config.container_name(task_id) for task_id in self.starting}
                only: Collection[str] | None = look.only
                if skip:
                    only = {name for name in (only or {v.container for v in views}) if name not in skip}
                views = reconcile(self.orch, views, self.engine, starting_grace=0, only=only)
            views = self.resume_interrupted(views, resume_limit)
            views = self.block_dependents(views)
            self.enforce_timeouts(views)
            active = [v for v in views if v.state in ACTIVE_STATES]
            queued = [v for v in views if v.state is State.QUEUED]
            if not needs_dispatcher(views, resume_limit):
                # Released before the state lock: an `orch start` that queues after this
                # finds no dispatcher and starts a new one.
                lock.close()
                return None
            by_id = {v.id: v for v in views}
            ready = [v for v in queued if self.ready(v, by_id)]
            spent = spending.spent_line(spending.load(self.orch), self.orch, self.ctx.env) if ready else None
            if spent:
                # No new task starts once a budget above them is spent: they end, saying why.
                for view in ready:
                    self.say(f"not starting {view.id}: {spent}")
                    why = f"not started: {spent} (raise it: orch start --budget-usd N; then orch retry)"
                    record_outcome(self.orch, view, State.BUDGET_EXCEEDED, why)
                self.wake()
                return []
            # Starting counts as active: a slot is taken from the moment its task is marked.
            slots = max(0, (settings.max_workers or self.ctx.settings.max_workers) - len(active))
            to_start = ready[:slots]
            for view in to_start:
                self.orch.update_status(view.id, State.STARTING, message="its worker is being started")
            return [load_view(self.orch, view.id) for view in to_start]

    def resume_interrupted(self, views: list[TaskView], limit: int) -> list[TaskView]:
        """Tasks whose workers were stopped from outside go back to the queue, as often as the
        batch allows (``limit``: once by default), before their dependents are judged."""
        resumed = {}
        for view in views:
            if resumable(view, limit):
                resumed[view.id] = resume(self.orch, self.engine, view)
                self.say(f"{view.id} was interrupted; {resumed[view.id].message}")
        return [resumed.get(v.id, v) for v in views]

    def ready(self, view: TaskView, by_id: Mapping[str, TaskView]) -> bool:
        pending = [dep for dep in view.depends_on if by_id[dep].state is not State.SUCCESS]
        if not pending:
            return True
        message = "waiting for " + ", ".join(pending)
        unstarted = unstarted_dependencies(view, by_id)
        if unstarted:
            message += f" (never started: {', '.join(unstarted)}; `orch start` them)"
        if self.waiting_messages.get(view.id) != message:
            self.waiting_messages[view.id] = message
            self.orch.update_status(view.id, State.QUEUED, message=message)
        return False

    def block_dependents(self, views: list[TaskView]) -> list[TaskView]:
        """Queued tasks that depend on a task that did not succeed will not run: blocked."""
        reasons = blocking_reasons(views)
        for task_id, reason in reasons.items():
            self.orch.update_status(task_id, State.BLOCKED, message=reason)
            self.say(f"{task_id} blocked: {reason}")
        return [load_view(self.orch, v.id) if v.id in reasons else v for v in views]

    def enforce_timeouts(self, views: list[TaskView]) -> None:
        now = datetime.now(UTC)
        for view in views:
            if view.state is not State.RUNNING or view.status is None:
                continue
            # The worker records the agent's deadline as the agent starts; before that it clones,
            # which git's own timeout bounds.
            deadline = parse_time(view.status.deadline)
            started = parse_time(view.started_at)
            if deadline is None:
                if started is None:
                    continue
                timeout = view.task.timeout if view.task and view.task.timeout else config.DEFAULT_TASK_TIMEOUT
                deadline = started + timedelta(seconds=CLONE_TIMEOUT + timeout)
            over = (now - deadline).total_seconds() - TIMEOUT_GRACE_SECONDS
            if over < 0:
                continue
            if view.status.stop_reason != "timeout":
                self.say(f"{view.id} is past its timeout; telling its worker to stop")
                self.orch.update_status(
                    view.id, State.RUNNING, message="past its timeout; being stopped", stop_reason="timeout"
                )
                self.engine.signal(view.container, "SIGUSR1")
            elif over > STOP_AFTER_SECONDS:
                self.say(f"{view.id} did not stop after its timeout; stopping its container")
                self.engine.stop(view.container, grace=STOP_GRACE_SECONDS)

    def start(self, view: TaskView) -> None:
        """Start the task's worker (in a thread of its own, from ``run``); a start that fails
        gives the task a failed result, and its slot to the next task."""

        try:
            self.spawner(view)
            self.say(f"started {view.container} for {view.id} (attempt {view.attempt})")
        except WorkerExists as exc:
            if exc.status not in ("running", "created"):
                self.fail_to_start(view, exc)
            else:
                # Someone started it by hand (spawn-worker) meanwhile: that worker's result will count.
                self.say(f"{view.id} has a worker already, not started by the dispatcher: {exc}")
        except UserError as exc:
            self.fail_to_start(view, exc)
        except Exception as exc:  # noqa: BLE001 (a bug must not leave the task starting for ever)
            self.say(f"internal error starting {view.id}:\n" + "".join(traceback.format_exception(exc)))
            self.fail_to_start(view, UserError(f"internal error: {type(exc).__name__}: {exc}"))

    def fail_to_start(self, view: TaskView, exc: UserError) -> None:
        # The whole docker command is for this log; the task's note is the daemon's own line.
        self.say(f"could not start a worker for {view.id}: {exc}")
        reason = exc.reason if isinstance(exc, DockerError) else str(exc)
        with self.orch.locked():
            record_outcome(
                self.orch, load_view(self.orch, view.id), State.FAILED, f"its worker could not be started: {reason}"
            )
        self.wake()

    def spawn_worker(self, view: TaskView) -> None:
        from .spawn import spawn  # in the dispatcher only; orch's commands start faster

        settings = self.ctx.settings
        spec = worker_spec(
            view.worker_type,
            view.id,
            env=self.ctx.env,
            repo=settings.repo_url,
            branch=settings.branch,
            model=settings.model,
            api_url=settings.api_url,
            volume=settings.volume,
            network=settings.network,
            image_prefix=settings.image_prefix,
            limits=worker_limits(self.ctx, view.task),
            attempt=view.attempt,
            engine=settings.engine,
            storage_quota=settings.storage_quota,
        )
        spawn(spec, str(self.orch.root), self.engine)
