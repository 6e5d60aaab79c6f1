"""orch merge: combine the task branches of a batch into one integration branch.

It works in the manager's clone, but never in its working tree: the merges happen in a
temporary worktree of the integration branch, removed afterwards, so whatever the manager
has checked out or left uncommitted is untouched, and a conflict leaves nothing behind.
Task branches are only read; nothing is ever force-pushed or deleted.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import git
from .errors import UserError
from .git import GitError
from .tasks import State
from .views import TaskView

INTEGRATION_BRANCH = "integration"  # after the branch prefix: orchestrator/integration


@dataclass(frozen=True)
class Outcome:
    task_id: str
    state: str  # merged, already merged, conflict, not merged
    branch: str | None = None
    commit: str | None = None
    files: tuple[str, ...] = field(default_factory=tuple)
    message: str | None = None

    def to_json(self) -> dict[str, object]:
        return {"task_id": self.task_id, "state": self.state, "branch": self.branch, "commit": self.commit,
                "files": list(self.files), "message": self.message}  # fmt: skip


@dataclass(frozen=True)
class MergeReport:
    into: str
    start: str  # what the integration branch started from this time
    outcomes: list[Outcome]
    pushed: bool = False
    push_error: str | None = None

    @property
    def ok(self) -> bool:
        return self.push_error is None and all(o.state in ("merged", "already merged") for o in self.outcomes)


def mergeable(view: TaskView) -> str | None:
    """Why the task's work cannot be merged, or None when it can."""
    result = view.result
    if result is None:
        return f"it has no result yet ({view.state.value})"
    if not result.branch:
        return "it changed nothing" if result.commits == 0 else "its result names no branch"
    if not result.pushed:
        where = f"; its work is in {result.bundle}" if result.bundle else ""
        return f"its branch was not pushed{where}"
    return None


def choose(views: Sequence[TaskView], explicit: bool) -> tuple[list[TaskView], list[Outcome]]:
    """The tasks to merge, and those left out with the reason. ``--all`` takes the successful ones."""
    chosen, left_out = [], []
    for view in views:
        reason = mergeable(view)
        if reason is None and not explicit and view.state is not State.SUCCESS:
            reason = f"it ended {view.state.value} (name it to merge it anyway)"
        if reason is None:
            chosen.append(view)
        else:
            left_out.append(Outcome(view.id, "not merged", message=reason))
    return chosen, left_out


def merge_branches(
    repo: Path,
    views: Sequence[TaskView],
    *,
    into: str,
    base_branch: str,
    push: bool,
    scrub: Callable[[str], str],
) -> MergeReport:
    """Merge each task's branch, in order, into ``into``; stop at the first conflict."""
    if not (repo / ".git").exists():
        raise UserError(f"{repo} is not a git clone; orch merge works in the manager's clone of the repository")
    run = _git_in(repo, scrub)
    run("fetch", "--quiet", "--prune", "origin", timeout=git.PUSH_TIMEOUT)
    if run("rev-parse", "--verify", "--quiet", f"refs/heads/{into}", check=False) is not None:
        start = into
    elif run("rev-parse", "--verify", "--quiet", f"refs/remotes/origin/{into}", check=False) is not None:
        start = f"origin/{into}"
    else:
        start = f"origin/{base_branch}"
    workdir = Path(tempfile.mkdtemp(prefix="orch-merge-"))
    worktree = workdir / "tree"
    outcomes: list[Outcome] = []
    try:
        try:
            run("worktree", "add", "--quiet", "-B", into, str(worktree), start)
        except GitError as exc:
            raise UserError(f"cannot check out {into} to merge into it: {exc}") from None
        here = _git_in(worktree, scrub)
        for index, view in enumerate(views):
            assert view.result is not None and view.result.branch
            branch = view.result.branch
            ref = f"refs/remotes/origin/{branch}"
            if here("rev-parse", "--verify", "--quiet", ref, check=False) is None:
                outcomes.append(Outcome(view.id, "not merged", branch, message=f"{branch} is not on origin"))
                continue
            # What is merged is the commit the result names, and only once origin's branch holds
            # it: a result that names work origin never received is not taken on its word.
            head = view.result.head_commit or ""
            if not head or here("merge-base", "--is-ancestor", head, ref, check=False) is None:
                outcomes.append(Outcome(view.id, "not merged", branch,
                                        message=f"origin's {branch} does not hold the commit its result names "
                                        f"({head[:12] or 'none'})"))  # fmt: skip
                continue
            ref = head
            if here("merge-base", "--is-ancestor", ref, "HEAD", check=False) is not None:
                outcomes.append(Outcome(view.id, "already merged", branch))
                continue
            title = f"Merge {view.id} ({branch})"
            if here("merge", "--no-ff", "--no-edit", "--message", title, ref, check=False) is None:
                conflicted = tuple((here("diff", "--name-only", "--diff-filter=U", check=False) or "").splitlines())
                here("merge", "--abort", check=False)
                outcomes.append(Outcome(
                    view.id, "conflict", branch, files=conflicted,
                    message=f"{view.id} conflicts with what was merged before it, in: {', '.join(conflicted) or '?'}",
                ))  # fmt: skip
                outcomes.extend(
                    Outcome(
                        rest.id,
                        "not merged",
                        rest.result.branch if rest.result else None,
                        message=f"not tried: stopped at the conflict of {view.id}",
                    )
                    for rest in views[index + 1 :]
                )
                break
            changed = (here("diff", "--name-only", "HEAD^1", "HEAD") or "").splitlines()
            head = (here("rev-parse", "HEAD") or "").strip()
            outcomes.append(Outcome(view.id, "merged", branch, head, tuple(changed)))
        pushed, push_error = False, None
        if push:
            try:
                run("push", "--quiet", "origin", f"refs/heads/{into}:refs/heads/{into}", timeout=git.PUSH_TIMEOUT)
                pushed = True
            except GitError as exc:
                push_error = f"the push of {into} failed: {exc}"
    finally:
        run("worktree", "remove", "--force", str(worktree), check=False)
        run("worktree", "prune", check=False)
        shutil.rmtree(workdir, ignore_errors=True)
    return MergeReport(into, start, outcomes, pushed, push_error)


def _git_in(repo: Path, scrub: Callable[[str], str]) -> Callable[..., str | None]:
    def run(*args: str, check: bool = True, timeout: float = 120.0) -> str | None:
        """git in ``repo``; with ``check`` false, a failure gives None instead of an error."""
        try:
            return git.git(*args, cwd=repo, timeout=timeout, scrub=scrub)
        except GitError:
            if check:
                raise
            return None

    return run
