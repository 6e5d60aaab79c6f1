"""What a worker hands back: its work committed on the task's branch and pushed to origin.

When the push fails, the commits are not lost: they are saved on the shared volume as a
git bundle (``bundles/ID-attempt-N.bundle``), and the result says where.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import git
from .git import GitError
from .tasks import Task

TITLE_LIMIT = 72


@dataclass(frozen=True)
class Checkout:
    """The worker's clone, on the task's branch, and where that branch started."""

    repo: Path
    branch: str
    base: str


@dataclass(frozen=True)
class Delivery:
    base_commit: str
    head_commit: str
    commits: int
    files_changed: list[dict[str, object]] = field(default_factory=list)
    branch: str | None = None  # set when there was something to hand back
    pushed: bool = False
    bundle: str | None = None
    error: str | None = None  # why the work did not reach origin


def commit_message(task: Task, attempt: int | None) -> str:
    first = next((line.strip() for line in task.prompt.splitlines() if line.strip()), task.id)
    title = f"{task.id}: {first}"
    if len(title) > TITLE_LIMIT:
        title = title[: TITLE_LIMIT - 3].rstrip() + "..."
    return f"{title}\n\nWork of task {task.id} (attempt {attempt or 1}), committed by its worker.\n"


def start_branch(repo: Path, wanted: str, say: Callable[[str], None]) -> Checkout:
    """Check out the task's branch, under a name origin does not have yet (see free_name)."""
    base = git.head(repo)
    branch = free_name(repo, wanted)
    if branch != wanted:
        say(f"origin has a branch {wanted} already (from an earlier batch?); this task's branch is {branch}")
    git.git("checkout", "--quiet", "-b", branch, cwd=repo)
    return Checkout(repo, branch, base)


def free_name(repo: Path, wanted: str) -> str:
    """``wanted``, or ``wanted-2``, ``wanted-3``... when origin has it: a push must never need force.

    The clone has just fetched every branch of origin, so its remote-tracking refs say what is taken.
    """
    listing = git.git("for-each-ref", "--format=%(refname:lstrip=3)", "refs/remotes/origin/", cwd=repo)
    taken = set(listing.split())
    name, number = wanted, 1
    while name in taken:
        number += 1
        name = f"{wanted}-{number}"
    return name


def deliver(
    checkout: Checkout,
    message: str,
    bundle_path: Path,
    *,
    scrub: Callable[[str], str],
    say: Callable[[str], None],
) -> Delivery:
    """Commit what is left uncommitted, then push the branch; bundle it when the push fails.

    The branch is pushed from wherever the agent left HEAD: an agent that switched branches
    still hands its work back under the task's name.
    """
    repo, branch, base = checkout.repo, checkout.branch, checkout.base
    if git.commit_all(repo, message):
        say(f"committed the agent's uncommitted changes on {branch}")
    tip = git.head(repo)
    commits = git.count_commits(repo, base, tip)
    if commits == 0:
        say("no changes to hand back")
        return Delivery(base_commit=base, head_commit=tip, commits=0)
    files = git.changed_files(repo, base, tip)
    git.git("update-ref", f"refs/heads/{branch}", tip, cwd=repo)
    done = Delivery(base_commit=base, head_commit=tip, commits=commits, files_changed=files, branch=branch)
    say(f"pushing {branch} ({commits} commit{'s' if commits != 1 else ''}, {len(files)} file(s) changed)")
    try:
        git.push(repo, branch, scrub=scrub)
    except GitError as exc:
        push_error = f"the push of {branch} failed: {exc}"
        try:
            bundle_path.parent.mkdir(parents=True, exist_ok=True)
            git.bundle(repo, bundle_path, branch, base)
        except (GitError, OSError) as bundle_exc:
            return replace(done, error=f"{push_error}; saving a bundle failed too: {bundle_exc}")
        say(f"the push failed; the commits are saved in {bundle_path}")
        return replace(done, bundle=str(bundle_path), error=f"{push_error}; the work is saved in {bundle_path}")
    return replace(done, pushed=True)
