"""A new user's first week: the frictions found by following the README as a new user would,
one test each, with the message that user sees.

Batches scoped to a request, task files checked when read, orch submit checking what it can,
run.py refusing what cannot work, hints that lead somewhere, two batches on one engine, and the
smaller items (a token file others can read, the agent's failure naming the relay, orch result
telling where the work is, spawn-worker on the host saying how to read a result).
"""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path

import pytest

from orchestrator import batches, launch
from orchestrator.orch import main as orch_main
from orchestrator.spawn import main as spawn_main
from orchestrator.store import OrchestrationDir, write_json
from orchestrator.tasks import State, TaskResult, utc_now
from tests.support.batch_helpers import FakeEngine, context, finish, submit
from tests.support.fake_docker import FakeDocker

from .test_worker import box  # noqa: F401  (the worker runtime on this machine)


def run_orch(orch_dir: OrchestrationDir, *args: str) -> int:
    return orch_main([*args, "--orchestration-dir", str(orch_dir.root)])


def listed(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [task["id"] for task in json.loads(capsys.readouterr().out)["tasks"]]


# --- 1. Batches: "all" means the request's tasks, not the volume's history.


def test_status_wait_and_merge_look_at_the_current_batch_and_history_at_every_task(
    orch: OrchestrationDir, capsys, fake_docker: FakeDocker
):
    old = submit(orch, "Yesterday's work")
    finish(orch, old, State.FAILED)
    with orch.locked():
        today = batches.new_batch(orch, "Add dark mode")
    new = submit(orch, "Add a dark theme")
    assert new.startswith(f"{today.id}-") and today.id.startswith("add-dark-mode-")
    assert run_orch(orch, "status", "--json") == 0
    assert listed(capsys) == [new]
    assert run_orch(orch, "status", "--json", "--history") == 0
    assert sorted(listed(capsys)) == sorted([old, new])
    assert run_orch(orch, "status", "--json", "--batch", orch.load_task(old).batch or "") == 0
    assert listed(capsys) == [old]
    # Yesterday's failure does not fail today's wait: only the batch's tasks are waited for.
    finish(orch, new, State.SUCCESS)
    assert run_orch(orch, "wait", "--all") == 0
    out = capsys.readouterr().out
    assert new in out and old not in out
    # merge --all takes the batch's tasks only (this one changed nothing: nothing to merge).
    assert run_orch(orch, "merge", "--all", "--repo-dir", str(orch.root)) == 0
    assert old not in capsys.readouterr().out


def test_orch_submit_starts_a_batch_named_after_its_prompt_and_says_so(orch: OrchestrationDir, capsys, fake_docker):
    assert run_orch(orch, "submit", "--prompt", "Add input validation to the login form") == 0
    captured = capsys.readouterr()
    current = orch.current_batch()
    assert current and current.startswith("add-input-validation")
    assert captured.out == f"{current}-01\n"
    assert f"started the batch {current}" in captured.err and "orch batch new TITLE" in captured.err
    assert run_orch(orch, "batch") == 0
    assert capsys.readouterr().out == f"{current} (Add input validation to the login form)\n"


def test_orch_batch_new_list_and_use(orch: OrchestrationDir, capsys, fake_docker):
    assert run_orch(orch, "batch", "new", "Add", "dark", "mode") == 0
    first = capsys.readouterr().out.strip()
    submit(orch)
    assert run_orch(orch, "batch", "new", "Fix the login form") == 0
    second = capsys.readouterr().out.strip()
    assert run_orch(orch, "batch", "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"  {first}") and "Add dark mode" in lines[0] and "(1 submitted)" in lines[0]
    assert lines[1].startswith(f"* {second}") and "(no tasks)" in lines[1]
    assert run_orch(orch, "batch", "use", first) == 0 and orch.current_batch() == first
    assert run_orch(orch, "batch", "use", "nope-000000") == 1
    assert "no batch nope-000000" in capsys.readouterr().err


def test_a_task_file_written_by_hand_joins_the_current_batch_when_started(orch: OrchestrationDir, capsys):
    with orch.locked():
        today = batches.new_batch(orch, "Manual work")
    write_json(orch.task_path("task-001"), {"id": "task-001", "prompt": "List all Dart files"})
    assert run_orch(orch, "status", "--json") == 0
    assert listed(capsys) == ["task-001"]  # nobody started it: the current batch's to start
    orch.update_status("task-001", State.STARTING, worker_type="flutter")  # as spawn-worker records it
    assert orch.load_status("task-001").batch == today.id  # type: ignore[union-attr]
    with orch.locked():
        batches.new_batch(orch, "Later work")
    assert run_orch(orch, "status", "--json") == 0
    assert listed(capsys) == []


def test_ids_orch_makes_up_do_not_collide_across_volumes(tmp_path: Path):
    ids = []
    for name in ("one", "two"):
        other = OrchestrationDir(tmp_path / name)
        other.ensure()
        ids.append(submit(other, "Add dark mode"))  # the same request, on two volumes of one engine
    assert ids[0] != ids[1] and all(re.fullmatch(r"add-dark-mode-[0-9a-f]{6}-01", i) for i in ids)


# --- 3. orch submit checks what it can.


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--memory", "4"], "memory limit '4' is 4 bytes; Docker needs at least 6m (did you mean 4g?)"),
        (["--worker", "fluter"], "--worker fluter: there is no image claude-fluter (did you mean 'flutter'?)"),
        (["--cpus", "8"], "--cpus 8: the engine has 2 CPUs"),
    ],
)
def test_orch_submit_refuses_what_cannot_start(orch, capsys, fake_docker, monkeypatch, option, message):
    monkeypatch.setenv("FAKE_DOCKER_MISSING_IMAGES", "claude-fluter")
    monkeypatch.setenv("FAKE_DOCKER_IMAGES", "claude-orchestrator,claude-flutter,other-image")
    monkeypatch.setenv("FAKE_DOCKER_NCPU", "2")
    assert run_orch(orch, "submit", "--prompt", "p", *option) == 2
    assert message in capsys.readouterr().err
    assert orch.task_ids() == []


