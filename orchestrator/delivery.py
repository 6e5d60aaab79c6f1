"""Where a worker's agent works, and how its work is handed back.

Every worker holds two clones of the repository:

- the runtime's own, in a folder of root's: cloned from origin with the worker's credentials,
  the task's branch created there. The agent can read it but never writes to it.
- the agent's, ``/workspace/repo``: cloned from the runtime's by the agent's user, on the
  task's branch, with ``origin`` naming the repository's URL (and no credentials).

When the agent is done and its processes are gone, a step run as the agent's user makes a
snapshot of its work (snapshot.py: its commits and its working tree, in a repository of the
step's own); the runtime fetches that snapshot through a checked ``upload-pack``, also run as the
agent's user, commits there what was left uncommitted, and pushes the task's branch to the
literal ``REPO_URL``. Root never opens a path of the agent's tree, and no git reads a
configuration the agent could have written. When the push fails, the commits are saved on the
shared volume as a git bundle (``bundles/ID-attempt-N.bundle``), and the result says where.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import git, sandbox
from .errors import UserError
from .git import GitError
from .sandbox import AgentUser
from .store import OrchestrationDir
from .tasks import State, Task

TITLE_LIMIT = 72
# upload-pack is the part of git made to serve untrusted repositories; the agent's user reads the
# runtime's clone through it, which git would otherwise refuse as "dubious ownership".
UPLOAD_PACK = "git -c safe.directory=* upload-pack"
SNAPSHOT_SCRIPT = Path(__file__).with_name("snapshot.py")
# The committer of the snapshot commit, which only carries the agent's tree to the runtime.
_SNAPSHOT_IDENTITY = {
    "GIT_AUTHOR_NAME": "orchestrator", "GIT_AUTHOR_EMAIL": "orchestrator@localhost",
    "GIT_COMMITTER_NAME": "orchestrator", "GIT_COMMITTER_EMAIL": "orchestrator@localhost",
}  # fmt: skip
OriginAccess = Callable[[], contextlib.AbstractContextManager[object]]
Pusher = Callable[[Path, str], None]  # (the runtime's clone, the task's branch): to origin, or a GitError


@dataclass(frozen=True)
class StartPoint:
    """A dependency's work, which the task starts from: its pushed branch and head commit."""

    task_id: str
    branch: str
    commit: str
    bundle: str | None = None  # where the commits are when they never reached origin
    base: str | None = None  # for an interrupted attempt's work: where that attempt's branch started

    def to_json(self) -> dict[str, str]:
        data = {"task_id": self.task_id, "branch": self.branch, "commit": self.commit}
        return {**data, "bundle": self.bundle} if self.bundle else data


class Blocked(UserError):
    """The task cannot start from its dependencies' work (they conflict, or origin lacks it)."""


def start_points(
    task: Task, orch: OrchestrationDir, attempt: int | None, say: Callable[[str], None]
) -> list[StartPoint]:
    """Where the task's branch starts: where an interrupted attempt before it left off, else the
    work of the tasks it depends on. A dependency that changed nothing adds nothing; one that did
    not succeed blocks the task."""
    resumed = interrupted_work(task.id, orch, attempt, say)
    if resumed is not None:
        return [resumed]
    points = []
    for dep in task.depends_on:
        try:
            result = orch.load_result(dep)
        except UserError as exc:
            raise Blocked(f"it depends on {dep}, whose result cannot be read: {exc}") from None
        if result is None or not result.succeeded:
            how = "has no result" if result is None else f"ended {result.status.value}"
            raise Blocked(f"it depends on {dep}, which {how}")
        if result.branch and result.pushed and result.head_commit:
            points.append(StartPoint(dep, result.branch, result.head_commit))
    return points


