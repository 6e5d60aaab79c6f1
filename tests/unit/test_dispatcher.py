"""The dispatcher's rules without an engine: the limit, dependencies and blocking, timeouts,
starts that fail or were left unfinished, its log. A fake engine stands in for Docker;
tests/e2e/test_orch.py runs the same code on the real one."""

from __future__ import annotations

import io
import json
from typing import IO

import pytest

from orchestrator import batch
from orchestrator.dispatcher import Dispatcher, _try_lock
from orchestrator.engine_events import EVERYTHING, EngineLook
from orchestrator.errors import UserError
from orchestrator.reconcile import reconcile
from orchestrator.store import OrchestrationDir
from orchestrator.tasks import BatchSettings, State, utc_now
from orchestrator.views import TaskView, load_view, load_views
from tests.support.batch_helpers import FakeEngine, context, finish, queue_all, state, submit
from tests.support.waiting import wait_until


def dispatcher(orch: OrchestrationDir, engine: FakeEngine, started: list[str], limit: int = 2) -> Dispatcher:
    orch.write_settings(BatchSettings(max_workers=limit))

    def spawner(view: TaskView) -> None:
        started.append(view.id)
        engine.state[view.container] = {"Status": "running", "Running": True}
        orch.update_status(view.id, State.RUNNING, started_at=utc_now())

    return Dispatcher(context(orch, engine), spawner=spawner, out=io.StringIO())


def output(d: Dispatcher) -> str:
    assert isinstance(d.out, io.StringIO)
    return d.out.getvalue()


def one_round(d: Dispatcher) -> list[TaskView] | None:
    lock = _try_lock(d.orch)
    assert lock is not None
    try:
        to_start = d.round(EVERYTHING, lock)
        for view in to_start or []:
            d.start(view)
        return to_start
    finally:
        lock.close()


def test_the_dispatcher_keeps_to_the_limit_and_starts_the_next_as_one_finishes(orch):
    ids = [submit(orch) for _ in range(5)]
    queue_all(orch)
    engine, started = FakeEngine(), list[str]()
    d = dispatcher(orch, engine, started, limit=2)
    one_round(d)
    assert started == ids[:2]
    one_round(d)
    assert started == ids[:2]  # no free slot
    finish(orch, ids[0], State.SUCCESS)
    one_round(d)
    assert started == ids[:3]
    assert [state(orch, t) for t in ids[3:]] == [State.QUEUED, State.QUEUED]


def test_a_dependency_chain_waits_and_a_failure_blocks_it_link_by_link(orch):
    a = submit(orch)
    b = submit(orch, depends_on=[a])
    c = submit(orch, depends_on=[b])
    queue_all(orch)
    engine, started = FakeEngine(), list[str]()
    d = dispatcher(orch, engine, started, limit=4)
    one_round(d)
    assert started == [a]
    assert load_view(orch, b).message == f"waiting for {a}"
    finish(orch, a, State.FAILED)
    assert one_round(d) is None  # nothing left to run: the dispatcher would exit
    assert (state(orch, b), load_view(orch, b).message) == (State.BLOCKED, f"{a} ended failed")
    assert (state(orch, c), load_view(orch, c).message) == (State.BLOCKED, f"{b} is blocked")
    assert started == [a]


def test_a_spawn_that_fails_gives_a_failed_result_with_the_reason(orch):
    task = submit(orch)
    queue_all(orch)

    def spawner(view: TaskView) -> None:
        raise UserError("image claude-flutter not found")

    Dispatcher(context(orch, FakeEngine()), spawner=spawner, out=io.StringIO()).start(load_view(orch, task))
    result = orch.load_result(task)
    assert result.status is State.FAILED and "image claude-flutter not found" in result.error


def test_a_worker_stuck_past_its_timeout_is_told_then_made_to_stop(orch):
    task = submit(orch, timeout=10)
    queue_all(orch)
    engine = FakeEngine()
    orch.update_status(task, State.RUNNING, started_at="2000-01-01T00:00:00Z")
    engine.state[f"worker-{task}"] = {"Status": "running", "Running": True}
    d = Dispatcher(context(orch, engine), spawner=lambda v: None, out=io.StringIO())
    one_round(d)
    assert engine.signals == [(f"worker-{task}", "SIGUSR1")] and engine.stopped == []
    one_round(d)
    assert engine.stopped == [f"worker-{task}"]
    # It dies without a result: the result says timeout, as orch asked.
    engine.state[f"worker-{task}"] = {"Status": "exited", "ExitCode": 143}
    with orch.locked():
        reconcile(orch, load_views(orch), engine)
    assert orch.load_result(task).status is State.TIMEOUT


