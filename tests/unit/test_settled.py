"""The settled index and the view cache: a finished task's files are read once, whatever the
history; the others' when they change; orch retry takes a task out before its result moves; a
damaged index is rebuilt from the files."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from orchestrator import batch, settled
from orchestrator.errors import InvalidInput, UserError
from orchestrator.settled import ViewCache
from orchestrator.settled_index import SettledIndex, SettledTask
from orchestrator.store import OrchestrationDir
from orchestrator.tasks import State
from orchestrator.views import TaskView, load_view
from tests.support.batch_helpers import FakeEngine, finish, queue_all, submit


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tasks whose files are read (load_view, as the settled cache calls it), in order."""
    reads: list[str] = []

    def counting(orch: OrchestrationDir, task_id: str) -> TaskView:
        reads.append(task_id)
        return load_view(orch, task_id)

    monkeypatch.setattr(settled, "load_view", counting)
    monkeypatch.setattr(ViewCache, "RACY_SECONDS", 0.0)  # files written a moment ago count as settled
    return reads


def views(orch: OrchestrationDir, cache: ViewCache | None = None, ids: list[str] | None = None) -> list[TaskView]:
    with orch.locked():
        return (cache or ViewCache(orch)).views(ids)


def indexed(orch: OrchestrationDir) -> list[str]:
    """The tasks of the settled index, base and additions."""
    _, base, added = orch.load_settled_index()
    assert base is not None and added is not None
    return sorted({**base, **added})


def test_an_entry_round_trips_and_leaves_unset_fields_out():
    entry = SettledTask("a", State.FAILED, "flutter", 2, ("b",), "2026-01-24T10:28:15Z", 3.5, 0.25, "it broke")
    data = entry.to_json()
    assert "branch" not in data and "pushed" not in data
    assert SettledTask.from_json(json.loads(json.dumps(data))) == entry


@pytest.mark.parametrize(
    ("entry", "named"),
    [
        ({"id": "a", "state": "success", "worker_type": "flutter"}, "no field 'attempt'"),
        ({"id": "a", "state": "done", "worker_type": "flutter", "attempt": 1}, "not a known state"),
        ({"id": "a", "state": "success", "worker_type": "flutter", "attempt": True}, "field 'attempt'"),
        ({"id": "a", "state": "success", "worker_type": "flutter", "attempt": 1, "colour": "red"}, "'colour'"),
    ],
)
def test_a_bad_entry_is_refused_naming_the_field(entry, named):
    with pytest.raises(InvalidInput, match=named):
        SettledIndex.from_json({"generation": 1, "tasks": [entry]})


def test_finished_tasks_are_read_once_then_taken_from_the_index(orch, counted):
    done, failed, running = submit(orch), submit(orch), submit(orch)
    finish(orch, done, State.SUCCESS)
    finish(orch, failed, State.FAILED)
    orch.update_status(running, State.RUNNING)
    first = views(orch)
    assert counted == [done, failed, running]
    assert orch.settled_key() == (1, 0) and indexed(orch) == [done, failed]

    # Another process (a new cache) reads only the task that is not over.
    counted.clear()
    again = views(orch)
    assert counted == [running]
    assert [(v.id, v.state, v.message, v.attempt, v.worker_type) for v in again] == [
        (v.id, v.state, v.message, v.attempt, v.worker_type) for v in first
    ]
    assert again[0].settled is not None and again[0].to_json(datetime.now(UTC)) == first[0].to_json(datetime.now(UTC))


def test_tasks_settled_later_go_into_an_additions_file_which_alone_is_read_again(orch, counted, monkeypatch):
    first = submit(orch)
    finish(orch, first, State.SUCCESS)
    later = [submit(orch) for _ in range(4)]
    keeper = ViewCache(orch)  # a process that keeps looking (orch wait)
    views(orch, keeper)
    assert orch.settled_key() == (1, 0)
    read: list[tuple[int, int]] = []
    reading = OrchestrationDir.read_settled

    def read_counted(self: OrchestrationDir, key: tuple[int, int]) -> Any:
        read.append(key)
        return reading(self, key)

    monkeypatch.setattr(OrchestrationDir, "read_settled", read_counted)
    monkeypatch.setattr(SettledIndex, "ADDITIONS_LIMIT", 2)

    finish(orch, later[0], State.SUCCESS)
    views(orch)  # another process (the dispatcher) finds it settled
    assert orch.settled_key() == (1, 1) and indexed(orch) == [first, later[0]]
    read.clear()
    assert [v.state for v in views(orch, keeper)][:2] == [State.SUCCESS, State.SUCCESS]
    assert read == [(1, 1)]  # the additions, not the base again
    assert keeper.settled[later[0]].settled is not None

    finish(orch, later[1], State.FAILED)
    views(orch)
    assert orch.settled_key() == (1, 2)
    finish(orch, later[2], State.SUCCESS)
    views(orch)  # more than the limit: a new base holds them all
    assert orch.settled_key() == (2, 0) and indexed(orch) == sorted([first, *later[:3]])
    assert sorted(p.name for p in orch.index_dir.iterdir()) == ["settled-2.json"]
    counted.clear()
    assert [v.state for v in views(orch, keeper)] == [State.SUCCESS, State.SUCCESS, State.FAILED, State.SUCCESS,
                                                     State.SUBMITTED]  # fmt: skip
    assert counted == []  # the new base's tasks are those it knew; the last one's files did not change


