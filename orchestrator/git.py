"""Git and SSH set-up shared by the manager and the workers."""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

from . import environment
from .credential import HELPER
from .errors import UserError
from .secrets import PINNED_KNOWN_HOSTS_NAME

log = logging.getLogger("orchestrator.git")

CLONE_TIMEOUT = 900.0
PUSH_TIMEOUT = 600.0

SSH_CONFIG = """\
# Written by the orchestrator. Host keys are accepted on first use and checked afterwards.
Host *
    IdentityFile ~/.ssh/id_ed25519
    IdentitiesOnly yes
    BatchMode yes
    StrictHostKeyChecking accept-new
    UserKnownHostsFile ~/.ssh/known_hosts
"""

SSH_CONFIG_PINNED = """\
# Written by the orchestrator. Only the host keys in known_hosts_pinned (given by the user) are trusted.
Host *
    IdentityFile ~/.ssh/id_ed25519
    IdentitiesOnly yes
    BatchMode yes
    StrictHostKeyChecking yes
    UserKnownHostsFile ~/.ssh/known_hosts_pinned
"""


class GitError(UserError):
    pass


def git(
    *args: str,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float = 120.0,
    scrub: Callable[[str], str] = lambda s: s,
    env: Mapping[str, str] | None = None,
) -> str:
    """Run ``git ARGS``; a failure raises GitError with git's own message, scrubbed of secrets.

    ``env`` adds variables for this git alone (the worker runtime's git token, say).
    """
    argv = ["git", *args]
    log.debug("run %s", scrub(shlex.join(argv)))
    # Nobody is there to type a password: git fails at once instead of waiting for one.
    child_env = {**os.environ, **(env or {}), "GIT_TERMINAL_PROMPT": "0"}
    try:
        proc = subprocess.run(
            argv,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            env=child_env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise GitError(f"`{scrub(shlex.join(argv))}` did not finish within {timeout:.0f} s") from None
    if proc.returncode:
        message = scrub(proc.stderr.strip() or proc.stdout.strip() or f"exit code {proc.returncode}")
        raise GitError(f"`{scrub(shlex.join(argv))}` failed: {message}")
    return proc.stdout


def try_git(*args: str, cwd: str | os.PathLike[str] | None = None, timeout: float = 120.0) -> str | None:
    """``git ARGS``'s output, or None when it fails (for questions such as "is this an ancestor?")."""
    try:
        return git(*args, cwd=cwd, timeout=timeout)
    except GitError:
        return None


def configure_identity(name: str | None, email: str | None) -> None:
    git("config", "--global", "user.name", name or environment.GIT_USER_NAME.require({}))
    git("config", "--global", "user.email", email or environment.GIT_USER_EMAIL.require({}))


def prepare_ssh(home: Path) -> None:
    """~/.ssh with the orchestrator's client config; the key itself is copied in by whoever starts us."""
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    os.chmod(ssh_dir, 0o700)
    config = ssh_dir / "config"
    if not config.exists():
        pinned = (home / PINNED_KNOWN_HOSTS_NAME).exists()
        config.write_text(SSH_CONFIG_PINNED if pinned else SSH_CONFIG, encoding="utf-8")
        os.chmod(config, 0o600)


def configure_credentials() -> None:
    """Let git answer HTTPS password prompts with $GIT_TOKEN, for the repository's URL only
    (see credential.py); useHttpPath makes git name the repository it asks for."""
    git("config", "--global", "credential.helper", HELPER)
    git("config", "--global", "credential.useHttpPath", "true")


def clone(
    url: str,
    branch: str,
    dest: Path,
    scrub: Callable[[str], str],
    env: Mapping[str, str] | None = None,
    reference: Path | None = None,
) -> None:
    """Clone ``url``; with ``reference`` (a local repository of the same history, the control
    plane's mirror), only what it lacks comes from origin, and the clone borrows the rest from the
    reference (alternates) rather than copy it: a copy (--dissociate) repacks the whole history,
    which took 26 s for 200 MB here, where borrowing takes 0.2 s."""
    borrow = ["--reference-if-able", str(reference)] if reference else []
    git("clone", *borrow, "--branch", branch, "--", url, str(dest), timeout=CLONE_TIMEOUT, scrub=scrub, env=env)


def clone_of_mirror(mirror: Path, branch: str, dest: Path, url: str) -> None:
    """A clone of the control plane's mirror alone, borrowing its objects (``--shared``: no copy
    of the history), whose ``origin`` names ``url`` as any clone of origin would; its
    remote-tracking branches are origin's as the mirror holds them."""
    # The mirror is the control plane's (another user's), read through upload-pack, which git
    # otherwise refuses as "dubious ownership"; upload-pack is made to serve repositories of others.
    git("clone", "--quiet", "--shared", "--upload-pack=git -c safe.directory=* upload-pack", "--branch", branch,
        "--", str(mirror), str(dest), timeout=CLONE_TIMEOUT)  # fmt: skip
    git("remote", "set-url", "origin", url, cwd=dest)


def task_branch(prefix: str, task_id: str, attempt: int | None) -> str:
    """orchestrator/task-001; a retry pushes a branch of its own (never over the earlier one)."""
    name = f"{prefix}{task_id}"
    return name if not attempt or attempt == 1 else f"{name}-attempt-{attempt}"


def head(repo: Path, ref: str = "HEAD") -> str:
    return git("rev-parse", "--verify", f"{ref}^{{commit}}", cwd=repo).strip()


def commit_all(repo: Path, message: str) -> bool:
    """Commit every change in the working tree, new files included; False when there is none."""
    if not git("status", "--porcelain", cwd=repo).strip():
        return False
    git("add", "--all", cwd=repo)
    git("commit", "--quiet", "--no-verify", "--message", message, cwd=repo)
    return True


def count_commits(repo: Path, base: str, tip: str) -> int:
    return int(git("rev-list", "--count", f"{base}..{tip}", cwd=repo).strip() or 0)


def changed_files(repo: Path, base: str, tip: str) -> list[dict[str, object]]:
    """Files changed between two commits, with added and deleted line counts (None for binary files)."""
    changes: list[dict[str, object]] = []
    for line in git("diff", "--numstat", "-z", "--no-renames", base, tip, cwd=repo).split("\0"):
        if not line.strip():
            continue
        added, deleted, path = line.split("\t", 2)
        changes.append({
            "path": path,
            "added": int(added) if added.isdigit() else None,
            "deleted": int(deleted) if deleted.isdigit() else None,
        })  # fmt: skip
    return changes


def push(repo: Path, url: str, branch: str, scrub: Callable[[str], str], env: Mapping[str, str] | None = None) -> None:
    """Push the local branch to ``url`` under the same name. Never forced.

    The URL is given literally, so no remote or pushurl in the repository's configuration
    decides where the work (and the credentials) go."""
    git("push", "--quiet", "--", url, f"refs/heads/{branch}:refs/heads/{branch}", cwd=repo, timeout=PUSH_TIMEOUT,
        scrub=scrub, env=env)  # fmt: skip


def bundle(repo: Path, dest: Path, branch: str, base: str) -> None:
    """Save the branch's commits since ``base`` in a file (``git fetch FILE BRANCH`` gets them back)."""
    git("bundle", "create", "--quiet", str(dest), f"refs/heads/{branch}", f"^{base}", cwd=repo, timeout=PUSH_TIMEOUT)


def host_config(key: str) -> str | None:
    """A value of the user's own git configuration, if git and the value exist."""
    try:
        proc = subprocess.run(["git", "config", "--get", key], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() or None if proc.returncode == 0 else None
