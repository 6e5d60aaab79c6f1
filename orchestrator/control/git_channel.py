"""The git channel: how a worker started by the control plane gets origin's history and hands its
work back while holding no credential.

The control plane serves it on ``git.sock``, in the folder its workers mount read-only (the
``NAME-doors`` volume). One request per connection: a JSON line, then for a push the bundle's
bytes; one JSON line answers, ``{"ok": true, "said": ...}`` or ``{"ok": false, "error": ...}``
(for ``mirror``, followed by the bytes it announces). Every request carries the worker's git
ticket (tickets.py), good for its own task and attempt, until that attempt has a result.

- ``{"op": "fetch"}``: the mirror is made as origin is now before the answer. Requests that come
  while a fetch runs share the next one: twenty workers starting at once cost origin two fetches,
  the second of which brings nothing new.
- ``{"op": "push", "branch": B, "size": N}`` and N bytes of a git bundle: the task's work. B must
  be the task's branch (``PREFIX+ID`` or ``PREFIX+ID-attempt-N``; with ``-K`` after it when origin
  had that name already, as the worker chooses); the bundle at most ``BUNDLE_LIMIT``; its objects
  are checked as they come in, it must fit origin's history, and it is pushed as a fast-forward of
  origin's B (or as a new branch), never forced, with the credential only the control plane holds
  (handover.push, as for the manager's ``orch push``). The mirror takes it too: a task that
  depends on this one starts from it.
- ``{"op": "mirror"}``: the mirror's content, for a worker on a node where its volume is not (a
  swarm's): ``{"ok": true, "said": ..., "size": N}`` and N bytes of a git bundle of every
  ``refs/heads/*`` of the mirror as it is (a worker that wants origin as it is now asks ``fetch``
  first). The bundle is kept in ``cache`` and sent again while the mirror's branches are those it
  holds; requests that come while it is made wait for it and share it (one is made at a time).

What the bundle holds is data: the control plane runs no hook, filter or configuration of a
worker's. A worker that hands back through this channel something else than its own branch, a
rewrite of it, or a huge pack, is refused, and its runtime keeps the work (a bundle on the shared
volume) and says why.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .. import git, handover
from ..errors import UserError
from ..store import OrchestrationDir
from ..tickets import GIT, TaskTicket, Tickets, ended
from .door import listen_unix
from .mirror import Mirror

SOCKET = "git.sock"
HEADER_LIMIT = 64 * 1024
HEADER_TIMEOUT = 30.0
BODY_TIMEOUT = 600.0  # a large hand-back on a slow disk
ANSWER_TIMEOUT = 60.0
# How long a stopping control plane lets the requests under way end (below `docker stop --time 30`
# of launch_control.stop_control): a push half-way to origin is finished and answered rather than
# cut. A fetch that runs longer is cut; its worker asks the next control plane again.
DRAIN_SECONDS = 20.0
BUNDLE_LIMIT = handover.BUNDLE_LIMIT
MIRROR_BUNDLE_PREFIX = "mirror-"  # then the digest of the branches it holds, and .bundle
MIRROR_BUNDLE_TEMP = ".making-"


class Refused(UserError):
    """The request is not one the channel carries out."""


def task_branch_allowed(branch: str, prefix: str, ticket: TaskTicket) -> bool:
    """The names a worker of this task and attempt gives its branch (delivery.free_name): the
    task's, or that with ``-K`` when origin had it already."""
    wanted = git.task_branch(prefix, ticket.task_id, ticket.attempt)
    if branch == wanted:
        return True
    number = branch.removeprefix(f"{wanted}-") if branch.startswith(f"{wanted}-") else ""
    return number.isdigit() and not number.startswith("0") and 2 <= int(number) <= 9999


def branches_digest(listing: str) -> str:
    """What names a mirror bundle: the digest of ``OBJECT REFNAME`` lines (``git for-each-ref``'s,
    ``git bundle list-heads``'s), in any order."""
    lines = sorted(line for line in listing.splitlines() if line.strip())
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


@dataclass(frozen=True)
class Stream:
    """An answer followed by bytes: the header's ``said`` and ``size``, then the file's content."""

    said: str
    file: BinaryIO
    size: int


