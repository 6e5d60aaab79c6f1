"""The batch's rules without an engine: submitting, what a dead worker amounts to, damaged
files, retries and long chains. A fake engine stands in for Docker; tests/e2e/test_orch.py runs
the same code on the real one. The dispatcher's own rules are in test_dispatcher.py."""

from __future__ import annotations

import io
import json
import re

import pytest

from orchestrator import batch
from orchestrator.dependencies import blocking_reasons, with_submitted_dependencies
from orchestrator.errors import InvalidInput
from orchestrator.reconcile import reconcile
from orchestrator.store import OrchestrationDir
from orchestrator.tasks import State, TaskResult, utc_now
from orchestrator.views import attempt_files, load_view, load_views, select
from tests.support.batch_helpers import FakeEngine, finish, state, submit


def test_submit_numbers_tasks_in_their_batch_and_never_overwrites_one(orch):
    # The first submit starts a batch named after its prompt; ids carry the batch's.
    first, second = submit(orch), submit(orch)
    batch_id = orch.current_batch()
    assert batch_id is not None and re.fullmatch(r"do-it-[0-9a-f]{6}", batch_id)
    assert [first, second] == [f"{batch_id}-01", f"{batch_id}-02"]
    assert submit(orch, task_id="login-form") == "login-form"
    assert submit(orch) == f"{batch_id}-03"
    before = orch.task_path(first).read_text()
    with pytest.raises(InvalidInput, match=f"{first} exists already"):
        submit(orch, "another prompt", task_id=first)
    assert orch.task_path(first).read_text() == before
    assert state(orch, first) is State.SUBMITTED


def test_submit_writes_the_original_design_s_fields_and_the_new_ones(orch):
    submit(orch, "p", timeout=60, max_turns=5, model="m", task_id="a")
    submit(orch, "q", depends_on=["a"], task_id="b", worker="web")
    data = json.loads(orch.task_path("b").read_text())
    assert data == {"id": "b", "prompt": "q", "worker": "web", "depends_on": ["a"], "batch": orch.current_batch()}
    assert json.loads(orch.task_path("a").read_text())["max_turns"] == 5


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"prompt": "  "}, "the prompt must be a non-empty string"),
        ({"task_id": "bad id"}, "--id"),
        ({"depends_on": ["nope"]}, "--depends-on names nope, which does not exist"),
        ({"timeout": 0}, "--timeout"),
        ({"max_turns": -1}, "--max-turns"),
        ({"worker": "Bad Type"}, "worker type"),
    ],
)
def test_submit_refuses_bad_input_naming_it(orch, options, named):
    with pytest.raises(InvalidInput, match=named):
        submit(orch, **options)
    assert orch.task_ids() == []


def test_a_task_file_with_a_bad_dependency_is_refused_naming_the_field(orch):
    orch.task_path("x").write_text(json.dumps({"id": "x", "prompt": "p", "depends_on": ["x"]}))
    view = load_view(orch, "x")
    assert view.problem and "depends_on" in view.problem


@pytest.mark.parametrize(
    ("container", "stop_reason", "expected", "says"),
    [
        ({"Status": "exited", "ExitCode": 137}, None, State.INTERRUPTED, "exited with code 137 (killed by SIGKILL)"),
        ({"Status": "exited", "ExitCode": 255}, None, State.INTERRUPTED, "whatever it did is in the container"),
        ({"Status": "exited", "ExitCode": 137, "OOMKilled": True}, None, State.FAILED, "out of memory"),
        ({"Status": "exited", "ExitCode": 2}, None, State.FAILED, "exited with code 2 without writing a result"),
        (None, None, State.FAILED, "is gone and left no result"),
        ({"Status": "exited", "ExitCode": 143}, "cancelled", State.CANCELLED, "code 143"),
    ],
)
def test_a_worker_that_died_without_a_result_is_recorded(orch, container, stop_reason, expected, says):
    task = submit(orch)
    orch.update_status(task, State.RUNNING, started_at=utc_now(), stop_reason=stop_reason)
    engine = FakeEngine()
    if container:
        engine.state[f"worker-{task}"] = container
    with orch.locked():
        (view,) = reconcile(orch, load_views(orch), engine)
    assert view.state is expected and says in (view.message or "")
    result = orch.load_result(task)
    assert result.status is expected and says in result.error
    assert result.worker_exit_code == (container or {}).get("ExitCode")
    assert orch.load_status(task).state is expected


def test_reconcile_leaves_live_and_finished_workers_alone(orch):
    running, done, starting = submit(orch), submit(orch), submit(orch)
    orch.update_status(running, State.RUNNING)
    orch.update_status(starting, State.STARTING)  # spawn under way: no container yet
    finish(orch, done, State.SUCCESS)
    engine = FakeEngine()
    engine.state[f"worker-{running}"] = {"Status": "running", "Running": True}
    engine.state[f"worker-{done}"] = {"Status": "exited", "ExitCode": 0}
    with orch.locked():
        views = reconcile(orch, load_views(orch), engine)
    assert [v.state for v in views] == [State.RUNNING, State.SUCCESS, State.STARTING]
    assert orch.load_result(running) is None