def interrupted_work(
    task_id: str, orch: OrchestrationDir, attempt: int | None, say: Callable[[str], None]
) -> StartPoint | None:
    """What the attempt before this one handed back, when it was interrupted (orch queued this
    one to carry on from there): its pushed branch, or its bundle."""
    if not attempt or attempt < 2:
        return None
    try:
        earlier = orch.load_archived_result(task_id, attempt - 1)
    except UserError:
        return None
    if earlier is None or earlier.status is not State.INTERRUPTED or not earlier.branch or not earlier.head_commit:
        return None
    if not earlier.pushed and not earlier.bundle:
        return None
    bundle = None if earlier.pushed else earlier.bundle  # origin has it, or only the bundle does
    say(f"attempt {attempt - 1} was interrupted; carrying on from its work ({earlier.branch})")
    return StartPoint(task_id, earlier.branch, earlier.head_commit, bundle, earlier.base_commit)


@dataclass(frozen=True)
class Workspace:
    own: Path  # the runtime's clone
    agent: Path  # the agent's clone
    branch: str  # the task's branch, under a name origin does not have
    base: str  # where its work is counted from (REPO_BRANCH's head, or its dependencies' work)
    started_from: tuple[StartPoint, ...] = ()  # the dependencies' (or interrupted attempt's) work
    start: str = ""  # the commit the branch starts at: base, or an interrupted attempt's head
    user: AgentUser | None = None  # who the agent's clone belongs to


@dataclass(frozen=True)
class Delivery:
    base_commit: str
    head_commit: str
    commits: int
    files_changed: list[dict[str, object]] = field(default_factory=list)
    branch: str | None = None  # set when there was something to hand back
    pushed: bool = False
    bundle: str | None = None
    archive: str | None = None  # the agent's clone as a tar archive, when it could not be committed
    error: str | None = None  # why the work did not reach origin


def commit_message(task: Task, attempt: int | None) -> str:
    first = next((line.strip() for line in task.prompt.splitlines() if line.strip()), task.id)
    title = f"{task.id}: {first}"
    if len(title) > TITLE_LIMIT:
        title = title[: TITLE_LIMIT - 3].rstrip() + "..."
    return f"{title}\n\nWork of task {task.id} (attempt {attempt or 1}), committed by its worker.\n"


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


def make_agent_folder(folder: Path, user: AgentUser) -> None:
    """The agent's clone folder, made by the agent's user when it is not there (a workspace on
    tmpfs starts empty): a folder of its own, and nothing else."""
    if not folder.is_dir():
        proc = sandbox.agent_step(user, ["mkdir", "-p", "--", str(folder)], cwd="/", env=sandbox.isolated_git_env())
        if proc.returncode:
            raise GitError(f"{folder} could not be made for {user.name}: {proc.stderr.strip()}")
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != user.uid:
        raise GitError(f"{folder} must be a folder owned by {user.name}")


def prepare(
    *,
    url: str,
    branch: str,
    wanted: str,
    own: Path,
    agent: Path,
    user: AgentUser,
    agent_env: Mapping[str, str],
    git_env: Mapping[str, str],
    scrub: Callable[[str], str],
    say: Callable[[str], None],
    task_id: str = "",
    start_from: Sequence[StartPoint] = (),
    origin_access: OriginAccess = contextlib.nullcontext,
    mirror: Path | None = None,
    mirror_only: bool = False,
) -> Workspace:
    """Clone origin for the runtime, create the task's branch, and give the agent its clone.

    The branch starts from ``branch``, or from the work of the tasks in ``start_from``: the one
    dependency's head commit, or a merge of several made here (a conflict there: Blocked).
    ``origin_access`` is held while git talks to origin (the SSH key is on disk only then).
    ``mirror``, a local repository of origin's history (the control plane's), is borrowed from:
    origin sends only what it lacks; with ``mirror_only``, the clone is of the mirror alone (made
    as origin is now by the control plane), and origin is never asked.
    """
    make_agent_folder(agent, user)
    # Readable by the agent's user, which clones from it (the runtime's umask keeps the
    # shared volume's files from it).
    umask = os.umask(0o022)
    try:
        if mirror_only and mirror is not None:
            git.clone_of_mirror(mirror, branch, own, url)
        else:
            with origin_access():
                git.clone(url, branch, own, scrub=scrub, env=git_env, reference=mirror)
        start = _start(own, task_id, start_from, say) if start_from else git.head(own)
        # An attempt that carries on from an interrupted one counts its work from where that
        # one started: its branch holds the whole of it.
        resumed = start_from[0].base if len(start_from) == 1 else None
        base = resumed or start
        name = free_name(own, wanted)
        if name != wanted:
            say(f"origin has a branch {wanted} already (from an earlier batch?); this task's branch is {name}")
        git.git("branch", "--quiet", "--no-track", name, start, cwd=own)
    finally:
        os.umask(umask)
    _clone_for_agent(own, agent, name, url, user, scrub)
    return Workspace(own, agent, name, base, tuple(start_from), start, user)


