"""The SSH git server fixture itself: pushing with the authorized key works, the other key is refused."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support.git_servers import SshGitServer

IDENTITY = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def git(
    server: SshGitServer, *args: str, key: Path | None = None, cwd: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **IDENTITY, "GIT_SSH_COMMAND": server.ssh_command(key)}
    proc = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False)
    if check and proc.returncode:
        raise AssertionError(f"git {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def test_push_a_branch_over_ssh(ssh_git_server: SshGitServer, tmp_path: Path) -> None:
    url = ssh_git_server.repo("push")
    work = tmp_path / "work"
    git(ssh_git_server, "clone", "-q", url, str(work))
    assert (work / "lib" / "main.dart").is_file()

    (work / "notes").mkdir()
    (work / "notes" / "todo.md").write_text("- dark mode\n")
    git(ssh_git_server, "checkout", "-q", "-b", "feature/dark-mode", cwd=work)
    git(ssh_git_server, "add", "-A", cwd=work)
    git(ssh_git_server, "commit", "-qm", "notes", cwd=work)
    git(ssh_git_server, "push", "-q", "origin", "feature/dark-mode", cwd=work)

    head = git(ssh_git_server, "rev-parse", "HEAD", cwd=work).stdout.strip()
    branches = ssh_git_server.branches("push")
    assert branches["feature/dark-mode"] == head
    assert set(branches) == {"main", "feature/dark-mode"}
    assert ssh_git_server.show("push", "feature/dark-mode", "notes/todo.md") == "- dark mode\n"
    assert ssh_git_server.show("push", "main", "README.md") == "# App\n"


def test_an_unauthorized_key_is_refused(ssh_git_server: SshGitServer) -> None:
    url = ssh_git_server.repo("refused")
    proc = git(ssh_git_server, "ls-remote", url, key=ssh_git_server.wrong_key, check=False)
    assert proc.returncode != 0
    assert "Permission denied (publickey)" in proc.stderr
    assert "refs/heads/main" in git(ssh_git_server, "ls-remote", url).stdout