class GitChannel:
    """Serves ``git.sock`` for the control plane's workers."""

    def __init__(
        self,
        path: Path,
        *,
        tickets: Tickets,
        orch: OrchestrationDir,
        mirror: Mirror,
        work: Path,
        env: Mapping[str, str],
        scrub: Callable[[str], str],
        prefix: str,
        say: Callable[[str], None],
        limit: int = BUNDLE_LIMIT,
        cache: Path | None = None,
    ):
        self.path = path
        self.tickets = tickets
        self.orch = orch
        self.mirror = mirror
        self.work = work  # a bare repository of the control plane's, where hand-backs are checked
        self.env = dict(env)
        self.scrub = scrub
        self.prefix = prefix
        self.say = say
        self.limit = limit
        # Where the mirror's bundle is kept (the control plane's alone, beside ``work``).
        self.cache = cache if cache is not None else work.parent / "mirror-bundle"
        self._pushing = threading.Lock()
        self._bundling = threading.Lock()
        self._fetch = threading.Condition()
        self._started = 0  # fetches begun
        self._done = 0  # the latest fetch ended
        self._running = False
        self._error: str | None = None
        self._listener: socket.socket | None = None
        self._serving = threading.Condition()
        self._in_flight = 0

    # serving

    def start(self) -> GitChannel:
        self._prepare_work()
        self._forget_unfinished_bundles()
        self._listener = listen_unix(self.path, 0o666)
        threading.Thread(target=self._accept, name="git-channel", daemon=True).start()
        return self

    def stop(self, drain: float = DRAIN_SECONDS) -> int:
        """No new request; those under way are given up to ``drain`` seconds. The number cut."""
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(): close alone does not
            with contextlib.suppress(OSError):
                self._listener.close()
        with self._serving:
            self._serving.wait_for(lambda: self._in_flight == 0, timeout=drain)
            return self._in_flight

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with self._serving:
            self._in_flight += 1
        try:
            self._serve_one(conn)
        finally:
            with self._serving:
                self._in_flight -= 1
                self._serving.notify_all()

    def _serve_one(self, conn: socket.socket) -> None:
        with conn, contextlib.ExitStack() as opened:
            body: BinaryIO | None = None
            answer: dict[str, Any]
            try:
                found = self._answer(conn)
                if isinstance(found, Stream):
                    body = opened.enter_context(found.file)
                    answer = {"ok": True, "said": found.said, "size": found.size}
                else:
                    answer = {"ok": True, "said": found}
            except UserError as exc:
                answer = {"ok": False, "error": self.scrub(str(exc))[:4000]}
            except Exception as exc:  # noqa: BLE001 (a bug must answer, not hang a worker)
                self.say(f"git channel: internal error: {type(exc).__name__}: {self.scrub(str(exc))[:500]}")
                answer = {"ok": False, "error": f"internal error in the control plane: {type(exc).__name__}"}
            # A worker gone, or too slow, finds its answer cut: it counts that as out of reach.
            with contextlib.suppress(OSError):
                conn.settimeout(ANSWER_TIMEOUT)
                conn.sendall(json.dumps(answer).encode() + b"\n")
                if body is not None:
                    conn.settimeout(BODY_TIMEOUT)
                    conn.sendfile(body)

    def _answer(self, conn: socket.socket) -> str | Stream:
        conn.settimeout(HEADER_TIMEOUT)
        reader = conn.makefile("rb")
        line = reader.readline(HEADER_LIMIT + 1)
        if len(line) > HEADER_LIMIT or not line.endswith(b"\n"):
            raise Refused("a request is one JSON line of at most 64 KiB")
        try:
            request = json.loads(line)
        except ValueError:
            raise Refused("a request is one JSON line") from None
        if not isinstance(request, dict):
            raise Refused("a request is a JSON object")
        ticket = self.tickets.read(GIT, str(request.get("ticket") or ""))
        if ticket is None:
            raise Refused("the git channel does not know this ticket")
        if ended(self.orch, ticket):
            raise Refused(f"the ticket of {ticket.task_id} (attempt {ticket.attempt}) is revoked: the attempt ended")
        op = request.get("op")
        if op == "fetch":
            self.fresh()
            return "the mirror is as origin is now"
        if op == "push":
            return self._push(ticket, request, reader, conn)
        if op == "mirror":
            return self._mirror_stream()
        raise Refused(f"no operation {str(op)[:40]!r}: fetch, push or mirror")

    # fetch

    def fresh(self) -> None:
        """Return once a fetch that began after the call has ended (many callers share one)."""
        with self._fetch:
            needed = self._started + 1
            while self._done < needed:
                if self._running:
                    self._fetch.wait()
                    continue
                self._running = True
                self._started += 1
                mine = self._started
                self._fetch.release()
                error = None
                try:
                    self.mirror.refresh()
                except UserError as exc:
                    error = str(exc)
                finally:
                    self._fetch.acquire()
                    self._running, self._done, self._error = False, mine, error
                    self._fetch.notify_all()
            if self._error:
                raise UserError(self._error)

    # push

    def _push(self, ticket: TaskTicket, request: dict[str, Any], reader: Any, conn: socket.socket) -> str:
        branch, size = request.get("branch"), request.get("size")
        if not isinstance(branch, str) or not task_branch_allowed(branch, self.prefix, ticket):
            raise Refused(
                f"{ticket.task_id}'s worker hands back {git.task_branch(self.prefix, ticket.task_id, ticket.attempt)} "
                f"only, not {str(branch)[:200]!r}"
            )
        if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= self.limit:
            raise Refused(f"a hand-back is a bundle of at most {self.limit} bytes, not {str(size)[:40]}")
        conn.settimeout(BODY_TIMEOUT)
        with tempfile.NamedTemporaryFile(prefix="handback-", suffix=".bundle", dir=self.work) as out:
            left = size
            while left:
                chunk = reader.read(min(left, 1 << 20))
                if not chunk:
                    raise Refused(f"the hand-back ended after {size - left} of its {size} bytes")
                out.write(chunk)
                left -= len(chunk)
            out.flush()
            with self._pushing:
                said = handover.push(self.work, Path(out.name), branch, url=self.mirror.url, env=self.env,
                                     scrub=self.scrub)  # fmt: skip
                tip = git.head(self.work, "refs/orchestrator/handover")
                self.mirror.take(self.work, tip, branch)
        self.say(f"git channel: {ticket.task_id} (attempt {ticket.attempt}): {said}")
        return said

    # mirror

    def _mirror_stream(self) -> Stream:
        """The mirror's bundle, opened: made when the mirror's branches are not those of the one
        kept. Opened under the lock, so that the next build's clean-up cannot take it away (an
        unlinked file still reads to its end)."""
        with self._bundling:
            listing = git.git("for-each-ref", "--format=%(objectname) %(refname)", "refs/heads/", cwd=self.mirror.path)
            kept = self.cache / f"{MIRROR_BUNDLE_PREFIX}{branches_digest(listing)}.bundle"
            if not kept.exists():
                kept = self._make_mirror_bundle()
            file = open(kept, "rb")  # noqa: SIM115 (closed by _serve_one once sent)
        branches = sum(1 for line in listing.splitlines() if line.strip())
        said = f"the mirror's {branches} branch{'es' if branches != 1 else ''}"
        return Stream(said, file, os.fstat(file.fileno()).st_size)

    def _make_mirror_bundle(self) -> Path:
        """A bundle of the mirror's branches, named after those it holds (which may be newer than
        the listing that asked for it, when a fetch or hand-back came in between); the others go."""
        self.cache.mkdir(mode=0o700, parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=MIRROR_BUNDLE_TEMP, suffix=".bundle", dir=self.cache)
        os.close(handle)
        made = Path(name)
        try:
            try:
                git.git("bundle", "create", "--quiet", str(made), "--branches", cwd=self.mirror.path,
                        timeout=git.CLONE_TIMEOUT, scrub=self.scrub)  # fmt: skip
            except git.GitError as exc:
                if "empty bundle" in str(exc):
                    raise Refused("the control plane's mirror holds no branch yet") from None
                raise
            heads = git.git("bundle", "list-heads", str(made), cwd=self.mirror.path, scrub=self.scrub)
            with open(made, "rb") as written:
                os.fsync(written.fileno())  # a crash never leaves a torn bundle under a good name
            kept = self.cache / f"{MIRROR_BUNDLE_PREFIX}{branches_digest(heads)}.bundle"
            os.replace(made, kept)
        finally:
            made.unlink(missing_ok=True)
        for old in self.cache.glob(f"{MIRROR_BUNDLE_PREFIX}*.bundle"):
            if old != kept:
                old.unlink(missing_ok=True)
        self.say(f"git channel: made a bundle of the mirror's branches ({os.path.getsize(kept)} bytes)")
        return kept

    def _forget_unfinished_bundles(self) -> None:
        """What a control plane stopped while it made a bundle left."""
        for unfinished in self.cache.glob(f"{MIRROR_BUNDLE_TEMP}*"):
            unfinished.unlink(missing_ok=True)

    def _prepare_work(self) -> None:
        """The bare repository hand-backs are checked in: it borrows the mirror's objects."""
        work = self.work
        if not (work / "HEAD").exists():
            work.mkdir(parents=True, exist_ok=True)
            git.git("init", "--quiet", "--bare", str(work))
            git.git("remote", "add", "origin", self.mirror.url, cwd=work)
        alternates = work / "objects" / "info" / "alternates"
        alternates.write_text(f"{self.mirror.path / 'objects'}\n", encoding="utf-8")
        os.chmod(work, 0o700)
