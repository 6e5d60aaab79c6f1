"""The file formats on the shared volume."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from orchestrator.errors import InvalidInput
from orchestrator.store import OrchestrationDir, write_json
from orchestrator.tasks import State, Task, TaskResult, TaskStatus


def test_task_of_the_original_design_parses_and_round_trips():
    data = {"id": "task-001", "prompt": "Add input validation to login form..."}
    task = Task.from_json(data)
    assert (task.id, task.prompt, task.model, task.timeout) == ("task-001", data["prompt"], None, None)
    assert task.to_json() == data


def test_a_task_keeps_the_user_s_own_fields_under_meta():
    data = {
        "id": "t1",
        "prompt": "p",
        "timeout": 60,
        "model": "m",
        "meta": {"title": "Dark mode"},
        "depends_on": ["t0"],
    }
    assert Task.from_json(data).to_json() == data


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("timout", "unknown field 'timout' (did you mean 'timeout'?)"),
        ("dependson", "unknown field 'dependson' (did you mean 'depends_on'?)"),
        ("max_turn", "unknown field 'max_turn' (did you mean 'max_turns'?)"),
        ("title", "unknown field 'title'; fields of your own go under 'meta'"),
    ],
)
def test_a_misspelled_field_is_refused_with_the_closest_name(field, message):
    # A misspelling would otherwise run with the default one-hour timeout, no dependency, no turn limit.
    with pytest.raises(InvalidInput, match=re.escape(message)):
        Task.from_json({"id": "t1", "prompt": "p", field: 5})


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"prompt": "p"}, "'id' is missing"),
        ({"id": "bad id", "prompt": "p"}, "field 'id'"),
        ({"id": "-x", "prompt": "p"}, "field 'id'"),
        ({"id": "a" * 64, "prompt": "p"}, "field 'id'"),
        ({"id": "t1"}, "field 'prompt'"),
        ({"id": "t1", "prompt": "   "}, "field 'prompt'"),
        ({"id": "t1", "prompt": 5}, "field 'prompt'"),
        ({"id": "t1", "prompt": "x" * (1024 * 1024 + 1)}, "is 1,048,577 bytes of UTF-8; the limit is 1,048,576"),
        ({"id": "t1", "prompt": "é" * (512 * 1024 + 1)}, "is 1,048,578 bytes of UTF-8"),
        ({"id": "t1", "prompt": "a\0b"}, "holds a NUL character (at character 1)"),
        ({"id": "t1", "prompt": "a\ud800b"}, "is not valid Unicode text"),
        ({"id": "fix.lock", "prompt": "p"}, "git refuses it"),
        ({"id": "v1..2", "prompt": "p"}, "git refuses it"),
        ({"id": "end.", "prompt": "p"}, "git refuses it"),
        ({"id": "t1", "prompt": "p", "timeout": "60"}, "field 'timeout'"),
        ({"id": "t1", "prompt": "p", "timeout": 0}, "field 'timeout'"),
        ({"id": "t1", "prompt": "p", "timeout": True}, "field 'timeout'"),
        ({"id": "t1", "prompt": "p", "model": 4}, "field 'model'"),
        (["t1"], "JSON object"),
    ],
)
def test_invalid_task_is_refused_naming_the_field(data, named):
    with pytest.raises(InvalidInput) as info:
        Task.from_json(data)
    assert named in str(info.value)


def test_result_has_the_fields_of_the_original_design_and_round_trips():
    result = TaskResult(
        task_id="task-001",
        status=State.SUCCESS,
        output="Claude's full output...",
        completed_at="2026-01-24T10:30:00Z",
        started_at="2026-01-24T10:29:00Z",
        duration_seconds=60.5,
        exit_code=0,
        cost_usd=0.25,
        num_turns=7,
        session_id="abc",
        model="claude-opus-4-5-20251101",
    )
    data = result.to_json()
    assert {"task_id", "status", "output", "completed_at"} <= data.keys()
    assert data["status"] == "success"
    assert TaskResult.from_json(json.loads(json.dumps(data))) == result
    # A result written by a plain tool with only the original fields is read too.
    minimal = {"task_id": "task-001", "status": "success", "output": "", "completed_at": "2026-01-24T10:30:00Z"}
    assert TaskResult.from_json(minimal).succeeded


@pytest.mark.parametrize("status", ["running", "done", None])
def test_result_status_must_be_final(status):
    with pytest.raises(InvalidInput, match="'status'"):
        TaskResult.from_json({"task_id": "t", "status": status, "output": "", "completed_at": "x"})


def test_status_round_trips():
    status = TaskStatus("t1", State.RUNNING, "2026-01-01T00:00:00Z", "flutter", "worker-t1", None)
    assert TaskStatus.from_json(status.to_json()) == status


def test_write_json_is_atomic_and_leaves_no_temporary_file(tmp_path: Path):
    path = tmp_path / "x.json"
    write_json(path, {"a": 1})
    write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert os.listdir(tmp_path) == ["x.json"]
    assert path.stat().st_mode & 0o777 == 0o660


def test_load_task_checks_file_name_and_json(tmp_path: Path):
    orch = OrchestrationDir(tmp_path)
    orch.ensure()
    orch.task_path("t1").write_text('{"id": "t2", "prompt": "p"}')
    with pytest.raises(InvalidInput, match="named for 't1'"):
        orch.load_task("t1")
    orch.task_path("t3").write_text('{"id": "t3", "prompt": ')
    with pytest.raises(InvalidInput, match="not valid JSON"):
        orch.load_task("t3")
    with pytest.raises(InvalidInput, match="does not exist"):
        orch.load_task("t4")


def test_update_status_keeps_what_the_previous_status_knew(tmp_path: Path):
    orch = OrchestrationDir(tmp_path)
    orch.ensure()
    orch.update_status("t1", State.STARTING, worker_type="flutter", container="worker-t1")
    status = orch.update_status("t1", State.RUNNING)
    assert (status.state, status.worker_type, status.container) == (State.RUNNING, "flutter", "worker-t1")
    orch.status_path("t1").write_text("garbage")
    assert orch.update_status("t1", State.FAILED, message="m").message == "m"
