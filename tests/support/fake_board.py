"""A board backend of the tests' own: a batch held in memory, which a test changes as it goes,
and which records every action asked of it."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from orchestrator.control.board import (
    BOARD_STATES,
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
from orchestrator.errors import UserError

ACTIVE = {"submitted", "queued", "starting", "running"}
SETTLED = {"success", "failed", "timeout", "cancelled", "interrupted", "budget_exceeded", "blocked"}


# What `orch merge --all` can report: one merged, one in conflict, one not merged.
MERGE_WITH_A_CONFLICT = MergeSummary(
    into="orchestrator/integration",
    outcomes=(
        MergeOutcome("task-001", "merged"),
        MergeOutcome("task-002", "conflict", files=("lib/theme.dart", "lib/main.dart")),
        MergeOutcome("task-004", "not merged", message="it ended failed"),
    ),
)


class FakeBoard:
    def __init__(self, budget_usd: float | None = 10.0, workers_limit: int = 4) -> None:
        self._lock = threading.Lock()
        self.cards: dict[str, TaskCard] = {}
        self.prompts: dict[str, str] = {}
        self.outputs: dict[str, str] = {}
        self.logs: dict[str, bytes] = {}
        self.diffs: dict[str, TaskDiff] = {}
        self.egress_records: dict[str, list[Mapping[str, Any]]] = {}
        self.calls: list[tuple[str, str]] = []  # (what, task id): every action and every log read
        self.budget_usd = budget_usd
        self.workers_limit = workers_limit
        self.rate_limit: str | None = "ok"
        self.merge_summary = MergeSummary(into="orchestrator/integration")

    # What a test does.

    def add(self, task_id: str, state: str, prompt: str, *, output: str | None = None, **card: Any) -> None:
        with self._lock:
            self.cards[task_id] = TaskCard(task_id, state, first_line(prompt), **card)
            self.prompts[task_id] = prompt
            if output is not None:
                self.outputs[task_id] = output
            self.logs.setdefault(task_id, b"")

    def change(self, task_id: str, **changes: Any) -> None:
        with self._lock:
            self.cards[task_id] = replace(self.cards[task_id], **changes)

    def add_log(self, task_id: str, text: str) -> None:
        with self._lock:
            self.logs[task_id] += text.encode()

    def actions(self, what: str) -> list[str]:
        with self._lock:
            return [task for kind, task in self.calls if kind == what]

    # The backend.

    def board(self) -> BoardState:
        with self._lock:
            cards = tuple(self.cards.values())
        counts = Counter(card.state for card in cards)
        totals = Totals(
            by_state=dict(counts),
            cost_usd=round(sum(card.cost_usd or 0 for card in cards), 2),
            budget_usd=self.budget_usd,
            workers_running=counts["running"] + counts["starting"],
            workers_limit=self.workers_limit,
            rate_limit=self.rate_limit,
        )
        return BoardState(cards, totals)

    def task(self, task_id: str) -> TaskDetail | None:
        with self._lock:
            card = self.cards[task_id]
            diff = self.diffs.get(task_id)
            return TaskDetail(
                card=card,
                prompt=self.prompts[task_id],
                output=self.outputs.get(task_id),
                error=card.note if card.state in SETTLED - {"success"} else None,
                attempt=1,
                commits=1 if diff else None,
                files_changed=diff.files if diff else (),
            )

    def log(self, task_id: str, offset: int) -> LogChunk:
        with self._lock:
            self.calls.append(("log", task_id))
            data = self.logs[task_id]
            finished = self.cards[task_id].state in SETTLED
        rest = data[offset:]
        whole = rest if finished else rest[: rest.rfind(b"\n") + 1]  # whole lines while it grows
        return LogChunk(whole.decode(errors="replace"), offset, offset + len(whole), finished)

    def diff(self, task_id: str) -> TaskDiff | None:
        with self._lock:
            if task_id not in self.cards:
                raise KeyError(task_id)
            return self.diffs.get(task_id)

    def egress(self, task_id: str) -> list[Mapping[str, Any]]:
        with self._lock:
            if task_id not in self.cards:
                raise KeyError(task_id)
            return list(self.egress_records.get(task_id, []))

    def cancel(self, task_id: str) -> str:
        with self._lock:
            self.calls.append(("cancel", task_id))
            card = self.cards[task_id]
            if card.state not in ACTIVE:
                raise UserError(f"{task_id} is {card.state}: there is nothing to cancel")
            self.cards[task_id] = replace(card, state="cancelled", note="cancelled from the board")
        return f"{task_id}: cancelled"

    def retry(self, task_id: str) -> str:
        with self._lock:
            self.calls.append(("retry", task_id))
            card = self.cards[task_id]
            if card.state not in SETTLED - {"success"}:
                raise UserError(f"{task_id} is {card.state}: only a task that did not succeed is retried")
            self.cards[task_id] = replace(card, state="queued", note=None, seconds=None)
            self.logs[task_id] = b""
        return f"{task_id}: queued again (attempt 2)"

    def merge(self) -> MergeSummary:
        with self._lock:
            self.calls.append(("merge", ""))
        return self.merge_summary


def sample_batch() -> FakeBoard:
    """A batch of a Flutter app with a task in each state of the board."""
    board = FakeBoard(budget_usd=10.0, workers_limit=4)
    stamp = "2025-06-01T09:{:02d}:00Z"
    board.add("task-001", "success", "Add a dark theme to lib/theme.dart\n\nUse the Material 3 colour scheme.",
              output="Added ThemeData.dark() with the app's seed colour; the settings switch it.",
              started_at=stamp.format(2), seconds=124.0, turns=18, cost_usd=0.41,
              branch="orchestrator/task-001")  # fmt: skip
    board.add("task-002", "running", "Add a settings screen with a theme switch and a language picker",
              started_at=stamp.format(5), seconds=130.0, turns=9, cost_usd=0.22)  # fmt: skip
    board.add("task-003", "queued", "Use the dark theme in the settings screen", depends_on=("task-001", "task-002"))
    board.add("task-004", "failed", "Translate the app into German and French (lib/l10n/*.arb)",
              started_at=stamp.format(3), seconds=412.0, turns=31, cost_usd=1.07,
              note="the agent exited with code 1: flutter gen-l10n failed")  # fmt: skip
    board.add("task-005", "starting", "Fix the overflow in the profile header on small phones",
              started_at=stamp.format(9))  # fmt: skip
    board.add("task-006", "submitted", "Write widget tests for the login form")
    board.add("task-007", "blocked", "Ship the German store listing", depends_on=("task-004",),
              note="task-004 did not succeed")  # fmt: skip
    board.add("task-008", "timeout", "Profile and speed up the image cache",
              started_at=stamp.format(1), seconds=1800.0, turns=64, cost_usd=2.35,
              note="stopped after 30 minutes")  # fmt: skip
    board.add("task-009", "cancelled", "Migrate to go_router 14",
              started_at=stamp.format(4), seconds=61.0, turns=4, cost_usd=0.08,
              note="cancelled by the user")  # fmt: skip
    board.add("task-010", "interrupted", "Replace print() calls with the logger",
              started_at=stamp.format(6), seconds=95.0, turns=7, cost_usd=0.19,
              note="the engine restarted; it will run again")  # fmt: skip
    board.add("task-011", "budget_exceeded", "Rewrite the networking layer with dio",
              started_at=stamp.format(7), seconds=240.0, turns=22, cost_usd=0.95,
              note="the batch's budget was spent")  # fmt: skip
    board.logs["task-002"] = (
        b"worker: cloning git@github.com:acme/app.git (main)\n"
        b"worker: branch orchestrator/task-002 from 3f2a9c1\n"
        b"agent: reading lib/main.dart, lib/theme.dart\n"
        b"agent: creating lib/settings/settings_screen.dart\n"
        b"agent: flutter analyze: no issues found\n"
    )
    board.diffs["task-001"] = TaskDiff(
        files=(FileChange("lib/theme.dart", 14, 2), FileChange("lib/main.dart", 3, 1)),
        diff=(
            "diff --git a/lib/theme.dart b/lib/theme.dart\n"
            "index 3f2a9c1..8b1e4d0 100644\n"
            "--- a/lib/theme.dart\n"
            "+++ b/lib/theme.dart\n"
            "@@ -1,6 +1,18 @@\n"
            " import 'package:flutter/material.dart';\n"
            " \n"
            "-final theme = ThemeData(primarySwatch: Colors.blue);\n"
            "-\n"
            "+const seed = Color(0xFF2456D6);\n"
            "+\n"
            "+final lightTheme = ThemeData(\n"
            "+  colorScheme: ColorScheme.fromSeed(seedColor: seed),\n"
            "+  useMaterial3: true,\n"
            "+);\n"
            "+\n"
            "+final darkTheme = ThemeData(\n"
            "+  colorScheme: ColorScheme.fromSeed(seedColor: seed, brightness: Brightness.dark),\n"
            "+  useMaterial3: true,\n"
            "+);\n"
            "diff --git a/lib/main.dart b/lib/main.dart\n"
            "--- a/lib/main.dart\n"
            "+++ b/lib/main.dart\n"
            "@@ -8,7 +8,9 @@ class App extends StatelessWidget {\n"
            "   Widget build(BuildContext context) {\n"
            "     return MaterialApp(\n"
            "-      theme: theme,\n"
            "+      theme: lightTheme,\n"
            "+      darkTheme: darkTheme,\n"
            "+      themeMode: ThemeMode.system,\n"
            "       home: const HomePage(),\n"
        ),
    )
    board.logs["task-001"] = b"worker: cloning\nagent: done in 18 turns\nworker: pushed orchestrator/task-001\n"
    board.egress_records["task-001"] = [
        {"time": "09:02:11", "host": "pub.dev", "port": 443, "allowed": True, "bytes": 48213},
        {"time": "09:02:14", "host": "storage.googleapis.com", "port": 443, "allowed": True, "bytes": 1022871},
        {"time": "09:03:40", "host": "paste.example.net", "port": 443, "allowed": False, "bytes": 0},
    ]
    assert set(BOARD_STATES) == {card.state for card in board.cards.values()}
    return board
