"""Git and SSH set-up shared by the manager and the workers."""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path

from .errors import UserError

log = logging.getLogger("orchestrator.git")

CLONE_TIMEOUT = 900.0
DEFAULT_USER_NAME = "Claude Orchestrator"
DEFAULT_USER_EMAIL = "orchestrator@localhost"

SSH_CONFIG = """\
# Written by the orchestrator. Host keys are accepted on first use and checked afterwards.
Host *
    IdentityFile ~/.ssh/id_ed25519
    IdentitiesOnly yes
    StrictHostKeyChecking accept-new
    UserKnownHostsFile ~/.ssh/known_hosts
"""


class GitError(UserError):
    pass


def git(
    *args: str,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float = 120.0,
    scrub: Callable[[str], str] = lambda s: s,
) -> str:
    """Run ``git ARGS``; a failure raises GitError with git's own message, scrubbed of secrets."""
    argv = ["git", *args]
    log.debug("run %s", scrub(shlex.join(argv)))
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise GitError(f"`{scrub(shlex.join(argv))}` did not finish within {timeout:.0f} s") from None
    if proc.returncode:
        message = scrub(proc.stderr.strip() or proc.stdout.strip() or f"exit code {proc.returncode}")
        raise GitError(f"`{scrub(shlex.join(argv))}` failed: {message}")
    return proc.stdout


def configure_identity(name: str | None, email: str | None) -> None:
    git("config", "--global", "user.name", name or DEFAULT_USER_NAME)
    git("config", "--global", "user.email", email or DEFAULT_USER_EMAIL)


def prepare_ssh(home: Path) -> None:
    """~/.ssh with the orchestrator's client config; the key itself is copied in by whoever starts us."""
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    os.chmod(ssh_dir, 0o700)
    config = ssh_dir / "config"
    if not config.exists():
        config.write_text(SSH_CONFIG, encoding="utf-8")
        os.chmod(config, 0o600)


def clone(url: str, branch: str, dest: Path, scrub: Callable[[str], str]) -> None:
    git("clone", "--branch", branch, "--", url, str(dest), timeout=CLONE_TIMEOUT, scrub=scrub)


def host_config(key: str) -> str | None:
    """A value of the user's own git configuration, if git and the value exist."""
    try:
        proc = subprocess.run(["git", "config", "--get", key], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() or None if proc.returncode == 0 else None