def test_archiving_an_attempt_keeps_its_result_transcript_and_log(orch):
    task = submit(orch)
    finish(orch, task, State.FAILED)
    orch.log_path(task).write_text("{}\n")
    orch.worker_log_path(task).write_text("[worker] failed\n")
    number = batch.archive_attempt(orch, load_view(orch, task))
    assert number == 1 and attempt_files(orch, task) == [1]
    folder = orch.attempt_dir(task)
    assert json.loads((folder / "1.json").read_text())["status"] == "failed"
    assert (folder / "1.log").read_text() == "[worker] failed\n" and (folder / "1.jsonl").exists()
    assert orch.load_result(task) is None and not orch.worker_log_path(task).exists()


def test_orch_outside_the_manager_says_where_it_runs(tmp_path, capsys, fake_docker):
    from orchestrator.orch import main

    assert main(["status", "--orchestration-dir", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("orch status: error: ") and "in a manager container; none runs (bin/run.py starts one)" in err


def test_orch_submit_and_status_from_the_command_line(orch, capsys, monkeypatch, fake_docker):
    from orchestrator.orch import main

    where = ["--orchestration-dir", str(orch.root)]
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"A prompt from stdin\n")))
    assert main(["submit", *where]) == 0
    first = capsys.readouterr().out.strip()
    assert first == f"{orch.current_batch()}-01" and first.startswith("a-prompt-from-stdin-")
    assert main(["submit", "--prompt", "p", "--id", "two", "--depends-on", first, "--max-turns", "3", *where]) == 0
    assert capsys.readouterr().out == "two\n"
    assert json.loads(orch.task_path(first).read_text())["prompt"] == "A prompt from stdin\n"
    assert main(["submit", "--prompt", "p", "--id", "two", *where]) == 2
    assert "task two exists already" in capsys.readouterr().err
    assert main(["status", "--json", *where]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(t["id"], t["state"], t["depends_on"]) for t in data["tasks"]] == [
        (first, "submitted", []),
        ("two", "submitted", [first]),
    ]
    assert data["batch"] == orch.current_batch()
    assert data["counts"] == {"submitted": 2}
    assert main(["wait", "two", *where]) == 1
    assert "not started: two" in capsys.readouterr().err


def test_wait_names_a_dependency_nobody_started(orch, capsys):
    from orchestrator.orch import main

    first = submit(orch)
    second = submit(orch, depends_on=[first])
    with orch.locked():
        batch.queue(orch, [load_view(orch, second)])
    assert main(["wait", second, "--orchestration-dir", str(orch.root)]) == 1
    assert f"{second} waits for {first}, never started" in capsys.readouterr().err


def test_logs_follow_until_the_task_has_finished(orch, capsys):
    import threading

    from orchestrator.orch import main

    task = submit(orch)
    orch.update_status(task, State.RUNNING, started_at=utc_now())
    orch.worker_log_path(task).write_text("[worker task-001] cloning\n")

    def worker() -> None:
        with open(orch.worker_log_path(task), "a") as log:
            log.write("[agent] finished: success\n")
        finish(orch, task, State.SUCCESS)

    timer = threading.Timer(1.0, worker)
    timer.start()
    try:
        assert main(["logs", task, "-f", "--orchestration-dir", str(orch.root)]) == 0
    finally:
        timer.join()
    assert capsys.readouterr().out == "[worker task-001] cloning\n[agent] finished: success\n"


def test_status_watch_ends_when_nothing_is_queued_or_running(orch, capsys):
    from orchestrator.orch import main

    task = submit(orch)
    finish(orch, task, State.FAILED)
    assert main(["status", "--watch", "--orchestration-dir", str(orch.root)]) == 0
    out = capsys.readouterr().out
    assert f"{task}  failed" in out and "1 task: 1 failed" in out


def test_submit_start_queues_what_the_task_depends_on(orch, capsys, fake_docker):
    from orchestrator.orch import main

    first = submit(orch)
    where = ["--orchestration-dir", str(orch.root)]
    # No engine here: the dispatcher it starts finds nothing it can run and exits.
    assert main(["submit", "--prompt", "p", "--depends-on", first, "--start", *where]) == 0
    second = capsys.readouterr().out.strip()
    assert [state(orch, t) for t in (first, second)] == [State.QUEUED, State.QUEUED]


def test_work_is_safe_only_when_pushed_bundled_empty_or_never_started():
    def result(**fields) -> TaskResult:
        return TaskResult("t", State.FAILED, "", utc_now(), **fields)

    assert batch.work_is_safe(result(pushed=True, commits=2))
    assert batch.work_is_safe(result(pushed=False, commits=2, bundle="/orchestration/bundles/t.bundle"))
    assert batch.work_is_safe(result(commits=0, pushed=False))
    assert batch.work_is_safe(result())  # the clone failed: the agent never ran
    assert not batch.work_is_safe(result(worker_exit_code=137))  # killed: work may be in the clone
    assert not batch.work_is_safe(result(exit_code=0, base_commit="abc", commits=None))
    assert not batch.work_is_safe(None)


