"""The board's backend over the batch on the shared volume (control/board.py's ``BoardBackend``):
what the web board shows is what ``orch`` shows, read and done through the same functions.

- The cards: the views of ``orch status`` (``orch_commands.current_views``: the current batch,
  checked against the engine as the engine's events say, with a dispatcher started when work
  waits for one), their cost as the relay measures it (spend.json), the batch's budget, the
  workers running against the dispatcher's limit, and the relay's rate-limit state.
- A task's page: its task and result files; its log where ``orch logs`` finds it (the worker's
  log on the volume, else ``docker logs`` of its worker); its branch against where it started,
  from git in the control plane's mirror (or its clone), never from the agent's word.
- The actions: ``batch.cancel`` and ``batch.retry`` (orch cancel, orch retry), and the merge of
  ``orch merge --all`` (merging.choose, merging.merge_branches) in the control plane's clone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from .. import batch, batches, egress_counts, spending
from ..context import Context
from ..dispatcher import ensure_dispatcher, max_workers
from ..display import now
from ..engine_events import EngineEvents, EngineLook
from ..errors import UserError
from ..orch_commands import current_views
from ..secrets import env_secrets, scrubber
from ..settled import ViewCache
from ..tasks import SETTLED_STATES, TASK_ID_PATTERN, State, TaskResult
from ..views import TaskView, load_view
from .board import (
    BoardState,
    FileChange,
    LogChunk,
    MergeOutcome,
    MergeSummary,
    TaskCard,
    TaskDetail,
    TaskDiff,
    Totals,
    first_line,
)

LOG_CHUNK = 256 * 1024  # a page asks again at once while there is more
DIFF_LIMIT = 2 * 1024 * 1024  # an agent may commit a megabyte of generated code: the page shows this much
GIT_TIMEOUT = 30.0
MERGE_TIMEOUT = 600.0  # a fetch of origin, and a merge per task
NO_LOOK = EngineLook()


def rate_limit_state(gate: Mapping[str, Any] | None, at: float) -> str | None:
    """The relay's gate to the API in a few words: "ok", "backing off for 6 s (429)"; None when
    no relay has said anything (spend.json has no gate)."""
    if gate is None:
        return None
    until = gate.get("backoff_until")
    if gate.get("backing_off") and isinstance(until, int | float) and until > at:
        reason = gate.get("reason")
        return f"backing off for {int(until - at) + 1} s" + (f" ({reason})" if reason else "")
    return "ok"


def files_of(result: TaskResult | None) -> tuple[FileChange, ...]:
    """The result's files_changed (what the worker counted in git) as the board's."""
    changes = []
    for change in (result.files_changed if result else None) or []:
        path, added, deleted = change.get("path"), change.get("added"), change.get("deleted")
        if isinstance(path, str):
            changes.append(FileChange(path, added if isinstance(added, int) else None,
                                      deleted if isinstance(deleted, int) else None))  # fmt: skip
    return tuple(changes)


def numstat(text: bytes) -> tuple[FileChange, ...]:
    """``git diff --numstat -z --no-renames``: "ADDED\\tDELETED\\tPATH\\0" each, "-" for a binary file."""
    changes = []
    for record in text.split(b"\0"):
        added, _, rest = record.partition(b"\t")
        deleted, _, path = rest.partition(b"\t")
        if path:
            count = [int(n) if n.isdigit() else None for n in (added, deleted)]
            changes.append(FileChange(path.decode(errors="replace"), count[0], count[1]))
    return tuple(changes)


def whole_lines(data: bytes, finished: bool) -> bytes:
    """What of ``data`` to send: up to its last newline while the log grows (the page appends
    it as it is); a line longer than a chunk is cut where no UTF-8 character is split."""
    if finished and len(data) < LOG_CHUNK:
        return data
    end = data.rfind(b"\n") + 1
    if end or len(data) < LOG_CHUNK:
        return data[:end]
    end = len(data)
    while end > 0 and data[end - 1] & 0xC0 == 0x80:  # a character's continuation bytes
        end -= 1
    if end and data[end - 1] >= 0xC0:  # and its first: it may be cut short
        end -= 1
    return data[:end] if end else data


class BatchBoard:
    """The board's backend (``BoardBackend``) over the volume of ``ctx``, with git in ``repos``
    (the mirror, then the control plane's clone: the first that holds a commit)."""

    def __init__(
        self, ctx: Context, repos: Sequence[Path], clone: Path | None, *, events: EngineEvents | None = None
    ) -> None:
        self.ctx = ctx
        self.repos = list(repos)
        self.clone = clone  # where the merge happens (orch merge's --repo-dir in the control plane)
        self.events = events  # None: no engine is asked; the views are what the files say
        self.cache = ViewCache(ctx.orch)
        self.titles: dict[str, str] = {}  # a task's prompt is never rewritten
        self.turns: dict[tuple[str, int], int | None] = {}
        self._views_lock = threading.Lock()  # the cache is one process's, not one thread's
        self._merge_lock = threading.Lock()  # one merge at a time in the clone
        self.scrub = scrubber(env_secrets(ctx.env))

    # What the board shows.

    def board(self) -> BoardState:
        orch = self.ctx.orch
        with self._views_lock:
            look = self.events.look() if self.events is not None else NO_LOOK
            batch_id = batches.scope(orch, batch=None, history=False)
            try:
                views = current_views(self.ctx, self.cache, look, None, batch_id)
            except UserError:
                if self.events is not None:
                    self.events.ask_again()  # the engine did not answer: every worker next time
                raise
        accounts = spending.load(orch)
        views = [view.with_live_cost(accounts) for view in views]
        at = now()
        cards = tuple(self.card(view, at) for view in views)
        counts = Counter(card.state for card in cards)
        totals = Totals(
            by_state=dict(counts),
            cost_usd=round(sum(card.cost_usd or 0.0 for card in cards), 4),
            budget_usd=spending.batch_budget(orch),
            workers_running=counts[State.RUNNING.value] + counts[State.STARTING.value],
            workers_limit=max_workers(self.ctx),
            rate_limit=rate_limit_state(spending.load_gate(orch), time.time()),
        )
        return BoardState(cards, totals)

    def card(self, view: TaskView, at: datetime) -> TaskCard:
        return TaskCard(
            id=view.id,
            state=view.state.value,
            title=self.title(view),
            started_at=view.started_at,
            seconds=view.duration(at),
            turns=self.turns_of(view),
            cost_usd=view.cost,
            depends_on=view.depends_on,
            branch=view.branch,
            note=None if view.state is State.SUCCESS else view.message,
        )

    def title(self, view: TaskView) -> str:
        found = self.titles.get(view.id)
        if found is None:
            task = view.task
            if task is None:
                try:
                    task = self.ctx.orch.load_task(view.id)
                except UserError:
                    return "(its task file cannot be read)"
            found = self.titles[view.id] = first_line(task.prompt)
        return found

    def turns_of(self, view: TaskView) -> int | None:
        if view.result is not None:
            return view.result.num_turns
        if view.settled is None:
            return None
        key = (view.id, view.attempt)
        if key not in self.turns:  # the settled index keeps no turns: the result, once
            try:
                result = self.ctx.orch.load_result(view.id)
            except UserError:
                result = None
            self.turns[key] = result.num_turns if result else None
        return self.turns[key]

    def view(self, task_id: str) -> TaskView:
        """The task's view from its files; KeyError for a task there is no file of."""
        if not TASK_ID_PATTERN.fullmatch(task_id) or not self.ctx.orch.task_path(task_id).is_file():
            raise KeyError(task_id)
        return load_view(self.ctx.orch, task_id).with_live_cost(spending.load(self.ctx.orch))

    def task(self, task_id: str) -> TaskDetail:
        view = self.view(task_id)
        result = view.result
        return TaskDetail(
            card=self.card(view, now()),
            prompt=view.task.prompt if view.task else "",
            output=result.output if result else None,
            error=result.error if result else None,
            attempt=view.attempt,
            commits=result.commits if result else None,
            files_changed=files_of(result),
        )

    def log(self, task_id: str, offset: int) -> LogChunk:
        view = self.view(task_id)
        finished = view.state in SETTLED_STATES
        path = self.ctx.orch.worker_log_path(task_id)
        try:
            with open(path, "rb") as handle:
                # Past the end, nothing: a file system refuses a seek past the largest file it can hold.
                size = os.fstat(handle.fileno()).st_size
                handle.seek(min(offset, size))
                data = handle.read(LOG_CHUNK) if offset < size else b""
        except FileNotFoundError:
            data = self.engine_log(view)[offset : offset + LOG_CHUNK] if finished else b""
        sent = whole_lines(data, finished)
        return LogChunk(sent.decode(errors="replace"), offset, offset + len(sent), finished)

    def engine_log(self, view: TaskView) -> bytes:
        """What the engine kept of a worker that never wrote its log on the volume (as orch logs)."""
        try:
            return self.ctx.engine.logs(view.container).encode()
        except UserError:
            return b""

    def diff(self, task_id: str) -> TaskDiff | None:
        result = self.view(task_id).result
        if result is None or not result.base_commit or not result.head_commit:
            return None
        base, head = result.base_commit, result.head_commit
        for repo in self.repos:
            if self.git(repo, "cat-file", "-e", f"{head}^{{commit}}") is None:
                continue
            # Never the repository's own diff drivers or text conversions: its content is the agent's.
            plain = ("--no-color", "--no-ext-diff", "--no-textconv", "--no-renames")
            files = self.git(repo, "diff", *plain, "--numstat", "-z", base, head)
            text = self.git(repo, "diff", *plain, base, head)
            if files is None or text is None:
                continue
            cut = text[:DIFF_LIMIT]
            return TaskDiff(numstat(files), cut.decode(errors="replace"), truncated=len(text) > DIFF_LIMIT)
        return None

    def git(self, repo: Path, *args: str) -> bytes | None:
        """git's output in the bare repository or clone ``repo``, as bytes (a diff is the agent's
        text, in any encoding); None when it fails."""
        where = ["--git-dir", str(repo)] if not (repo / ".git").exists() else ["-C", str(repo)]
        try:
            proc = subprocess.run(
                ["git", *where, *args], capture_output=True, timeout=GIT_TIMEOUT, stdin=subprocess.DEVNULL, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout if proc.returncode == 0 else None

    def egress(self, task_id: str) -> list[Mapping[str, Any]]:
        self.view(task_id)
        return egress_counts.records_of(self.ctx.orch, task_id)

    # What the person does.

    def cancel(self, task_id: str) -> str:
        self.view(task_id)
        view = batch.cancel(self.ctx.orch, self.ctx.engine, task_id)
        return f"{task_id}: {view.state.value}"

    def retry(self, task_id: str) -> str:
        self.view(task_id)
        (retried,) = batch.retry(self.ctx.orch, self.ctx.engine, [task_id])
        ensure_dispatcher(self.ctx)
        if retried.attempt is None:
            return f"{task_id}: queued again"
        return f"{task_id}: queued again (attempt {retried.attempt})"

    def merge(self) -> MergeSummary:
        """``orch merge --all`` of the current batch in the control plane's clone (not pushed), run
        as the control plane runs the manager's: in a process with the commands' environment, where
        git finds the credentials to fetch origin."""
        if self.clone is None:
            raise UserError("no repository: this orchestration has nothing to merge into")
        env = self.ctx.child_env()
        package_parent = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH", "")) if p)
        argv = [
            sys.executable,
            "-P",
            "-m",
            "orchestrator.orch",
            "merge",
            "--all",
            "--json",
            "--repo-dir",
            str(self.clone),
        ]
        with self._merge_lock:
            try:
                proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=MERGE_TIMEOUT,
                                      stdin=subprocess.DEVNULL, check=False)  # fmt: skip
            except subprocess.TimeoutExpired:
                raise UserError(f"orch merge did not finish within {MERGE_TIMEOUT:.0f} s") from None
        try:
            report = json.loads(proc.stdout)
        except ValueError:
            said = self.scrub(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "")
            raise UserError(said or f"orch merge failed (exit code {proc.returncode})") from None
        return merge_summary(report)


def merge_summary(report: Mapping[str, Any]) -> MergeSummary:
    """What ``orch merge --json`` printed, as the board shows it."""
    outcomes = tuple(
        MergeOutcome(
            str(task.get("task_id")),
            str(task.get("state")),
            tuple(map(str, task.get("files") or ())) if task.get("state") == "conflict" else (),
            task.get("message"),
        )
        for task in report.get("tasks") or ()
    )
    into = report.get("into")
    if report.get("push_error"):
        message = str(report["push_error"])
    elif report.get("started_from") is None:
        message = "nothing to merge: no task that succeeded has a pushed branch"
    else:
        message = f"in the control plane's clone, from {report['started_from']}; `orch merge --all --push` publishes it"
    return MergeSummary(str(into) if into else None, outcomes, message)
