"""The git channel: how a worker started by the control plane gets origin's history and hands its
work back while holding no credential.

The control plane serves it on ``git.sock``, in the folder its workers mount read-only (the
``NAME-doors`` volume). One request per connection: a JSON line, then for a push the bundle's
bytes; one JSON line answers, ``{"ok": true, "said": ...}`` or ``{"ok": false, "error": ...}``.
Every request carries the worker's git ticket (tickets.py), good for its own task and attempt,
until that attempt has a result.

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

What the bundle holds is data: the control plane runs no hook, filter or configuration of a
worker's. A worker that hands back through this channel something else than its own branch, a
rewrite of it, or a huge pack, is refused, and its runtime keeps the work (a bundle on the shared
volume) and says why.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

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
        self._pushing = threading.Lock()
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
        with conn:
            try:
                answer = {"ok": True, "said": self._answer(conn)}
            except UserError as exc:
                answer = {"ok": False, "error": self.scrub(str(exc))[:4000]}
            except Exception as exc:  # noqa: BLE001 (a bug must answer, not hang a worker)
                self.say(f"git channel: internal error: {type(exc).__name__}: {self.scrub(str(exc))[:500]}")
                answer = {"ok": False, "error": f"internal error in the control plane: {type(exc).__name__}"}
            with contextlib.suppress(OSError):
                conn.settimeout(ANSWER_TIMEOUT)
                conn.sendall(json.dumps(answer).encode() + b"\n")

    def _answer(self, conn: socket.socket) -> str:
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
        raise Refused(f"no operation {str(op)[:40]!r}: fetch or push")

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
