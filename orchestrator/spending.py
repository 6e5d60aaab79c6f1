"""What the batch's agents spend, as the control plane's relay measures it, and the budgets it holds
them to.

The relay charges each request to an account (accounts.py), and to every account above it:

    orchestration    run.py --budget-usd ($ORCHESTRATOR_BUDGET_USD): the person's ceiling
    ├── manager      the manager's Claude Code
    └── batch        orch start --budget-usd (dispatcher.json's budget_usd)
        └── task:ID  the task file's budget_usd (orch submit --budget-usd)

A request goes upstream only while every account on its way up has budget left, so nothing the
manager writes (a task file, ``orch start --budget-usd``) lifts the person's ceiling. The budgets
are read as the requests come: a budget changed meanwhile counts at once.

``spend.json`` on the shared volume holds every account's figures (``AccountView``), written by the
control plane when they change (at most once a second) and read back when it starts, so that a
restarted control plane forgets no spending. ``orch status`` shows it, the dispatcher starts no
task once the batch's budget is spent, and a worker's result carries its task's figures.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from . import environment
from .accounts import Ledger
from .errors import InvalidInput, UserError
from .ratelimit import GateView
from .relay_request import Notice, NoticeKind
from .store import OrchestrationDir, read_json, write_json
from .tickets import RELAY, Tickets, ended

SPEND_FILE = "spend.json"
ORCHESTRATION_ACCOUNT = "orchestration"
MANAGER_ACCOUNT = "manager"
BATCH_ACCOUNT = "batch"
WRITE_EVERY = 1.0  # seconds


def task_account(task_id: str) -> str:
    """A task's account (never the manager's, whatever the task is named)."""
    return f"task:{task_id}"


def batch_budget(orch: OrchestrationDir) -> float | None:
    """The batch's budget now (orch start --budget-usd)."""
    try:
        return orch.load_settings().budget_usd
    except UserError:
        return None


def ceiling(env: Mapping[str, str]) -> float | None:
    """The person's ceiling (run.py --budget-usd)."""
    given = environment.BUDGET_USD.get(env)
    return float(given) if given else None


def open_orchestration(ledger: Ledger, env: Mapping[str, str]) -> None:
    ledger.open_account(ORCHESTRATION_ACCOUNT, None, ceiling(env))


class WorkerAccounts:
    """The relay's resolver of worker tickets (Ledger.resolver), with the budgets of their tasks."""

    def __init__(self, ledger: Ledger, tickets: Tickets, orch: OrchestrationDir, env: Mapping[str, str]):
        self.ledger = ledger
        self.tickets = tickets
        self.orch = orch
        self.env = dict(env)

    def __call__(self, offered: str) -> tuple[str, str | None] | None:
        found = self.tickets.read(RELAY, offered)
        if found is None or ended(self.orch, found):
            return None
        account = task_account(found.task_id)
        try:
            task_budget = self.orch.load_task(found.task_id).budget_usd
        except UserError:
            task_budget = None
        open_orchestration(self.ledger, self.env)
        self.ledger.open_account(BATCH_ACCOUNT, ORCHESTRATION_ACCOUNT, batch_budget(self.orch))
        self.ledger.open_account(account, BATCH_ACCOUNT, task_budget)
        return account, BATCH_ACCOUNT


