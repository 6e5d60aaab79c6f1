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
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError

DEFAULT_AGENT_USER = "agent"
KILL_ROUNDS = 200  # a fork bomb under the pids limit is gone long before this
KILL_PAUSE = 0.05


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

    def popen_options(self) -> dict[str, Any]:
        """subprocess options that start a child as this user, with no other group."""
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def environment(self, base: Mapping[str, str]) -> dict[str, str]:
        return {**base, "HOME": str(self.home), "USER": self.name, "LOGNAME": self.name}


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
    """Run a command of the runtime's as the agent's user (a clone for it, a chmod of its files);
    one that outlives ``timeout`` is a UserError."""
    try:
        return subprocess.run(
            list(argv),
            cwd=cwd,
            env=dict(env),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=None if input is not None else subprocess.DEVNULL,
            **user.popen_options(),
        )
    except subprocess.TimeoutExpired:
        raise UserError(f"`{shlex.join(argv)}`, run as {user.name}, did not finish within {timeout:.0f} s") from None


def without_new_privileges(argv: Sequence[str]) -> list[str]:
    """``argv`` run so that nothing it starts can gain privileges (a setuid program, say), on an
    engine that sets no-new-privileges for the container or not (a swarm service cannot)."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--no-new-privs", *argv] if setpriv else list(argv)


def processes_of(uid: int) -> list[int]:
    """The processes whose real or effective user is ``uid``."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status", encoding="utf-8") as handle:
                for line in handle:
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


def open_tree(user: AgentUser, tree: Path, env: Mapping[str, str]) -> None:
    """Make the agent's files readable to the runtime, which has no capability to read past
    their modes. Run as the agent's user (it owns them), after its processes are gone;
    symbolic links are neither followed nor changed."""
    run_as(user, ["chmod", "-R", "a+rX", "--", str(tree)], cwd="/", env=env, timeout=300)
