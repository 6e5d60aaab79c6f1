"""A worker's side of the control plane's git channel (control/git_channel.py): the mirror made
fresh before the clone, and the task's branch handed back as a bundle, which the control plane
checks and pushes with the credential the worker never holds.

Its failures are GitErrors in the words delivery.py reads: a control plane out of reach (being
restarted) is "connection refused", one that stopped while it answered is "connection reset" or
"the remote end hung up unexpectedly"; a hand-back waits these out as it would a git server's.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from . import git
from .git import GitError

SOCKET = "git.sock"  # control/git_channel.py's SOCKET
ANSWER_TIMEOUT = 900.0  # a fetch of a large origin, a push of a large hand-back
REFUSED = "connection refused"
RESET = "connection reset"
HUNG_UP = "the remote end hung up unexpectedly"
# A control plane away, or stopped in the middle of an answer (a manager killed, a new run.py
# taking over): worth waiting for. "the control plane refused: ..." is its answer, never retried.
OUT_OF_REACH = (REFUSED, RESET, HUNG_UP)
WAIT_PAUSES = (1.0, 2.0, 4.0, 8.0, 15.0)


def _ask(doors: Path, header: dict[str, object], body: Path | None = None) -> str:
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(ANSWER_TIMEOUT)
    try:
        try:
            sock.connect(str(doors / SOCKET))
        except OSError as exc:
            raise GitError(f"the control plane's git channel: {REFUSED} ({exc.strerror or exc})") from None
        try:
            sock.sendall(json.dumps(header).encode() + b"\n")
            if body is not None:
                with open(body, "rb") as source:
                    sock.sendfile(source)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # refused before the body was read: its answer says why
        try:
            answer = sock.makefile("rb").readline(1 << 20)
        except OSError as exc:
            raise GitError(f"the control plane's git channel: {RESET} ({exc.strerror or exc})") from None
    finally:
        sock.close()
    try:
        found = json.loads(answer)
    except ValueError:
        raise GitError(f"the control plane's git channel: {HUNG_UP}") from None
    if not isinstance(found, dict) or not found.get("ok"):
        error = found.get("error") if isinstance(found, dict) else None
        raise GitError(f"the control plane refused: {error or 'no reason given'}")
    return str(found.get("said") or "")


def fetch(doors: Path, ticket: str, *, wait_for: float = 0.0, say: Callable[[str], None] = lambda line: None) -> str:
    """Until the control plane's mirror is as origin is now. A control plane out of reach (being
    restarted, or the next run.py's not yet started after a manager was removed), or one that
    stopped while it fetched, is waited for up to ``wait_for`` seconds: a fetch is safe to ask twice."""
    deadline = time.monotonic() + wait_for
    for attempt in itertools.count():
        try:
            return _ask(doors, {"op": "fetch", "ticket": ticket})
        except GitError as exc:
            pause = WAIT_PAUSES[min(attempt, len(WAIT_PAUSES) - 1)]
            if not any(m in str(exc) for m in OUT_OF_REACH) or time.monotonic() + pause > deadline:
                raise
            say(f"the control plane is out of reach ({exc}); trying again in {pause:.0f} s")
            time.sleep(pause)
    raise AssertionError("unreachable")


def push(doors: Path, ticket: str, repo: Path, branch: str) -> str:
    """The branch's commits that origin (as the mirror showed it) lacks, handed to the control plane."""
    with tempfile.TemporaryDirectory(prefix="handback-") as scratch:
        bundle = Path(scratch) / "work.bundle"
        git.git("bundle", "create", "--quiet", str(bundle), f"refs/heads/{branch}", "--not", "--remotes=origin",
                cwd=repo, timeout=git.PUSH_TIMEOUT)  # fmt: skip
        size = os.path.getsize(bundle)
        return _ask(doors, {"op": "push", "ticket": ticket, "branch": branch, "size": size}, bundle)