def test_a_start_that_fails_records_the_daemon_s_words_in_one_line(orch: OrchestrationDir):
    from orchestrator.dispatcher import Dispatcher
    from orchestrator.docker import DockerError

    task = submit(orch)
    from tests.support.batch_helpers import queue_all

    queue_all(orch)
    argv = ["docker", "create", "--name", f"worker-{task}", *(["--label", "x=y"] * 40), "claude-flutter"]
    stderr = "docker: Error response from daemon: invalid CPU count: 64 (range 0.01 to 2.00).\nSee 'docker run --help'."
    out = io.StringIO()
    d = Dispatcher(context(orch, FakeEngine()), out=out)

    def refuse(view: object) -> None:
        raise DockerError(argv, 125, stderr)

    d.spawner = refuse
    from .test_dispatcher import one_round

    one_round(d)
    message = orch.load_result(task).error  # type: ignore[union-attr]
    assert message == "its worker could not be started: invalid CPU count: 64 (range 0.01 to 2.00)."
    assert "docker create --name" in out.getvalue()  # the whole command: in the dispatcher's log


# --- 4. run.py refuses what cannot work.


def test_run_py_without_a_repository_refuses_unless_told(fake_docker, tmp_path, token_file, capsys, docker_socket):
    assert launch.main(["--no-login-check", "--token", str(token_file)]) == 2
    assert "no repository: pass --repo URL" in capsys.readouterr().err and not fake_docker.find("create")
    assert launch.main(["--no-login-check", "--no-repo", "--token", str(token_file)]) == 0


def test_run_py_refuses_an_api_on_the_host_s_loopback_the_containers_cannot_reach(
    fake_docker, token_file, capsys, docker_socket
):
    argv = ["--no-login-check", "--no-repo", "--token", str(token_file), "--api-url", "http://127.0.0.1:8080"]
    assert launch.main(argv) == 2
    err = capsys.readouterr().err
    assert "http://127.0.0.1:8080 is on this host's loopback" in err and "pass --network host" in err
    assert not fake_docker.find("create")
    assert launch.main([*argv, "--network", "host"]) == 0


# --- 5. Advice that leads somewhere, naming what is in use.


def test_orch_on_the_host_names_the_manager_that_runs(tmp_path, capsys, fake_docker, monkeypatch):
    monkeypatch.setenv("FAKE_DOCKER_PS", "my-manager")
    assert orch_main(["status", "--orchestration-dir", str(tmp_path / "not-here")]) == 1
    assert "from the host, `docker exec -it my-manager orch status`" in capsys.readouterr().err


# --- 7. The smaller items.


def test_a_token_file_others_can_read_is_used_with_a_warning(token_file: Path, caplog):
    from orchestrator.secrets import read_secret_file

    token_file.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        read_secret_file(token_file, "token file")
    assert f"`chmod 600 {token_file}`" in caplog.text and "mode 644" in caplog.text
    token_file.chmod(0o600)
    caplog.clear()
    read_secret_file(token_file, "token file")
    assert caplog.text == ""


def test_orch_result_says_where_the_work_is(orch: OrchestrationDir, capsys):
    write_json(orch.task_path("t"), {"id": "t", "prompt": "p"})
    orch.write_result(TaskResult(
        "t", State.SUCCESS, "done", utc_now(), attempt=1, branch="orchestrator/t", pushed=True, commits=2,
        base_commit="a" * 40, head_commit="b" * 40,
        files_changed=({"path": "lib/theme.dart", "added": 40, "deleted": 2},),
    ))  # fmt: skip
    assert run_orch(orch, "result", "t") == 0
    out = capsys.readouterr().out
    assert "branch: orchestrator/t (pushed; 2 commits from aaaaaaaaaaaa to bbbbbbbbbbbb)" in out
    assert "files: lib/theme.dart (+40 -2)" in out


def test_spawn_worker_on_the_host_says_how_to_read_the_result_from_there(
    fake_docker, orch, tmp_path, token_file, monkeypatch, capsys
):
    monkeypatch.setenv("FAKE_DOCKER_VOLUMES", str(tmp_path))
    monkeypatch.setenv("FAKE_DOCKER_PS", "claude-manager")
    write_json(orch.task_path("task-009"), {"id": "task-009", "prompt": "p"})
    argv = ["--token", str(token_file), "--repo", "git@h:r.git", "--volume", "orchestration",
            "--orchestration-dir", str(tmp_path / "not-mounted"), "flutter", "task-009"]  # fmt: skip
    assert spawn_main(argv) == 0
    assert "its result:  docker exec claude-manager orch result task-009" in capsys.readouterr().out


def test_an_agent_s_failure_names_the_endpoint_to_check_not_the_relay_s_port(box):  # noqa: F811
    # Claude Code ends a connection failure with "check your inference gateway (127.0.0.1:PORT)":
    # the relay inside the worker, which the person never configured.
    box.task("@api-error Connection refused. If it persists, check your inference gateway ($ANTHROPIC_BASE_URL).")
    code, out = box.run()
    assert code == 1, out
    error = box.result()["error"]
    assert error == (
        "the agent reported an error: API Error: Connection refused. If it persists, check your inference gateway "
        "(https://api.anthropic.com, through the worker's API relay)."
    )