@pytest.mark.parametrize(("status", "recorded"), [("running", False), ("created", False), ("exited", True)])
def test_a_worker_started_by_hand_meanwhile_is_not_failed(orch, status, recorded):
    from orchestrator.workerspec import WorkerExists

    task = submit(orch)
    queue_all(orch)

    def spawner(view: TaskView) -> None:
        raise WorkerExists("worker exists", status)

    Dispatcher(context(orch, FakeEngine()), spawner=spawner, out=io.StringIO()).start(load_view(orch, task))
    assert (orch.load_result(task) is not None) is recorded


def test_a_chain_that_waits_on_a_task_nobody_started_does_not_keep_anything_waiting(orch, capsys):
    from orchestrator.orch import main

    c = submit(orch)
    b = submit(orch, depends_on=[c])
    a = submit(orch, depends_on=[b])
    with orch.locked():
        batch.queue(orch, [load_view(orch, b), load_view(orch, a)])
    views = load_views(orch)
    assert not batch.needs_dispatcher(views)  # a dispatcher would have nothing to do
    assert one_round(dispatcher(orch, FakeEngine(), [])) is None
    assert main(["wait", a, "--orchestration-dir", str(orch.root)]) == 1
    assert f"waits for {c}, never started" in capsys.readouterr().err


def test_a_dependency_cycle_in_hand_written_files_blocks_its_tasks(orch):
    for task_id, dep in (("x", "y"), ("y", "x")):
        orch.task_path(task_id).write_text(json.dumps({"id": task_id, "prompt": "p", "depends_on": [dep]}))
        orch.update_status(task_id, State.QUEUED)
    assert one_round(dispatcher(orch, FakeEngine(), [])) is None
    assert state(orch, "x") is State.BLOCKED and "circle: x -> y -> x" in str(load_view(orch, "x").message)


def test_the_backstop_follows_the_deadline_the_worker_recorded(orch):
    task = submit(orch, timeout=10)
    engine = FakeEngine()
    engine.state[f"worker-{task}"] = {"Status": "running", "Running": True}
    d = Dispatcher(context(orch, engine), spawner=lambda v: None, out=io.StringIO())
    # Started long ago (a long clone, or spawn-worker --timeout), but its agent's deadline is ahead.
    orch.update_status(task, State.RUNNING, started_at="2000-01-01T00:00:00Z", deadline="2999-01-01T00:00:00Z")
    one_round(d)
    assert engine.signals == []
    orch.update_status(task, State.RUNNING, deadline="2001-01-01T00:00:00Z")
    one_round(d)
    assert engine.signals == [(f"worker-{task}", "SIGUSR1")]


def test_a_round_that_fails_does_not_end_the_dispatcher(orch, monkeypatch):
    from orchestrator import dispatcher as dispatcher_module
    from orchestrator.docker import DockerError

    monkeypatch.setattr(dispatcher_module, "ROUND_SECONDS", 0.01)
    task = submit(orch)
    orch.update_status(task, State.RUNNING, started_at=utc_now())

    class FlakyEngine(FakeEngine):
        calls = 0

        def containers(self, names):
            self.calls += 1
            if self.calls == 1:
                raise DockerError(["docker", "inspect"], 1, "Cannot connect to the Docker daemon")
            finish(orch, task, State.SUCCESS)  # the worker ends meanwhile
            return super().containers(names)

    engine = FlakyEngine()
    engine.state[f"worker-{task}"] = {"Status": "running", "Running": True}
    out = io.StringIO()
    assert Dispatcher(context(orch, engine), spawner=lambda v: None, out=out).run() == 0
    assert "this round failed, trying again: " in out.getvalue() and engine.calls == 2
    assert "exiting" in out.getvalue()


def test_the_dispatcher_requeues_at_once_a_start_its_predecessor_did_not_finish(orch):
    task = submit(orch)
    orch.update_status(task, State.STARTING)  # a dispatcher died between marking it and creating its worker
    with orch.locked():
        (view,) = reconcile(orch, load_views(orch), FakeEngine())
    assert view.state is State.STARTING  # anyone else waits: it may be a spawn under way
    started: list[str] = []
    one_round(dispatcher(orch, FakeEngine(), started))
    assert started == [task]


def test_the_dispatcher_log_hides_every_secret_of_its_environment(orch):
    env = {"CLAUDE_CODE_OAUTH_TOKEN": "sk-ant-oat01-secretvalue", "GIT_TOKEN": "ghp_secretgittoken"}
    out = io.StringIO()
    Dispatcher(context(orch, FakeEngine(), env), out=out).say(
        "push failed for ghp_secretgittoken, sk-ant-oat01-secretvalue"
    )
    assert "secret" not in out.getvalue() and out.getvalue().count("[REDACTED]") == 2