def _start(own: Path, task_id: str, points: Sequence[StartPoint], say: Callable[[str], None]) -> str:
    """The commit the task starts from: its dependencies' work, merged when there are several."""
    for point in points:
        if point.bundle:
            # Work that never reached origin (a push that failed as the worker was stopped).
            fetched = git.try_git("fetch", "--quiet", "--no-tags", point.bundle, f"refs/heads/{point.branch}", cwd=own)
            if fetched is None or git.head(own, "FETCH_HEAD") != point.commit:
                raise Blocked(f"it starts from {point.task_id}'s work, but {point.bundle} does not hold it")
            continue
        origin = f"refs/remotes/origin/{point.branch}"
        if git.try_git("merge-base", "--is-ancestor", point.commit, origin, cwd=own) is None:
            raise Blocked(
                f"it starts from {point.task_id}'s work, but origin's {point.branch} does not hold {point.commit[:12]}"
            )
    first, *others = points
    git.git("checkout", "--quiet", "--detach", first.commit, cwd=own)
    for point in others:
        title = f"Start of {task_id}: the work of {point.task_id} ({point.branch})"
        if git.try_git("merge", "--no-ff", "--no-edit", "--message", title, point.commit, cwd=own) is None:
            files = (git.try_git("diff", "--name-only", "--diff-filter=U", cwd=own) or "").split()
            git.try_git("merge", "--abort", cwd=own)
            merged = ", ".join(p.task_id for p in points[: points.index(point)])
            raise Blocked(
                f"the work of its dependencies conflicts: {point.task_id} and {merged} both change "
                f"{', '.join(files) or 'the same lines'}"
            )
    names = " and ".join(f"{p.task_id} ({p.branch})" for p in points)
    say(f"starting from the work of {names}")
    return git.head(own)


def _clone_for_agent(
    own: Path, agent: Path, branch: str, url: str, user: AgentUser, scrub: Callable[[str], str]
) -> None:
    """The agent's clone, made by the agent's user from the runtime's. It borrows the runtime's
    objects (alternates), so that a large history costs the agent's bounded space nothing."""
    steps = [
        ["git", "init", "--quiet", f"--initial-branch={branch}"],
        ["sh", "-c", 'printf "%s\\n" "$1" > .git/objects/info/alternates', "sh", str(own / ".git" / "objects")],
        ["git", "remote", "add", "origin", url],
        # origin's branches as the runtime saw them, and the task's branch, checked out.
        ["git", "fetch", "--quiet", "--no-tags", "--update-head-ok", f"--upload-pack={UPLOAD_PACK}", "--", str(own),
         "+refs/remotes/origin/*:refs/remotes/origin/*", f"+refs/heads/{branch}:refs/heads/{branch}"],
        ["git", "reset", "--quiet", "--hard"],
    ]  # fmt: skip
    env = sandbox.isolated_git_env()
    for argv in steps:
        proc = sandbox.agent_step(user, argv, cwd=agent, env=env, timeout=git.CLONE_TIMEOUT)
        if proc.returncode:
            message = scrub(proc.stderr.strip() or f"exit code {proc.returncode}")
            raise GitError(f"the agent's clone could not be made (`{' '.join(argv[:2])}`): {message}")


