"""The agent's user inside a worker, and keeping it in its place.

A worker runs two users. The runtime (root, with only the capabilities to change user and
to signal: ``--cap-drop ALL --cap-add SETUID,SETGID,KILL``, ``no-new-privileges``) holds the
secrets, writes the shared volume and hands the work back. The agent (user ``agent``) runs
Claude Code in its clone; it has no capability, no secret in its environment, and cannot read
the runtime's files, its ``/proc/PID/environ`` or ``/orchestration``.

Every process the agent starts runs as its user, whatever it does to its process group or
session, so the runtime finds them all by user id and ends them.
"""

from __future__ import annotations

import os
import pwd
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

DEFAULT_AGENT_USER = "agent"
KILL_ROUNDS = 200  # a fork bomb under the pids limit is gone long before this
KILL_PAUSE = 0.05
# What the runtime's own commands (git, its credential helper, ssh) are looked up in: folders
# that only root can write. The image's PATH starts with the SDK's folders, which the agent owns
# (it fills the SDK's cache): the agent gets that PATH, the root runtime never uses it.
RUNTIME_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# A home that does not exist: git run on the agent's data finds no ~/.gitconfig, no XDG folder.
NO_HOME = "/nonexistent"
# The agent's processes are the first the OOM killer takes: a memory hog must not cost the
# runtime that writes the result.
AGENT_OOM_SCORE = 1000


@dataclass(frozen=True)
class AgentUser:
    name: str
    uid: int
    gid: int
    home: Path

    @classmethod
    def named(cls, name: str) -> AgentUser:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise UserError(f"the agent's user {name!r} does not exist in this image") from None
        if entry.pw_uid == 0:
            raise UserError(f"the agent's user {name!r} is root; the agent must run as a user of its own")
        return cls(name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir))

    def environment(self, base: Mapping[str, str]) -> dict[str, str]:
        return {**base, "HOME": str(self.home), "USER": self.name, "LOGNAME": self.name}