def test_a_task_that_is_not_over_is_read_again_only_when_its_files_change(orch, counted):
    task = submit(orch)
    orch.update_status(task, State.RUNNING)
    cache = ViewCache(orch)
    views(orch, cache)
    views(orch, cache)
    assert counted == [task]
    orch.update_status(task, State.RUNNING, message="cloning")
    assert views(orch, cache)[0].message == "cloning"
    finish(orch, task, State.SUCCESS)
    assert views(orch, cache)[0].state is State.SUCCESS
    views(orch, cache)
    assert counted == [task, task, task]


def test_a_file_changed_a_moment_ago_is_read_again(orch, counted, monkeypatch):
    monkeypatch.setattr(ViewCache, "RACY_SECONDS", 60.0)
    task = submit(orch)
    cache = ViewCache(orch)
    views(orch, cache)
    views(orch, cache)
    assert counted == [task, task]  # its timestamp cannot tell a change within the same tick


def test_retry_takes_the_task_out_of_the_index_before_its_result_moves(orch, counted, fake_docker):
    task, other = submit(orch), submit(orch)
    finish(orch, task, State.FAILED)
    finish(orch, other, State.SUCCESS)
    cache = ViewCache(orch)  # a process that keeps looking (orch wait)
    assert [v.state for v in views(orch, cache)] == [State.FAILED, State.SUCCESS]
    batch.retry(orch, FakeEngine(), [task])
    assert indexed(orch) == [other]
    assert [v.state for v in views(orch, cache)] == [State.QUEUED, State.SUCCESS]
    # Its new attempt ends: read again, and back in the index with its new number.
    finish(orch, task, State.SUCCESS)
    (view,) = views(orch, cache, [task])
    assert (view.state, view.attempt) == (State.SUCCESS, 2)
    _, base, added = orch.load_settled_index()
    assert {**base, **added}[task].attempt == 2


def test_a_damaged_index_is_taken_for_none_and_rebuilt(orch, counted):
    task = submit(orch)
    finish(orch, task, State.SUCCESS)
    views(orch)
    (orch.index_dir / "settled-2.json").write_text('{"generation": 2, "tasks": [{"id": ')
    counted.clear()
    assert views(orch)[0].state is State.SUCCESS
    assert counted == [task]
    assert orch.settled_key() == (3, 0) and indexed(orch) == [task]
    assert sorted(p.name for p in orch.index_dir.iterdir()) == ["settled-3.json"]


def test_an_index_that_cannot_be_written_only_costs_time(orch, counted, monkeypatch, fake_docker):
    task = submit(orch)
    finish(orch, task, State.SUCCESS)

    def refuse(*args: object) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(OrchestrationDir, "write_settled_index", refuse)
    other = submit(orch)
    finish(orch, other, State.FAILED)
    cache = ViewCache(orch)
    assert [v.state for v in views(orch, cache)] == [State.SUCCESS, State.FAILED]
    assert [v.state for v in views(orch, cache)] == [State.SUCCESS, State.FAILED]
    assert orch.load_settled_index() == (None, None, None)
    # Its files are its only word: what changes them shows.
    batch.retry(orch, FakeEngine(), [other])
    assert [v.state for v in views(orch, cache)] == [State.SUCCESS, State.QUEUED]


def test_a_task_blocked_by_the_dispatcher_is_not_indexed(orch, counted):
    """No result: `orch retry` and spawn-worker may change it, and it is read each time."""
    a = submit(orch)
    b = submit(orch, depends_on=[a])
    queue_all(orch)
    finish(orch, a, State.FAILED)
    orch.update_status(b, State.BLOCKED, message=f"{a} ended failed")
    views(orch)
    assert indexed(orch) == [a]


def test_tasks_whose_file_is_gone_leave_the_index(orch, counted):
    a, b = submit(orch), submit(orch)
    finish(orch, a, State.SUCCESS)
    finish(orch, b, State.SUCCESS)
    views(orch)
    orch.task_path(a).unlink()
    assert [v.id for v in views(orch)] == [b]
    assert indexed(orch) == [b]
    assert [v.id for v in views(orch)] == [b]
    assert orch.settled_key() == (2, 0)  # written once: the task is gone from it


def test_status_and_wait_name_an_unknown_task_without_reading_the_others(orch, counted, capsys):
    from orchestrator.orch import main

    task = submit(orch)
    finish(orch, task, State.SUCCESS)
    for command in ("status", "wait"):
        assert main([command, "nope", "--orchestration-dir", str(orch.root)]) == 1
        assert "no such task: nope" in capsys.readouterr().err
    assert counted == []
    with pytest.raises(UserError, match=r"no such task: \.\./x"):
        batch.check_known(orch, ["../x"])


def test_orch_status_over_a_long_history_reads_it_once(orch, counted, capsys, fake_docker):
    from orchestrator.orch import main

    ids = [submit(orch) for _ in range(30)]
    for task_id in ids:
        finish(orch, task_id, State.SUCCESS)
    assert main(["status", "--orchestration-dir", str(orch.root)]) == 0
    assert len(counted) == 30
    counted.clear()
    assert main(["status", "--json", "--orchestration-dir", str(orch.root)]) == 0
    assert main(["status", "--orchestration-dir", str(orch.root)]) == 0
    assert counted == []
    out = capsys.readouterr().out
    assert "30 tasks: 30 success" in out and '"state": "success"' in out