# What git says when the server could not be reached, as opposed to refusing the push.
_UNREACHABLE = ("could not resolve host", "connection refused", "connection timed out", "operation timed out",
                "connection reset", "remote end hung up unexpectedly", "early eof", "failed to connect",
                "no route to host", "network is unreachable", "could not read from remote repository",
                "unable to access")  # fmt: skip
_REFUSED = ("permission denied", "authentication failed", "host key verification failed", "protected branch",
            "pre-receive hook declined", "rejected")  # fmt: skip
# An HTTP refusal in git's words ("The requested URL returned error: 403"); not those digits
# inside a number, such as the server's port (a URL on port 54035 is not refused).
_REFUSED_STATUS = re.compile(r"(?<![\d:])(?:401|403)(?!\d)")
PUSH_BACKOFF = (2.0, 4.0, 8.0, 15.0, 30.0)


def unreachable(error: GitError) -> bool:
    """Whether a push failed because the server was away, which may pass, rather than refused."""
    text = str(error).lower()
    refused = any(m in text for m in _REFUSED) or _REFUSED_STATUS.search(text) is not None
    return any(m in text for m in _UNREACHABLE) and not refused


def hand_back(
    workspace: Workspace,
    message: str,
    bundle_path: Path,
    *,
    url: str,
    git_env: Mapping[str, str],
    scrub: Callable[[str], str],
    say: Callable[[str], None],
    retry_for: float = 0.0,
    stopping: threading.Event | None = None,
    scratch: Path | None = None,
    origin_access: OriginAccess = contextlib.nullcontext,
    pusher: Pusher | None = None,
) -> Delivery:
    """Take the agent's commits and working tree into the runtime's clone, commit what was left
    uncommitted, and push the task's branch; bundle it when the push fails.

    The branch is pushed from wherever the agent left HEAD: an agent that switched branches
    still hands its work back under the task's name. Call it once the agent's processes are
    gone, so that nothing changes the files while they are read.
    """
    own, branch, base = workspace.own, workspace.branch, workspace.base
    tip = _take_agent_work(workspace, message, say, scratch or own.parent)
    commits = git.count_commits(own, base, tip)
    if commits == 0:
        say("no changes to hand back")
        return Delivery(base_commit=base, head_commit=tip, commits=0)
    files = git.changed_files(own, base, tip)
    git.git("update-ref", f"refs/heads/{branch}", tip, cwd=own)
    done = Delivery(base_commit=base, head_commit=tip, commits=commits, files_changed=files, branch=branch)
    say(f"pushing {branch} ({commits} commit{'s' if commits != 1 else ''}, {len(files)} file(s) changed)")
    try:
        with origin_access():
            _push(own, url, branch, scrub, git_env, say, retry_for, stopping or threading.Event(), pusher)
    except GitError as exc:
        push_error = f"the push of {branch} failed: {exc}"
        try:
            bundle_path.parent.mkdir(parents=True, exist_ok=True)
            git.bundle(own, bundle_path, branch, base)
        except (GitError, OSError) as bundle_exc:
            return replace(done, error=f"{push_error}; saving a bundle failed too: {bundle_exc}")
        say(f"the push failed; the commits are saved in {bundle_path}")
        return replace(done, bundle=str(bundle_path), error=f"{push_error}; the work is saved in {bundle_path}")
    return replace(done, pushed=True)


def _push(
    repo: Path,
    url: str,
    branch: str,
    scrub: Callable[[str], str],
    env: Mapping[str, str],
    say: Callable[[str], None],
    retry_for: float,
    stopping: threading.Event,
    pusher: Pusher | None = None,
) -> None:
    """Push, and while the server cannot be reached, try again for up to ``retry_for`` seconds
    (a server that restarts, a network that comes back); never once the worker is stopping."""
    deadline = time.monotonic() + retry_for
    for attempt in itertools.count():
        try:
            if pusher is not None:
                pusher(repo, branch)  # through the control plane's git channel
            else:
                git.push(repo, url, branch, scrub=scrub, env=env)
            return
        except GitError as exc:
            pause = PUSH_BACKOFF[min(attempt, len(PUSH_BACKOFF) - 1)]
            if not unreachable(exc) or stopping.is_set() or time.monotonic() + pause > deadline:
                raise
            say(f"the push failed, the server is out of reach; trying again in {pause:.0f} s")
            if stopping.wait(pause):
                raise