def isolated_git_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment of a git that reads what the agent made: no configuration of the
    system, of a user or of an XDG folder is read (the agent could have written any of them),
    nothing is inherited, and git never waits for a password."""
    return {
        "PATH": RUNTIME_PATH,
        "HOME": NO_HOME,
        "LANG": "C.UTF-8",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_ATTR_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        **(extra or {}),
    }


def upload_pack_as(user: AgentUser) -> str:
    """``--upload-pack`` for the runtime to read a repository of the agent's user: run as that
    user (nothing in the repository runs with the runtime's privileges), with no configuration
    but the repository's own, of which upload-pack honours no command (git reads
    ``uploadpack.packObjectsHook`` from the system and global files only, which are cut off here).
    git runs it with ``sh -c``: GIT_PROTOCOL, which git sets for it, is passed on."""
    env = " ".join(f"{name}={value}" for name, value in isolated_git_env().items())
    return (
        f'/usr/bin/env -i {env} GIT_PROTOCOL="$GIT_PROTOCOL" {shlex.join(as_user_argv(user, []))} '
        "/usr/bin/git -c safe.directory=* upload-pack"
    )


def as_user_argv(user: AgentUser, argv: Sequence[str], cwd: str | os.PathLike[str] | None = None) -> list[str]:
    """``argv`` started by root as the agent's user: no group but its own, no capability (not
    even inheritable), nothing it starts able to gain privileges. ``cwd`` is entered as that
    user (root may not enter the agent's folders: it has no capability to read past modes)."""
    chdir = ["/usr/bin/env", f"--chdir={cwd}"] if cwd is not None else []
    return [
        "/usr/bin/setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups", "--inh-caps=-all",
        "--no-new-privs", *chdir, *argv,
    ]  # fmt: skip


def agent_argv(user: AgentUser, argv: Sequence[str], cwd: str | os.PathLike[str]) -> list[str]:
    """The agent's own run: as the agent's user, and the OOM killer's first choice (raising a
    score needs no capability; the runtime watches that it stays raised, see ``lowered_oom_score``)."""
    return ["/usr/bin/choom", "-n", str(AGENT_OOM_SCORE), "--", *as_user_argv(user, argv, cwd)]


def lowered_oom_score(uid: int) -> list[int]:
    """Processes of ``uid`` whose OOM score was lowered below AGENT_OOM_SCORE: an agent that wants
    the OOM killer to take the runtime instead of itself."""
    lowered = []
    for pid in processes_of(uid):
        try:
            with open(f"/proc/{pid}/oom_score_adj", encoding="ascii") as handle:
                if int(handle.read().strip()) < AGENT_OOM_SCORE:
                    lowered.append(pid)
        except (OSError, ValueError):
            continue  # gone meanwhile
    return lowered


def check_runtime_can_switch(user: AgentUser) -> None:
    """The runtime must be root to start the agent as its own user."""
    if os.geteuid() != 0:
        raise UserError(
            f"the worker runtime runs as uid {os.geteuid()}, not root: it cannot start the agent as "
            f"{user.name}; start the worker as root (the worker image does)"
        )


def run_as(
    user: AgentUser,
    argv: Sequence[str],
    *,
    cwd: str | os.PathLike[str],
    env: Mapping[str, str],
    timeout: float = 120.0,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command of the runtime's as the agent's user (a clone for it, a snapshot of its
    work); one that outlives ``timeout`` is a UserError."""
    try:
        return subprocess.run(
            as_user_argv(user, argv, cwd),
            cwd="/",
            env=dict(env),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise UserError(f"`{shlex.join(argv)}`, run as {user.name}, did not finish within {timeout:.0f} s") from None


def archive_as(user: AgentUser, folder: Path, dest: Path, *, timeout: float = 600.0) -> str | None:
    """``folder`` as a gzipped tar archive in ``dest`` (a new file), made by the agent's user into
    a file the runtime opened: the runtime writes where the agent cannot, and reads nothing of the
    agent's tree. Returns None when done, else what went wrong."""
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o660)
    try:
        with os.fdopen(fd, "wb") as out:
            proc = subprocess.run(
                as_user_argv(user, ["tar", "--create", "--gzip", "--file=-", f"--directory={folder}", "."]),
                stdout=out,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                env=isolated_git_env(),
                cwd="/",
                timeout=timeout,
                check=False,
            )
    except subprocess.TimeoutExpired:
        return f"tar did not finish within {timeout:.0f} s"
    finally:
        kill_all(user.uid)
    # tar's 1: some files changed as they were read, or could not be read; the rest is there.
    return None if proc.returncode in (0, 1) else proc.stderr.decode("utf-8", "replace").strip()[-500:]


def agent_step(
    user: AgentUser,
    argv: Sequence[str],
    *,
    cwd: str | os.PathLike[str],
    env: Mapping[str, str],
    timeout: float = 120.0,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """A step of the runtime's run as the agent's user (its clone made, its work read): whatever
    the step started, or anything it let run, is ended before the runtime goes on."""
    try:
        return run_as(user, argv, cwd=cwd, env=env, timeout=timeout, input=input)
    finally:
        kill_all(user.uid)


def processes_of(uid: int) -> list[int]:
    """The processes whose real or effective user is ``uid``; not zombies, which run nothing and
    go once their parent reaps them."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status", encoding="utf-8") as handle:
                for line in handle:
                    if line.startswith("State:") and line.split()[1] == "Z":
                        break
                    if line.startswith("Uid:"):
                        real, effective = (int(x) for x in line.split()[1:3])
                        if uid in (real, effective):
                            found.append(int(entry.name))
                        break
        except (OSError, ValueError):
            continue  # gone meanwhile
    return found


def kill_all(uid: int) -> int:
    """SIGKILL every process of ``uid`` until none is left; the number of processes killed.

    Children the agent started in the background, in a session of their own, or by forking
    again and again all go: a killed process forks no more, so the rounds come to an end.
    """
    killed: set[int] = set()
    for _ in range(KILL_ROUNDS):
        pids = processes_of(uid)
        if not pids:
            return len(killed)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except ProcessLookupError:
                pass
        time.sleep(KILL_PAUSE)
    raise UserError(f"processes of uid {uid} were still running after {KILL_ROUNDS} rounds of SIGKILL")