def test_a_task_s_limits_come_before_the_batch_s_and_the_manager_s(orch: OrchestrationDir):
    from orchestrator.dispatcher import worker_limits

    own = submit(orch, memory="8g", pids_limit="300")
    plain = submit(orch)
    env = {"ORCHESTRATOR_WORKER_CPUS": "3"}
    orch.write_settings(BatchSettings(max_workers=2, memory="2g"))
    limits = {
        task_id: worker_limits(context(orch, FakeEngine(), env), orch.load_task(task_id)) for task_id in (own, plain)
    }
    assert (limits[own].memory, limits[own].cpus, limits[own].pids) == ("8g", "3", 300)
    assert (limits[plain].memory, limits[plain].cpus, limits[plain].pids) == ("2g", "3", 1024)
    assert json.loads(orch.task_path(own).read_text())["memory"] == "8g"


def stopped_from_outside(orch: OrchestrationDir, code: int = 143) -> tuple[FakeEngine, list[str], Dispatcher, str]:
    """A task whose worker the dispatcher started, then stopped from outside (143: SIGTERM, 137:
    SIGKILL) before the next round: its engine, what was started, the dispatcher, the task."""
    engine, started = FakeEngine(), list[str]()
    d = dispatcher(orch, engine, started)
    task = submit(orch)
    queue_all(orch)
    one_round(d)
    engine.state[f"worker-{task}"] = {"Status": "exited", "ExitCode": code, "Running": False}
    return engine, started, d, task


def resumed_as_attempt_2(d: Dispatcher, orch: OrchestrationDir, task: str, started: list[str]) -> None:
    """The next round resumes it: attempt 2 runs, attempt 1's result kept under attempts/."""
    one_round(d)
    view = load_view(orch, task)
    assert view.state is State.RUNNING and view.attempt == 2 and started == [task, task]
    assert json.loads(orch.attempt_path(task, 1, "json").read_text())["status"] == "interrupted"


def test_an_interrupted_task_is_resumed_once_then_left_as_it_is(orch):
    # The engine went away under it: its worker was killed without a result.
    engine, started, d, task = stopped_from_outside(orch, 137)
    resumed_as_attempt_2(d, orch, task, started)
    assert engine.removed == [] and f"worker-{task}-attempt-1" in engine.state  # kept: it may hold the work
    assert f"{task} was interrupted; resumed after attempt 1 was interrupted" in output(d)
    engine.state[f"worker-{task}"] = {"Status": "exited", "ExitCode": 143, "Running": False}
    one_round(d)
    view = load_view(orch, task)
    assert view.state is State.INTERRUPTED and view.attempt == 2 and view.resumed == 1 and started == [task, task]


def test_an_engine_that_cannot_keep_the_old_container_leaves_the_interrupted_task_for_the_next_round(orch, monkeypatch):
    """A round that meets the engine restarting fails before it moved anything: the task keeps
    its result, and the next round resumes it (files moved first left it with neither)."""
    engine, started, d, task = stopped_from_outside(orch)
    kept = engine.rename

    def engine_away(name: str, new_name: str) -> bool:
        raise UserError("`docker rename` failed: Cannot connect to the Docker daemon")

    monkeypatch.setattr(engine, "rename", engine_away)
    with pytest.raises(UserError, match="Cannot connect"):
        one_round(d)
    view = load_view(orch, task)
    assert view.state is State.INTERRUPTED and view.result is not None and view.attempt == 1
    assert not orch.attempt_path(task, 1, "json").exists()
    monkeypatch.setattr(engine, "rename", kept)
    resumed_as_attempt_2(d, orch, task, started)


def test_a_resume_cut_short_before_its_files_moved_is_done_whole_by_the_next_round(orch, monkeypatch):
    """The status says attempt 2 is queued, the result of attempt 1 is still where it was (the
    dispatcher killed, a disk error): the task still reads as interrupted, and is resumed again."""
    _, started, d, task = stopped_from_outside(orch)
    archive = batch.archive_attempt

    def cut(*args: object, **kwargs: object) -> int:
        raise OSError("the disk went away")

    monkeypatch.setattr(batch, "archive_attempt", cut)
    with pytest.raises(OSError):
        one_round(d)
    view = load_view(orch, task)
    assert view.state is State.INTERRUPTED and view.result is not None and view.result.attempt == 1
    monkeypatch.setattr(batch, "archive_attempt", archive)
    resumed_as_attempt_2(d, orch, task, started)
    assert not orch.attempt_path(task, 2, "json").exists()


