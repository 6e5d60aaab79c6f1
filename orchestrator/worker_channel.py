"""A worker's side of the control plane's git channel (control/git_channel.py): the mirror made
fresh before the clone, copied for a worker on a node where the mirror's volume is not (a
swarm's), and the task's branch handed back as a bundle, which the control plane checks and
pushes with the credential the worker never holds.

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
from typing import BinaryIO

from . import git
from .doors import GIT as SOCKET
from .doors import Doors
from .git import GitError

ANSWER_TIMEOUT = 900.0  # a fetch of a large origin, a push of a large hand-back
CHUNK = 1 << 20
REFUSED = "connection refused"
RESET = "connection reset"
HUNG_UP = "the remote end hung up unexpectedly"
# A control plane away, or stopped in the middle of an answer (a manager killed, a new run.py
# taking over): worth waiting for. "the control plane refused: ..." is its answer, never retried.
OUT_OF_REACH = (REFUSED, RESET, HUNG_UP)
WAIT_PAUSES = (1.0, 2.0, 4.0, 8.0, 15.0)


def as_doors(doors: Doors | Path) -> Doors:
    return doors if isinstance(doors, Doors) else Doors(folder=doors)


def _connect(doors: Doors | Path) -> socket.socket:
    """The git channel, reached; out of reach (not served, not resolved) is "connection refused"."""
    try:
        sock = as_doors(doors).connector(SOCKET)()
    except OSError as exc:
        raise GitError(f"the control plane's git channel: {REFUSED} ({exc.strerror or exc})") from None
    sock.settimeout(ANSWER_TIMEOUT)
    return sock


def _ask(doors: Doors | Path, header: dict[str, object], body: Path | None = None, into: BinaryIO | None = None) -> str:
    """The answer's ``said``; with ``into``, the bytes that follow the answer are written there."""
    sock = _connect(doors)
    try:
        try:
            sock.sendall(json.dumps(header).encode() + b"\n")
            if body is not None:
                with open(body, "rb") as source:
                    sock.sendfile(source)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # refused before the body was read: its answer says why
        reader = sock.makefile("rb")
        try:
            answer = reader.readline(1 << 20)
        except OSError as exc:
            raise GitError(f"the control plane's git channel: {RESET} ({exc.strerror or exc})") from None
        found = _answer_of(answer)
        if into is not None:
            _receive(reader, found.get("size"), into)
    finally:
        sock.close()
    return str(found.get("said") or "")


def _answer_of(line: bytes) -> dict[str, object]:
    try:
        found = json.loads(line)
    except ValueError:
        raise GitError(f"the control plane's git channel: {HUNG_UP}") from None
    if not isinstance(found, dict) or not found.get("ok"):
        error = found.get("error") if isinstance(found, dict) else None
        raise GitError(f"the control plane refused: {error or 'no reason given'}")
    return found


def _receive(reader: BinaryIO, size: object, into: BinaryIO) -> None:
    """The ``size`` bytes the answer announced; fewer is a control plane that stopped while it sent."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise GitError(f"the control plane's git channel announced no size, but {str(size)[:40]}")
    left = size
    while left:
        try:
            chunk = reader.read(min(left, CHUNK))
        except OSError as exc:
            raise GitError(f"the control plane's git channel: {RESET} ({exc.strerror or exc})") from None
        if not chunk:
            raise GitError(f"the control plane's git channel: {HUNG_UP} after {size - left} of {size} bytes")
        into.write(chunk)
        left -= len(chunk)


def _patiently(ask: Callable[[], str], wait_for: float, say: Callable[[str], None]) -> str:
    """``ask()``, asked again while the control plane is out of reach, up to ``wait_for`` seconds."""
    deadline = time.monotonic() + wait_for
    for attempt in itertools.count():
        try:
            return ask()
        except GitError as exc:
            pause = WAIT_PAUSES[min(attempt, len(WAIT_PAUSES) - 1)]
            if not any(m in str(exc) for m in OUT_OF_REACH) or time.monotonic() + pause > deadline:
                raise
            say(f"the control plane is out of reach ({exc}); trying again in {pause:.0f} s")
            time.sleep(pause)
    raise AssertionError("unreachable")


def fetch(
    doors: Doors | Path, ticket: str, *, wait_for: float = 0.0, say: Callable[[str], None] = lambda line: None
) -> str:
    """Until the control plane's mirror is as origin is now. A control plane out of reach (being
    restarted, or the next run.py's not yet started after a manager was removed), or one that
    stopped while it fetched, is waited for up to ``wait_for`` seconds: a fetch is safe to ask twice."""
    return _patiently(lambda: _ask(doors, {"op": "fetch", "ticket": ticket}), wait_for, say)


def copy_mirror(
    doors: Doors | Path,
    ticket: str,
    dest: Path,
    *,
    wait_for: float = 0.0,
    say: Callable[[str], None] = lambda line: None,
) -> str:
    """Make ``dest`` a bare repository whose branches are the control plane's mirror's (made when
    missing, updated and pruned when there): for a worker on a node where the mirror's volume is
    not. Out of reach is waited for as by ``fetch``; what to say is returned."""
    return _patiently(lambda: _copy_mirror(doors, ticket, dest), wait_for, say)


def _copy_mirror(doors: Doors | Path, ticket: str, dest: Path) -> str:
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(dest.parent, 0o755)  # the agent's clone borrows from the copy, as from a mounted mirror
    handle, name = tempfile.mkstemp(prefix=".mirror-", suffix=".bundle", dir=dest.parent)
    bundle = Path(name)
    try:
        with os.fdopen(handle, "wb") as out:
            _ask(doors, {"op": "mirror", "ticket": ticket}, into=out)
        size = os.path.getsize(bundle)
        if not (dest / "HEAD").exists():
            git.git("init", "--quiet", "--bare", "--shared=0644", str(dest))  # the agent's clone reads it too
        # --git-dir: never a repository above dest found by git's search. Forced: the copy is as
        # the mirror is, which takes origin's branches as they are, rewritten ones too.
        git.git("--git-dir", str(dest), "fetch", "--quiet", "--prune", "--no-tags", str(bundle),
                "+refs/heads/*:refs/heads/*", timeout=git.CLONE_TIMEOUT)  # fmt: skip
    finally:
        bundle.unlink(missing_ok=True)
    branches = git.git("--git-dir", str(dest), "for-each-ref", "--format=%(refname)", "refs/heads/").split()
    return f"copied the mirror: {len(branches)} branch{'es' if len(branches) != 1 else ''}, {size / 1e6:.1f} MB"


def push(doors: Doors | Path, ticket: str, repo: Path, branch: str) -> str:
    """The branch's commits that origin (as the mirror showed it) lacks, handed to the control plane."""
    with tempfile.TemporaryDirectory(prefix="handback-") as scratch:
        bundle = Path(scratch) / "work.bundle"
        git.git("bundle", "create", "--quiet", str(bundle), f"refs/heads/{branch}", "--not", "--remotes=origin",
                cwd=repo, timeout=git.PUSH_TIMEOUT)  # fmt: skip
        size = os.path.getsize(bundle)
        return _ask(doors, {"op": "push", "ticket": ticket, "branch": branch, "size": size}, bundle)
