"""orch merge with real git on this machine: a bare origin, task branches pushed to it, and
the manager's clone. tests/e2e/test_git_flow.py runs it in containers over SSH."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

import pytest

from orchestrator import merge
from orchestrator.errors import UserError
from orchestrator.tasks import State, TaskResult, utc_now
from orchestrator.views import TaskView
from tests.support.git_servers import seed_repo

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def git(cwd: Path, *args: str) -> str:
    proc = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, **GIT_ENV}, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


class Origin:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.bare = tmp / "origin.git"
        git(tmp, "clone", "-q", "--bare", str(seed_repo(tmp / "seed")), str(self.bare))
        self.clone = tmp / "manager"
        git(tmp, "clone", "-q", str(self.bare), str(self.clone))

    def task_branch(self, task_id: str, path: str, text: str, state: State = State.SUCCESS) -> TaskView:
        work = self.tmp / f"work-{task_id}"
        git(self.tmp, "clone", "-q", str(self.bare), str(work))
        branch = f"orchestrator/{task_id}"
        git(work, "checkout", "-q", "-b", branch)
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_text(text)
        git(work, "add", "-A")
        git(work, "commit", "-qm", f"{task_id}: edit {path}")
        git(work, "push", "-q", "origin", branch)
        head = git(work, "rev-parse", "HEAD").strip()
        result = TaskResult(task_id, state, "", utc_now(), branch=branch, commits=1, pushed=True, head_commit=head)
        return TaskView.from_files(task_id, state, result=result)

    def show(self, ref: str, path: str) -> str:
        return git(self.bare, "show", f"{ref}:{path}")


@pytest.fixture
def origin(tmp_path: Path) -> Origin:
    return Origin(tmp_path)


def run(origin: Origin, views: list[TaskView], push: bool = True) -> merge.MergeReport:
    return merge.merge_branches(
        origin.clone, views, into="orchestrator/integration", base_branch="main", push=push, scrub=lambda s: s
    )


def test_branches_touching_different_files_merge_cleanly_and_are_pushed(origin: Origin):
    views = [origin.task_branch(f"task-00{n}", f"notes/{n}.txt", f"note {n}\n") for n in (1, 2, 3)]
    report = run(origin, views)
    assert report.ok and report.pushed and report.start == "origin/main"
    assert [(o.task_id, o.state, o.files) for o in report.outcomes] == [
        (f"task-00{n}", "merged", (f"notes/{n}.txt",)) for n in (1, 2, 3)
    ]
    for n in (1, 2, 3):
        assert origin.show("orchestrator/integration", f"notes/{n}.txt") == f"note {n}\n"
    assert "Merge task-002 (orchestrator/task-002)" in git(
        origin.bare, "log", "--format=%s", "orchestrator/integration"
    )
    # Merging again finds them merged, and picks up from the integration branch.
    again = run(origin, views)
    assert again.ok and [o.state for o in again.outcomes] == ["already merged"] * 3
    assert again.start == "orchestrator/integration"


def test_a_conflict_stops_the_merge_and_leaves_everything_as_it_was(origin: Origin):
    first = origin.task_branch("task-001", "README.md", "# App, by one\n")
    second = origin.task_branch("task-002", "README.md", "# App, by two\n")
    third = origin.task_branch("task-003", "notes/3.txt", "three\n")
    (origin.clone / "scratch.txt").write_text("the manager's own uncommitted work\n")
    before = {ref: git(origin.bare, "rev-parse", ref) for ref in ("orchestrator/task-001", "orchestrator/task-002")}

    report = run(origin, [first, second, third])
    assert not report.ok
    states = [(o.task_id, o.state) for o in report.outcomes]
    assert states == [("task-001", "merged"), ("task-002", "conflict"), ("task-003", "not merged")]
    conflict = report.outcomes[1]
    assert conflict.files == ("README.md",) and "task-002 conflicts" in (conflict.message or "")
    # What was merged before the conflict is pushed; both task branches are intact on origin.
    assert origin.show("orchestrator/integration", "README.md") == "# App, by one\n"
    assert {ref: git(origin.bare, "rev-parse", ref) for ref in before} == before
    # The manager's clone: same branch, its own work untouched, no merge under way, no worktree left.
    assert git(origin.clone, "branch", "--show-current").strip() == "main"
    assert git(origin.clone, "status", "--porcelain") == "?? scratch.txt\n"
    assert git(origin.clone, "worktree", "list").count("\n") == 1


def test_choose_takes_successes_for_all_and_says_why_others_are_left_out():
    def view(task_id: str, state: State, **fields) -> TaskView:
        return TaskView.from_files(task_id, state, result=TaskResult(task_id, state, "", utc_now(), **fields))

    views = [
        view("ok", State.SUCCESS, branch="o/ok", commits=1, pushed=True),
        view("failed", State.FAILED, branch="o/failed", commits=1, pushed=True),
        view("unpushed", State.FAILED, branch="o/u", commits=1, pushed=False, bundle="/orchestration/bundles/u.bundle"),
        view("empty", State.SUCCESS, commits=0, pushed=False),
        TaskView.from_files("running", State.RUNNING),
    ]
    chosen, left_out = merge.choose(views, explicit=False)
    assert [v.id for v in chosen] == ["ok"]
    reasons = {o.task_id: o.message for o in left_out}
    assert "ended failed" in (reasons["failed"] or "")
    assert reasons["unpushed"] == "its branch was not pushed; its work is in /orchestration/bundles/u.bundle"
    assert reasons["empty"] == "it changed nothing" and "no result yet" in (reasons["running"] or "")
    chosen, _ = merge.choose(views[:2], explicit=True)
    assert [v.id for v in chosen] == ["ok", "failed"]


def test_merge_needs_a_clone(tmp_path: Path):
    with pytest.raises(UserError, match="is not a git clone"):
        merge.merge_branches(tmp_path, [], into="x", base_branch="main", push=False, scrub=lambda s: s)


def test_a_result_whose_head_origin_does_not_hold_is_not_merged(origin: Origin):
    honest = origin.task_branch("task-001", "lib/a.dart", "a\n")
    forged = origin.task_branch("task-002", "lib/b.dart", "b\n")
    assert forged.result is not None
    claimed = dataclasses.replace(forged.result, head_commit="0" * 40)
    report = run(origin, [honest, TaskView.from_files("task-002", State.SUCCESS, result=claimed)])
    assert [o.state for o in report.outcomes] == ["merged", "not merged"]
    assert "does not hold the commit its result names (000000000000)" in (report.outcomes[1].message or "")
    assert not report.ok


def test_the_commit_the_result_names_is_merged_not_what_came_after(origin: Origin):
    view = origin.task_branch("task-001", "lib/a.dart", "mine\n")
    work = origin.tmp / "work-task-001"
    (work / "lib" / "late.dart").write_text("pushed later by someone else\n")
    git(work, "add", "-A")
    git(work, "commit", "-qm", "later")
    git(work, "push", "-q", "origin", "orchestrator/task-001")
    report = run(origin, [view])
    assert [o.state for o in report.outcomes] == ["merged"]
    assert origin.show("orchestrator/integration", "lib/a.dart") == "mine\n"
    assert "late.dart" not in git(origin.bare, "ls-tree", "-r", "--name-only", "orchestrator/integration")


def test_a_push_is_refused_by_the_server_s_words_not_by_digits_of_its_port():
    from orchestrator.delivery import unreachable
    from orchestrator.git import GitError

    down = "fatal: unable to connect to 127.0.0.1:54035:\n127.0.0.1[0: 127.0.0.1]: errno=Connection refused"
    assert unreachable(GitError(down))
    refused = "fatal: unable to access 'http://127.0.0.1:8080/r.git/': The requested URL returned error: 403"
    assert not unreachable(GitError(refused))
    assert not unreachable(GitError(refused.replace("error: 403", "error: 401")))