def _take_agent_work(workspace: Workspace, message: str, say: Callable[[str], None], scratch: Path) -> str:
    """The commit that holds the agent's work, made in the runtime's clone from a snapshot the
    agent's user made (see snapshot.py); the objects it brings are checked as they come in."""
    own, user = workspace.own, workspace.user
    fallback = workspace.start or workspace.base
    if user is None:
        raise GitError("the agent's user is unknown: its work cannot be read")
    # A folder of root's, made now that none of the agent's processes runs, which the step (the
    # agent's user) may write into; its name is new, so nothing of the agent's is there.
    parent = scratch / f"handback-{secrets.token_hex(8)}"
    parent.mkdir(mode=0o700)
    os.chmod(parent, 0o777)
    into = parent / "snapshot.git"
    step = sandbox.agent_step(
        user,
        ["/usr/bin/python3", "-E", "-s", "-P", "-", "--work-tree", str(workspace.agent), "--into", str(into),
         "--fallback", fallback, "--objects", str(own / ".git" / "objects")],
        cwd="/", env=sandbox.isolated_git_env(_SNAPSHOT_IDENTITY), timeout=git.PUSH_TIMEOUT,
        input=SNAPSHOT_SCRIPT.read_text(encoding="utf-8"),
    )  # fmt: skip
    try:
        found = json.loads(step.stdout.strip().splitlines()[-1]) if step.stdout.strip() else {}
    except ValueError:
        found = {}
    if not isinstance(found, dict) or step.returncode or "base" not in found:
        detail = found.get("error") if isinstance(found, dict) else None
        raise GitError(f"the agent's work could not be read: {detail or step.stderr.strip()[-500:] or 'no answer'}")
    for problem in found.get("problems") or []:
        say(str(problem)[:2000])
    try:
        git.git("-c", "transfer.fsckObjects=true", "fetch", "--quiet", "--no-tags",
                f"--upload-pack={sandbox.upload_pack_as(user)}", "--", str(into), "refs/heads/snapshot",
                cwd=own, timeout=git.PUSH_TIMEOUT)  # fmt: skip
    finally:
        sandbox.kill_all(user.uid)
        # The step's files are the agent's user's: that user removes them.
        sandbox.agent_step(user, ["rm", "-rf", "--", str(into)], cwd="/", env=sandbox.isolated_git_env())
    snapshot = git.git("rev-parse", "--verify", "FETCH_HEAD^{commit}", cwd=own).strip()
    agent_head = git.git("rev-parse", "--verify", f"{snapshot}^1^{{commit}}", cwd=own).strip()
    tree = git.git("rev-parse", f"{snapshot}^{{tree}}", cwd=own).strip()
    if tree == git.git("rev-parse", f"{agent_head}^{{tree}}", cwd=own).strip():
        return agent_head
    say("committed the agent's uncommitted changes")
    return git.git("commit-tree", tree, "-p", agent_head, "-m", message, cwd=own).strip()


def salvage(workspace: Workspace, dest: Path, reason: str, say: Callable[[str], None]) -> Delivery:
    """When the agent's work cannot be committed: its clone, saved as a tar archive on the
    volume (a workspace on tmpfs is gone once the container stops)."""
    base = workspace.base
    failed = f"its work could not be committed: {reason}"
    if workspace.user is None:
        return Delivery(base, base, 0, error=failed)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        problem = sandbox.archive_as(workspace.user, workspace.agent, dest)
    except OSError as exc:
        problem = exc.strerror or str(exc)
    if problem is not None:
        return Delivery(base, base, 0, error=f"{failed}; saving the agent's clone failed too: {problem}")
    say(f"the agent's clone is saved in {dest}")
    return Delivery(base, base, 0, archive=str(dest), error=f"{failed}; the agent's clone is saved in {dest}")