def test_resuming_can_be_turned_off_and_dependents_then_block(orch):
    engine, started = FakeEngine(), list[str]()
    d = dispatcher(orch, engine, started)
    orch.write_settings(BatchSettings(max_workers=2, resume_interrupted=0))
    first = submit(orch)
    second = submit(orch, depends_on=[first])
    queue_all(orch)
    one_round(d)
    engine.state[f"worker-{first}"] = {"Status": "exited", "ExitCode": 137, "Running": False}
    one_round(d)
    assert state(orch, first) is State.INTERRUPTED
    assert state(orch, second) is State.BLOCKED
    assert load_view(orch, second).message == f"{first} ended interrupted"


def test_starts_run_at_once_up_to_the_limit_and_each_task_starts_once(orch, monkeypatch, fake_docker):
    """The dispatcher's own loop, with starts that take their time: as many at once as there are
    slots, never more, none started twice (a start under way is not taken for one that died)."""
    import threading

    from orchestrator import dispatcher as dispatcher_module

    monkeypatch.setattr(dispatcher_module, "ROUND_SECONDS", 0.05)
    ids = [submit(orch) for _ in range(7)]
    queue_all(orch)
    orch.write_settings(BatchSettings(max_workers=3))
    engine = FakeEngine()
    lock = threading.Lock()
    release = threading.Event()
    started: list[str] = []
    at_once = {"now": 0, "most": 0}

    def slow_spawner(view: TaskView) -> None:
        with lock:
            started.append(view.id)
            at_once["now"] += 1
            at_once["most"] = max(at_once["most"], at_once["now"])
        release.wait(10)
        engine.state[view.container] = {"Status": "running", "Running": True}
        orch.update_status(view.id, State.RUNNING, started_at=utc_now())
        with lock:
            at_once["now"] -= 1

    d = Dispatcher(context(orch, engine), spawner=slow_spawner, out=io.StringIO())
    round_of_the_dispatcher = d.round
    rounds = 0

    def counted_round(look: EngineLook, held: IO[bytes]) -> list[TaskView] | None:
        nonlocal rounds
        rounds += 1
        return round_of_the_dispatcher(look, held)

    monkeypatch.setattr(d, "round", counted_round)

    def finish_the_running() -> bool:
        """Each running task finishes; whether every task has (the next starts in a freed slot)."""
        for task_id in list(started):
            if state(orch, task_id) is State.RUNNING:
                finish(orch, task_id, State.SUCCESS)
                engine.state[f"worker-{task_id}"] = {"Status": "exited", "ExitCode": 0}
        return all(state(orch, task_id) is State.SUCCESS for task_id in ids)

    runner = threading.Thread(target=d.run)
    runner.start()
    try:
        wait_until(lambda: len(started) >= 3, "three starts under way", timeout=10)
        then = rounds
        wait_until(lambda: rounds >= then + 6, "six rounds while the three are being started", timeout=10)
        assert started == ids[:3] and at_once["now"] == 3
        release.set()
        wait_until(finish_the_running, lambda: f"every task started and finished; started: {started}", timeout=60)
    finally:
        release.set()
        runner.join(20)
    assert not runner.is_alive()
    assert sorted(started) == sorted(ids) and len(started) == len(set(started))
    assert at_once["most"] == 3
    views = load_views(orch)
    assert all(v.state is State.SUCCESS for v in views)


def test_a_start_that_fails_frees_its_slot_at_once(orch, monkeypatch, fake_docker):
    import threading

    from orchestrator import dispatcher as dispatcher_module

    monkeypatch.setattr(dispatcher_module, "ROUND_SECONDS", 30)  # only a wake can start the next in time
    first, second = submit(orch), submit(orch)
    queue_all(orch)
    orch.write_settings(BatchSettings(max_workers=1))
    engine = FakeEngine()
    started: list[str] = []
    both = threading.Event()

    def spawner(view: TaskView) -> None:
        started.append(view.id)
        if view.id == first:
            raise UserError("image claude-flutter not found")
        engine.state[view.container] = {"Status": "running", "Running": True}
        finish(orch, view.id, State.SUCCESS)
        engine.state[view.container] = {"Status": "exited", "ExitCode": 0}
        both.set()

    d = Dispatcher(context(orch, engine), spawner=spawner, out=io.StringIO())
    runner = threading.Thread(target=d.run)
    runner.start()
    assert both.wait(10), started
    d.wake()  # the round that finds nothing left to do, now rather than in 30 s
    runner.join(40)
    assert started == [first, second]
    assert "image claude-flutter not found" in orch.load_result(first).error