def snapshot(ledger: Ledger, gate: Callable[[], GateView] | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {
        "accounts": {account: ledger.account(account).to_json() for account in ledger.account_ids()}
    }
    if gate is not None:
        found["gate"] = gate().to_json()
    return found


def _read(orch: OrchestrationDir) -> dict[str, Any]:
    try:
        found = read_json(orch.root / SPEND_FILE)
    except (InvalidInput, OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def load(orch: OrchestrationDir) -> dict[str, dict[str, Any]]:
    """The accounts in spend.json, by id (none when there is no such file, or it cannot be read)."""
    accounts = _read(orch).get("accounts")
    if not isinstance(accounts, dict):
        return {}
    return {str(k): v for k, v in accounts.items() if isinstance(v, dict)}


def load_gate(orch: OrchestrationDir) -> dict[str, Any] | None:
    """The relay's gate to the API as spend.json last said it (ratelimit.GateView), or None."""
    gate = _read(orch).get("gate")
    return gate if isinstance(gate, dict) else None


def rate_limit_lines(gate: Mapping[str, Any] | None, accounts: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """What orch status says of the API's rate limits: the relay holding requests back, and the
    tasks whose requests wait in it."""
    lines = []
    until = gate.get("backoff_until") if gate else None
    if gate and gate.get("backing_off") and isinstance(until, int | float) and until > time.time():
        opens = time.strftime("%H:%M:%S", time.localtime(until))
        lines.append(
            f"the API's rate limit: the relay holds requests back until {opens} "
            f"({gate.get('reason') or 'a 429 or 529'}); at most {gate.get('bound')} of {gate.get('max_bound')} "
            "requests in flight for now"
        )
    waiting = sorted(
        account.removeprefix("task:")
        for account, view in accounts.items()
        if account.startswith("task:") and isinstance(view.get("held"), int) and view["held"] > 0
    )
    if waiting and lines:
        lines.append(f"waiting on the API's rate limit: {' '.join(waiting)}")
    elif waiting:
        bound = f" ({gate.get('bound')} at once)" if gate else ""
        lines.append(f"waiting in the relay for a place in flight to the API{bound}: {' '.join(waiting)}")
    return lines


def spent_line(accounts: Mapping[str, Mapping[str, Any]], orch: OrchestrationDir, env: Mapping[str, str]) -> str | None:
    """'the batch's budget is spent: $X of $Y' (or the orchestration's) when one is; else None."""
    budgets = ((BATCH_ACCOUNT, batch_budget(orch), "the batch's budget"),
               (ORCHESTRATION_ACCOUNT, ceiling(env), "the orchestration's budget (run.py --budget-usd)"))  # fmt: skip
    for account, budget, name in budgets:
        cost = (accounts.get(account) or {}).get("cost_usd")
        if budget is not None and isinstance(cost, int | float) and cost >= budget:
            return f"{name} is spent: ${cost:.2f} of ${budget:.2f}"
    return None


class SpendWriter:
    """Keeps spend.json as the ledger is, from a thread of the control plane."""

    def __init__(self, ledger: Ledger, orch: OrchestrationDir, gate: Callable[[], GateView] | None = None):
        self.ledger = ledger
        self.orch = orch
        self.gate = gate
        self._stop = threading.Event()
        self._lock = threading.Lock()  # the writer's thread and a request that spent a budget
        self._written: dict[str, Any] | None = None

    def restore(self) -> int:
        """What an earlier control plane measured, charged again; how many accounts."""
        accounts = load(self.orch)
        for view in accounts.values():
            with contextlib.suppress(ValueError, TypeError, KeyError):
                self.ledger.restore(view)
        return len(accounts)

    def start(self) -> SpendWriter:
        threading.Thread(target=self._run, name="spend", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.write()

    def notice(self, notice: Notice) -> None:
        """The relay's notice: a budget spent is written at once, from the request's thread. The
        dispatcher reads spend.json before it starts a task; a second's wait for the next round
        let a task start under a batch's budget that was already spent."""
        if notice.kind is NoticeKind.BUDGET_SPENT:
            self.write_now()

    def write_now(self) -> None:
        """spend.json as the ledger is; a failing disk is for the next round to retry."""
        with contextlib.suppress(OSError):
            self.write()

    def write(self) -> None:
        with self._lock:
            self._write()

    def _write(self) -> None:
        now = snapshot(self.ledger, self.gate)
        # What is in flight changes every moment, the seconds of a pause every second; the file
        # says what was spent, and who waits on the API's rate limit.
        steady = json.loads(json.dumps(now))
        for view in steady["accounts"].values():
            view.pop("in_flight", None)
        for moving in ("in_flight", "backoff_seconds_left"):
            steady.get("gate", {}).pop(moving, None)
        if steady != self._written and now["accounts"]:
            write_json(self.orch.root / SPEND_FILE, now)
            self._written = steady

    def _run(self) -> None:
        while not self._stop.wait(WRITE_EVERY):
            self.write_now()
