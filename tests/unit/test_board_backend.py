"""The board's backend over a real volume folder: tasks in several states, a result, a log, the
branch's diff from a real git repository, and the actions through the batch's own functions."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.control.board_backend import LOG_CHUNK, BatchBoard, numstat, rate_limit_state, whole_lines
from orchestrator.dispatcher import _try_lock
from orchestrator.errors import UserError
from orchestrator.spending import SPEND_FILE, task_account
from orchestrator.store import OrchestrationDir, write_json
from orchestrator.tasks import BatchSettings, State, TaskResult, utc_now
from tests.support.batch_helpers import FakeEngine, context, finish, queue_all, submit


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def repos(tmp_path: Path) -> dict[str, object]:
    """origin (bare) with main and a task's branch, and a clone of it, as the control plane's."""
    work = tmp_path / "work"
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    git(work, "config", "user.name", "T")
    git(work, "config", "user.email", "t@example.org")
    (work / "lib").mkdir()
    (work / "lib" / "theme.dart").write_text("final theme = 1;\n")
    git(work, "add", "-A")
    git(work, "commit", "-qm", "base")
    base = git(work, "rev-parse", "HEAD")
    git(work, "checkout", "-qb", "orchestrator/task-001")
    (work / "lib" / "theme.dart").write_text("final theme = 2;\nfinal dark = 3;\n")
    (work / "logo.bin").write_bytes(b"\0\1\2")
    git(work, "add", "-A")
    git(work, "commit", "-qm", "dark theme")
    head = git(work, "rev-parse", "HEAD")
    origin = tmp_path / "origin.git"
    git(tmp_path, "clone", "-q", "--bare", str(work), str(origin))
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(origin), str(clone))
    git(clone, "config", "user.name", "T")
    git(clone, "config", "user.email", "t@example.org")
    return {"origin": origin, "clone": clone, "base": base, "head": head}


@pytest.fixture
def dispatcher_held(orch: OrchestrationDir) -> Iterator[None]:
    """A dispatcher "runs" (its lock is held), so that none is started in the background."""
    handle = _try_lock(orch)
    assert handle is not None
    yield
    handle.close()


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def backend(orch: OrchestrationDir, engine: FakeEngine, repos: dict, dispatcher_held: None) -> BatchBoard:
    return BatchBoard(context(orch, engine), [repos["origin"]], repos["clone"])


def batch_of_four(orch: OrchestrationDir, engine: FakeEngine, repos: dict) -> dict[str, str]:
    ids = {
        "done": submit(orch, "Add a dark theme\n\nin lib/theme.dart"),
        "running": submit(orch, "  \nWrite the settings screen"),
        "failed": submit(orch, "Translate the app"),
        "waiting": submit(orch, "Use the dark theme"),
    }
    queue_all(orch)
    orch.write_result(TaskResult(
        ids["done"], State.SUCCESS, "Added the dark theme.", utc_now(), started_at="2025-06-01T09:00:00Z",
        duration_seconds=124.0, num_turns=18, cost_usd=0.41, attempt=1, branch="orchestrator/task-001",
        base_commit=repos["base"], head_commit=repos["head"], commits=1, pushed=True,
        files_changed=({"path": "lib/theme.dart", "added": 2, "deleted": 1},),
    ))  # fmt: skip
    orch.update_status(ids["done"], State.SUCCESS)
    orch.update_status(ids["running"], State.RUNNING, started_at="2025-06-01T09:01:00Z", attempt=1)
    engine.state[f"worker-{ids['running']}"] = {"Status": "running", "Running": True}
    finish(orch, ids["failed"], State.FAILED)
    return ids


def test_the_board_shows_the_batch_as_orch_status_does(orch: OrchestrationDir, engine: FakeEngine, repos: dict,
                                                       backend: BatchBoard) -> None:  # fmt: skip
    ids = batch_of_four(orch, engine, repos)
    orch.write_settings(BatchSettings(max_workers=3, budget_usd=5.0))
    write_json(orch.root / SPEND_FILE, {
        "accounts": {task_account(ids["running"]): {"cost_usd": 0.25}},
        "gate": {"backing_off": False, "bound": 8, "max_bound": 8},
    })  # fmt: skip
    state = backend.board()
    cards = {card.id: card for card in state.tasks}
    assert [card.id for card in state.tasks] == list(ids.values())
    assert {card.id: card.state for card in state.tasks} == {
        ids["done"]: "success", ids["running"]: "running", ids["failed"]: "failed", ids["waiting"]: "queued",
    }  # fmt: skip
    done = cards[ids["done"]]
    assert (done.title, done.turns, done.cost_usd, done.seconds, done.note) == (
        "Add a dark theme", 18, 0.41, 124.0, None,
    )  # fmt: skip
    assert done.branch == "orchestrator/task-001"
    running = cards[ids["running"]]
    assert running.title == "Write the settings screen"
    assert running.cost_usd == 0.25  # what the relay measured so far
    assert running.seconds is not None and running.seconds > 0
    assert cards[ids["failed"]].note == "no"
    totals = state.totals
    assert dict(totals.by_state) == {"success": 1, "running": 1, "failed": 1, "queued": 1}
    assert (totals.cost_usd, totals.budget_usd, totals.workers_running, totals.workers_limit) == (0.66, 5.0, 1, 3)
    assert totals.rate_limit == "ok"
    # A second look: the settled task comes from the settled index, and is shown the same.
    again = {card.id: card for card in backend.board().tasks}
    assert [again[ids[k]] for k in ("done", "failed", "waiting")] == [
        cards[ids[k]] for k in ("done", "failed", "waiting")
    ]


def test_the_relays_back_off_is_said_in_a_few_words() -> None:
    assert rate_limit_state(None, 100.0) is None
    assert rate_limit_state({"backing_off": True, "backoff_until": 105.5, "reason": "429"}, 100.0) == (
        "backing off for 6 s (429)"
    )
    assert rate_limit_state({"backing_off": True, "backoff_until": 99.0}, 100.0) == "ok"


def test_a_tasks_page_has_its_prompt_result_and_files(orch: OrchestrationDir, engine: FakeEngine, repos: dict,
                                                      backend: BatchBoard) -> None:  # fmt: skip
    ids = batch_of_four(orch, engine, repos)
    detail = backend.task(ids["done"])
    assert detail.prompt == "Add a dark theme\n\nin lib/theme.dart"
    assert (detail.output, detail.error, detail.attempt, detail.commits) == ("Added the dark theme.", None, 1, 1)
    assert [(c.path, c.added, c.deleted) for c in detail.files_changed] == [("lib/theme.dart", 2, 1)]
    failed = backend.task(ids["failed"])
    assert (failed.card.state, failed.error, failed.output) == ("failed", "no", "")
    with pytest.raises(KeyError):
        backend.task("task-999")
    with pytest.raises(KeyError):
        backend.task("../tasks")


def test_the_log_comes_in_whole_lines_from_an_offset(orch: OrchestrationDir, engine: FakeEngine, repos: dict,
                                                     backend: BatchBoard) -> None:  # fmt: skip
    ids = batch_of_four(orch, engine, repos)
    running = ids["running"]
    assert backend.log(running, 0).to_json() == {"text": "", "offset": 0, "next_offset": 0, "finished": False}
    log = orch.worker_log_path(running)
    log.write_bytes("worker: cloning\nagent: créé lib/settings.dart\nagent: half a li".encode())
    first = backend.log(running, 0)
    assert first.text == "worker: cloning\nagent: créé lib/settings.dart\n" and not first.finished
    assert first.next_offset == len(first.text.encode())
    assert backend.log(running, first.next_offset).text == ""  # the half line waits for its end
    with open(log, "ab") as handle:
        handle.write(b"ne\n")
    assert backend.log(running, first.next_offset).text == "agent: half a line\n"
    # Once the task has settled, the rest is sent as it is, and the log is said to be whole.
    with open(log, "ab") as handle:
        handle.write(b"no newline at the end")
    finish(orch, running, State.CANCELLED)
    last = backend.log(running, first.next_offset)
    assert last.text == "agent: half a line\nno newline at the end" and last.finished
    assert backend.log(running, last.next_offset).to_json()["text"] == ""
    # The largest offset the board's query takes (15 digits), far past the end: nothing, no error.
    far = backend.log(running, 10**15 - 1)
    assert (far.text, far.next_offset, far.finished) == ("", 10**15 - 1, True)


def test_a_long_line_is_cut_between_characters() -> None:
    # A chunk without a newline: cut before its last character, which may be cut short.
    for chunk in (("é" * LOG_CHUNK).encode()[:LOG_CHUNK], b"a" + ("é" * LOG_CHUNK).encode()[: LOG_CHUNK - 1]):
        sent = whole_lines(chunk, finished=False)
        assert chunk.startswith(sent) and len(sent) >= LOG_CHUNK - 3
        assert sent.decode("utf-8")  # whole characters only
    ascii_only = b"a" * LOG_CHUNK
    assert whole_lines(ascii_only, finished=False) == ascii_only
    assert whole_lines(b"one\ntwo", finished=False) == b"one\n"
    assert whole_lines(b"one\ntwo", finished=True) == b"one\ntwo"


def test_a_settled_tasks_log_without_a_file_is_the_engines(orch: OrchestrationDir, engine: FakeEngine, repos: dict,
                                                           backend: BatchBoard,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    ids = batch_of_four(orch, engine, repos)
    monkeypatch.setattr(engine, "logs", lambda name: f"{name} said this\n")
    chunk = backend.log(ids["failed"], 0)
    assert (chunk.text, chunk.finished) == (f"worker-{ids['failed']} said this\n", True)


def test_the_diff_is_gits_between_the_results_commits(orch: OrchestrationDir, engine: FakeEngine, repos: dict,
                                                      backend: BatchBoard) -> None:  # fmt: skip
    ids = batch_of_four(orch, engine, repos)
    diff = backend.diff(ids["done"])
    assert diff is not None and not diff.truncated
    assert [(c.path, c.added, c.deleted) for c in diff.files] == [("lib/theme.dart", 2, 1), ("logo.bin", None, None)]
    assert "-final theme = 1;\n+final theme = 2;\n+final dark = 3;\n" in diff.diff
    assert "Binary files /dev/null and b/logo.bin differ" in diff.diff
    assert backend.diff(ids["running"]) is None  # no result yet
    # A result naming a commit no repository here holds: no diff, rather than the agent's word.
    forged = TaskResult(ids["failed"], State.FAILED, "", utc_now(), base_commit=repos["base"], head_commit="f" * 40)
    orch.result_path(ids["failed"]).unlink()
    orch.write_result(forged)
    assert backend.diff(ids["failed"]) is None
    assert [(c.path, c.added, c.deleted) for c in numstat(b"1\t2\ta\tb.txt\0-\t-\timg.png\0")] == [
        ("a\tb.txt", 1, 2), ("img.png", None, None),
    ]  # fmt: skip


def test_actions_go_through_the_batchs_rules(orch: OrchestrationDir, engine: FakeEngine, repos: dict,
                                             backend: BatchBoard) -> None:  # fmt: skip
    ids = batch_of_four(orch, engine, repos)
    assert backend.cancel(ids["waiting"]) == f"{ids['waiting']}: cancelled"
    assert orch.load_result(ids["waiting"]).status is State.CANCELLED  # type: ignore[union-attr]
    with pytest.raises(UserError, match="already success"):
        backend.cancel(ids["done"])
    with pytest.raises(UserError, match="succeeded"):
        backend.retry(ids["done"])
    assert backend.retry(ids["failed"]) == f"{ids['failed']}: queued again (attempt 2)"
    assert orch.load_status(ids["failed"]).state is State.QUEUED  # type: ignore[union-attr]
    assert orch.attempt_path(ids["failed"], 1, "json").exists()  # the first attempt is kept
    with pytest.raises(KeyError):
        backend.cancel("task-999")
    # The running one: its worker is stopped (the engine's stop), as orch cancel does.
    backend.cancel(ids["running"])
    assert engine.stopped == [f"worker-{ids['running']}"]


def test_merge_is_orch_merge_all_in_the_control_planes_clone(orch: OrchestrationDir, engine: FakeEngine, repos: dict,
                                                             backend: BatchBoard) -> None:  # fmt: skip
    ids = batch_of_four(orch, engine, repos)
    summary = backend.merge()
    assert summary.into == "orchestrator/integration"
    states = {o.task_id: o.state for o in summary.outcomes}
    assert states == {ids["done"]: "merged", **{ids[k]: "not merged" for k in ("running", "failed", "waiting")}}
    merged = git(repos["clone"], "show", "orchestrator/integration:lib/theme.dart")
    assert merged == "final theme = 2;\nfinal dark = 3;"
    assert "orch merge --all --push" in (summary.message or "")
    again = backend.merge()
    assert {o.task_id: (o.state, o.message) for o in again.outcomes}[ids["done"]] == ("already merged", None)


def test_a_tasks_page_shows_its_latest_connections(orch: OrchestrationDir, engine: FakeEngine, repos: dict,
                                                   backend: BatchBoard) -> None:  # fmt: skip
    # What the control plane's egress proxy wrote for the task, as the board shows it (and no more).
    ids = batch_of_four(orch, engine, repos)
    folder = orch.root / "egress"
    folder.mkdir(exist_ok=True)
    lines = [json.dumps({"time": f"t{n}", "task": ids["done"], "client": "x", "method": "CONNECT", "host": "pub.dev",
                         "port": 443, "address": "1.2.3.4", "decision": "allowed" if n % 2 else "refused",
                         "reason": "policy", "bytes_up": n, "bytes_down": 2 * n, "duration": 0.1})
             for n in range(600)]  # fmt: skip
    (folder / f"{ids['done']}.jsonl").write_text("\n".join([*lines, "{not json"]) + "\n")
    shown = backend.egress(ids["done"])
    assert len(shown) == 500 and shown[-1]["time"] == "t599" and shown[0]["time"] == "t100"
    assert set(shown[0]) == {"time", "method", "host", "port", "decision", "reason", "bytes_up", "bytes_down"}
    assert backend.egress(ids["failed"]) == []