def test_a_worker_created_but_never_started_is_removed_and_its_task_queued_again(orch):
    task = submit(orch)
    orch.update_status(task, State.STARTING)
    engine = FakeEngine()
    engine.state[f"worker-{task}"] = {"Status": "created"}
    with orch.locked():
        assert reconcile(orch, load_views(orch), engine, starting_grace=0)[0].state is State.STARTING  # just created
    status = json.loads(orch.status_path(task).read_text())
    status["updated_at"] = "2000-01-01T00:00:00Z"
    orch.status_path(task).write_text(json.dumps(status))
    with orch.locked():
        (view,) = reconcile(orch, load_views(orch), engine, starting_grace=0)
    assert view.state is State.QUEUED and engine.removed == [f"worker-{task}"]


@pytest.mark.parametrize(("option", "value"), [("memory", "lots"), ("cpus", "-1"), ("pids_limit", "0")])
def test_bad_limits_are_refused_at_submit(orch: OrchestrationDir, option: str, value: str):
    with pytest.raises(InvalidInput, match="limit"):
        submit(orch, **{option: value})
    assert orch.task_ids() == []


def test_a_damaged_result_is_reported_and_retry_runs_the_task_again(orch, capsys, fake_docker):
    from orchestrator.orch import main

    where = ["--orchestration-dir", str(orch.root)]
    task = submit(orch)
    orch.update_status(task, State.RUNNING, attempt=2)
    orch.attempt_dir(task).mkdir(parents=True)
    orch.attempt_path(task, 1, "json").write_text('{"kept": "attempt 1"}')
    orch.result_path(task).write_text('{"task_id": "' + task + '", "status": "succ')  # cut short
    assert main(["status", *where]) == 0
    row = capsys.readouterr().out.splitlines()[1]
    assert row.split()[:2] == [task, "failed"] and "is not valid JSON" in row
    assert main(["retry", task, *where]) == 0
    assert f"{task}: attempt 3 queued (attempt 2 kept" in capsys.readouterr().out
    assert orch.attempt_path(task, 2, "json").read_text().endswith('"succ')
    assert orch.attempt_path(task, 1, "json").read_text() == '{"kept": "attempt 1"}'
    assert load_view(orch, task).state is State.QUEUED


def test_a_damaged_status_is_not_taken_for_an_ended_task(orch):
    task = submit(orch)
    orch.status_path(task).write_text("{not json")
    view = load_view(orch, task)
    assert view.state is State.STARTING and "is not valid JSON" in (view.problem or "")


def test_a_full_volume_is_one_line(orch, capsys, monkeypatch, fake_docker):
    import errno

    from orchestrator.orch import main

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(orch.root / "tasks" / "x.json"))

    monkeypatch.setattr("orchestrator.store.tempfile.mkstemp", full)
    assert main(["submit", "--prompt", "p", "--orchestration-dir", str(orch.root)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("orch submit: error: cannot write") and "No space left on device" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1


def test_a_chain_a_thousand_deep_starts_and_blocks_without_recursion(orch):
    ids = [submit(orch)]
    for _ in range(999):
        ids.append(submit(orch, depends_on=[ids[-1]]))
    with orch.locked():
        views = load_views(orch)
        queued = batch.queue(orch, with_submitted_dependencies(views, select(views, [ids[-1]])))
    assert len(queued) == 1000
    orch.result_path(ids[0]).write_text(json.dumps(
        {"task_id": ids[0], "status": "failed", "output": "", "completed_at": "2026-01-01T00:00:00Z", "error": "x"}
    ))  # fmt: skip
    reasons = blocking_reasons(load_views(orch))
    assert len(reasons) == 999 and reasons[ids[-1]] == f"{ids[-2]} is blocked"
    assert reasons[ids[1]] == f"{ids[0]} ended failed"


def test_retry_failed_takes_what_failed_timed_out_or_was_blocked_and_nothing_stopped_on_purpose(
    orch, capsys, fake_docker
):
    from orchestrator.orch import main

    where = ["--orchestration-dir", str(orch.root)]
    ids = {name: submit(orch) for name in ("ok", "failed", "timed", "cancelled", "budget")}
    for name, ended in (("ok", State.SUCCESS), ("failed", State.FAILED), ("timed", State.TIMEOUT),
                        ("cancelled", State.CANCELLED), ("budget", State.BUDGET_EXCEEDED)):  # fmt: skip
        finish(orch, ids[name], ended)
    assert main(["retry", "--failed", ids["ok"], *where]) == 2  # ids or --failed
    assert "give task ids or --failed" in capsys.readouterr().err
    assert main(["retry", "--failed", *where]) == 0
    out = capsys.readouterr().out
    assert sorted(line.split(":")[0] for line in out.splitlines()) == sorted([ids["failed"], ids["timed"]])
    assert {name: state(orch, task) for name, task in ids.items()} == {
        "ok": State.SUCCESS, "failed": State.QUEUED, "timed": State.QUEUED, "cancelled": State.CANCELLED,
        "budget": State.BUDGET_EXCEEDED,
    }  # fmt: skip
    assert main(["retry", "--failed", *where]) == 0
    assert "nothing to retry" in capsys.readouterr().out
