"""``orch push BRANCH``: the manager hands back work of its own (a merge it made, a conflict it
resolved), which the control plane pushes, never forced, to the integration branch or under the
branch prefix only.

The manager holds no credential, and its clone is its own: the control plane never runs git in
it (a clone's configuration can run commands: ``core.alternateRefsCommand``, for one). The manager
makes a bundle of the branch as its own user, in its own workspace; the control plane reads that
file, and that file alone, as data: opened without following links, copied, verified against its
own clone, its objects checked as they come in (``transfer.fsckObjects``), then pushed.

In the original layout (``run.py --manager-docker-socket``) the manager holds the credentials,
and ``orch push`` pushes from its clone directly, with the same rules.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from . import git
from .errors import InvalidInput, UserError

HANDOVER_DIR = ".orchestrator-handover"  # in the manager's workspace
BUNDLE_LIMIT = 2 * 1024**3  # what a hand-over may weigh


def check_target(branch: str, prefix: str, integration: str) -> str:
    """The only branches the manager may push: the integration branch, and those under the prefix."""
    if git.try_git("check-ref-format", "--branch", branch) is None:
        raise InvalidInput(f"{branch!r} is not a branch name git takes")
    if branch != integration and not branch.startswith(prefix):
        raise InvalidInput(
            f"the manager pushes {integration} or branches under {prefix} only, not {branch} (your repository's other "
            "branches are yours to change, not the orchestration's)"
        )
    return branch


def make_bundle(clone: Path, branch: str) -> Path:
    """The manager's side: the branch's commits that origin (its mirror) does not have, as a file."""
    folder = clone.parent / HANDOVER_DIR
    folder.mkdir(exist_ok=True)
    dest = folder / f"{branch.replace('/', '_')}.bundle"
    with contextlib.suppress(FileNotFoundError):
        dest.unlink()
    if git.try_git("rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", cwd=clone) is None:
        raise UserError(f"your clone ({clone}) has no branch {branch}")
    new = git.git("rev-list", "--count", f"refs/heads/{branch}", "--not", "--remotes=origin", cwd=clone).strip()
    if new == "0":
        raise UserError(f"origin has every commit of your {branch} already: nothing to push (`git fetch origin` "
                        "shows what it has)")  # fmt: skip
    git.git("bundle", "create", "--quiet", str(dest), f"refs/heads/{branch}", "--not", "--remotes=origin", cwd=clone,
            timeout=git.PUSH_TIMEOUT)  # fmt: skip
    return dest


def read_bundle(handed: Path, root: Path) -> Path:
    """A copy of the manager's bundle, read as data: a plain file inside ``root`` (the manager's
    workspace, read-only here), never through a link, bounded in size."""
    if handed.name != handed.as_posix().rsplit("/", 1)[-1] or handed.parent.name != HANDOVER_DIR:
        raise InvalidInput(f"{handed} is not a hand-over of the manager's")
    # The folder and the file alike are opened without following a link: the manager's workspace
    # is the manager's, and a link there could lead to a file of the control plane's own.
    try:
        folder = os.open(root / HANDOVER_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            # Not waiting on a FIFO's writer either (O_NONBLOCK: a FIFO is refused below).
            fd = os.open(handed.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder)
        finally:
            os.close(folder)
    except OSError as exc:
        raise UserError(f"the hand-over {handed} cannot be read: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as source:
        info = os.fstat(source.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > BUNDLE_LIMIT:
            raise UserError(f"the hand-over {handed} is not a file of at most {BUNDLE_LIMIT // 1024**3} GiB")
        out = tempfile.NamedTemporaryFile(prefix="handover-", suffix=".bundle", delete=False)  # noqa: SIM115
        with out:
            # Bounded as it is read too: the manager may make the file grow after fstat.
            copied = 0
            while chunk := source.read(1024 * 1024):
                copied += len(chunk)
                if copied > BUNDLE_LIMIT:
                    out.close()
                    os.unlink(out.name)
                    raise UserError(f"the hand-over {handed} grew over {BUNDLE_LIMIT // 1024**3} GiB as it was read")
                out.write(chunk)
    return Path(out.name)


def push(
    work: Path,
    bundle: Path,
    branch: str,
    *,
    url: str,
    env: dict[str, str],
    scrub: Callable[[str], str],
) -> str:
    """Take ``branch`` from the bundle into the control plane's clone, and push it to origin as a
    fast-forward of what origin has (or as a new branch); what was done, in words."""
    git.git("fetch", "--quiet", "--prune", "origin", cwd=work, timeout=git.PUSH_TIMEOUT, scrub=scrub, env=env)
    try:
        git.git("bundle", "verify", "--quiet", str(bundle), cwd=work)
    except git.GitError as exc:
        raise UserError(f"the hand-over of {branch} does not fit origin's history: {exc}") from None
    handed = "refs/orchestrator/handover"
    git.git("-c", "transfer.fsckObjects=true", "fetch", "--quiet", "--no-tags", "--", str(bundle),
            f"+refs/heads/{branch}:{handed}", cwd=work, timeout=git.PUSH_TIMEOUT)  # fmt: skip
    tip = git.head(work, handed)
    theirs = git.try_git("rev-parse", "--verify", "--quiet", f"refs/remotes/origin/{branch}^{{commit}}", cwd=work)
    if theirs and git.try_git("merge-base", "--is-ancestor", theirs.strip(), tip, cwd=work) is None:
        raise UserError(
            f"origin's {branch} has commits your {branch} does not: fetch (`git fetch origin`) and merge them first; "
            "nothing is ever force-pushed"
        )
    if theirs and theirs.strip() == tip:
        return f"origin's {branch} holds it already"
    git.git("push", "--quiet", "--", url, f"{tip}:refs/heads/{branch}", cwd=work, timeout=git.PUSH_TIMEOUT,
            scrub=scrub, env=env)  # fmt: skip
    count = git.count_commits(work, theirs.strip(), tip) if theirs else None
    return f"pushed {branch} to origin" + (f" ({count} commit{'s' if count != 1 else ''})" if count else "")
