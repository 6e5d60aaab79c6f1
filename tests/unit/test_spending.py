"""The control plane's accounts of its workers: a ticket's task, the budgets read from the task file,
the batch's settings and run.py's ceiling, and spend.json, which outlives a restart."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import pytest

from orchestrator import spending
from orchestrator.accounts import Ledger
from orchestrator.errors import InvalidInput
from orchestrator.ratelimit import RateGate
from orchestrator.relay_request import Notice, NoticeKind
from orchestrator.store import OrchestrationDir, write_json
from orchestrator.tasks import BatchSettings, State, Task, TaskResult, utc_now
from orchestrator.tickets import GIT, RELAY, Tickets

KEY = bytes(range(32))


@pytest.fixture
def orch(tmp_path: Path) -> OrchestrationDir:
    made = OrchestrationDir(tmp_path / "orch")
    made.ensure()
    return made


def write_task(orch: OrchestrationDir, task: Task) -> None:
    write_json(orch.task_path(task.id), task.to_json())


def accounts_of(orch: OrchestrationDir, env: dict[str, str] | None = None) -> tuple[Ledger, spending.WorkerAccounts]:
    ledger = Ledger(4)
    resolver = spending.WorkerAccounts(ledger, Tickets(KEY), orch, env or {})
    ledger.resolver = resolver
    return ledger, resolver


def test_a_workers_ticket_spends_from_its_task_under_the_batch_and_the_ceiling(orch: OrchestrationDir) -> None:
    write_task(orch, Task(id="t1", prompt="p", budget_usd=0.5))
    orch.write_settings(BatchSettings(budget_usd=3.0))
    ledger, _ = accounts_of(orch, {"ORCHESTRATOR_BUDGET_USD": "10"})
    ticket = Tickets(KEY).make(RELAY, "t1", 1)
    assert ledger.account_for(ticket) == "task:t1"
    views = {a: ledger.account(a) for a in ("task:t1", "batch", "orchestration")}
    assert [(v.parent, v.budget_usd) for v in views.values()] == [("batch", 0.5), ("orchestration", 3.0), (None, 10.0)]
    # Spent past the task's budget: refused; the batch and the ceiling are charged too.
    ledger.charge("task:t1", 0.75)
    assert ledger.spent("task:t1") == ("task:t1", "the budget of task:t1 is spent: $0.75 of $0.50")
    assert ledger.account("orchestration").cost_usd == 0.75
    # A git ticket, another key's, or a task that ended: no account.
    assert ledger.account_for(Tickets(KEY).make(GIT, "t1", 1)) is None
    assert ledger.account_for(Tickets(bytes(32)).make(RELAY, "t1", 1)) is None
    orch.write_result(TaskResult(task_id="t1", status=State.SUCCESS, output="", completed_at=utc_now(), attempt=1))
    assert ledger.account_for(ticket) is None


def test_a_budget_raised_meanwhile_counts_at_the_next_request(orch: OrchestrationDir) -> None:
    write_task(orch, Task(id="t1", prompt="p"))
    orch.write_settings(BatchSettings(budget_usd=1.0))
    ledger, _ = accounts_of(orch)
    ticket = Tickets(KEY).make(RELAY, "t1", 1)
    ledger.account_for(ticket)
    ledger.charge("task:t1", 1.2)
    assert ledger.spent("task:t1") == ("batch", "the budget of batch is spent: $1.20 of $1.00")
    orch.write_settings(replace(orch.load_settings(), budget_usd=5.0))
    ledger.account_for(ticket)
    assert ledger.spent("task:t1") is None


def test_the_manager_cannot_lift_the_persons_ceiling(orch: OrchestrationDir) -> None:
    # A task file and orch start as generous as the manager likes: run.py's ceiling holds.
    write_task(orch, Task(id="t1", prompt="p", budget_usd=1000))
    orch.write_settings(BatchSettings(budget_usd=1000))
    ledger, _ = accounts_of(orch, {"ORCHESTRATOR_BUDGET_USD": "1"})
    ledger.account_for(Tickets(KEY).make(RELAY, "t1", 1))
    ledger.charge("task:t1", 1.0)
    assert ledger.spent("task:t1") == ("orchestration", "the budget of orchestration is spent: $1.00 of $1.00")
    line = spending.spent_line(json.loads(json.dumps(spending.snapshot(ledger)))["accounts"], orch,
                               {"ORCHESTRATOR_BUDGET_USD": "1"})  # fmt: skip
    assert line == "the orchestration's budget (run.py --budget-usd) is spent: $1.00 of $1.00"


def test_spend_json_is_written_as_it_changes_and_taken_back_by_a_new_control_plane(orch: OrchestrationDir) -> None:
    write_task(orch, Task(id="t1", prompt="p"))
    ledger, _ = accounts_of(orch)
    ledger.account_for(Tickets(KEY).make(RELAY, "t1", 1))
    ledger.charge("task:t1", 0.25)
    ledger.add_tokens("task:t1", input_tokens=10, output_tokens=20)
    writer = spending.SpendWriter(ledger, orch)
    writer.write()
    found = spending.load(orch)
    assert found["task:t1"]["cost_usd"] == 0.25 and found["batch"]["output_tokens"] == 20
    again = Ledger(4)
    assert spending.SpendWriter(again, orch).restore() == 3
    assert (again.account("task:t1").cost_usd, again.account("task:t1").parent) == (0.25, "batch")
    assert again.account("orchestration").input_tokens == 10


def test_a_budget_spent_is_in_spend_json_at_once_for_the_dispatcher(orch: OrchestrationDir) -> None:
    """The dispatcher reads spend.json before it starts a task; the writer's thread is not started
    here, so only the relay's notice can have written it."""
    write_task(orch, Task(id="t1", prompt="p"))
    orch.write_settings(BatchSettings(budget_usd=1.0))
    ledger, _ = accounts_of(orch)
    ledger.account_for(Tickets(KEY).make(RELAY, "t1", 1))
    writer = spending.SpendWriter(ledger, orch)
    ledger.charge("task:t1", 0.5)
    writer.notice(Notice(NoticeKind.REFUSED, "task:t1", "a refusal is not a budget spent"))
    assert spending.load(orch) == {}
    for account, line in ledger.charge("task:t1", 0.75):
        writer.notice(Notice(NoticeKind.BUDGET_SPENT, account, line))
    assert spending.spent_line(spending.load(orch), orch, {}) == "the batch's budget is spent: $1.25 of $1.00"


def test_spend_json_says_when_the_relay_holds_requests_for_the_apis_rate_limit(orch: OrchestrationDir) -> None:
    write_task(orch, Task(id="t1", prompt="p"))
    ledger, _ = accounts_of(orch)
    ledger.account_for(Tickets(KEY).make(RELAY, "t1", 1))
    gate = RateGate(8, jitter=lambda: 0.0)
    writer = spending.SpendWriter(ledger, orch, gate=gate.view)
    writer.write()
    assert spending.rate_limit_lines(spending.load_gate(orch), spending.load(orch)) == []
    gate.back_off(429, 30)
    ledger.count("task:t1", held=1)  # a request of t1's waiting at the gate, as the relay counts it
    writer.write()
    said = spending.rate_limit_lines(spending.load_gate(orch), spending.load(orch))
    assert len(said) == 2 and said[0].startswith("the API's rate limit: the relay holds requests back until ")
    assert "(retry-after 30 s (429)); at most 4 of 8 requests in flight for now" in said[0]
    assert said[1] == "waiting on the API's rate limit: t1"
    # The pause over (as the file's clock says), nothing is said of it.
    found = json.loads((orch.root / spending.SPEND_FILE).read_text())
    found["gate"]["backoff_until"] = time.time() - 1
    assert spending.rate_limit_lines(found["gate"], {}) == []
    assert spending.rate_limit_lines(found["gate"], found["accounts"]) == [
        "waiting in the relay for a place in flight to the API (4 at once): t1"
    ]


def test_a_damaged_spend_json_reads_as_nothing(orch: OrchestrationDir) -> None:
    (orch.root / spending.SPEND_FILE).write_text("{not json")
    assert spending.load(orch) == {}


@pytest.mark.parametrize("value", [-1, "1", True, float("inf")])
def test_a_budget_is_a_number_of_usd_of_0_or_more(value: object) -> None:
    with pytest.raises(InvalidInput, match="budget_usd' must be a number of USD"):
        Task.from_json({"id": "t1", "prompt": "p", "budget_usd": value})
    assert Task.from_json({"id": "t1", "prompt": "p", "budget_usd": 0}).budget_usd == 0.0
    assert Task.from_json({"id": "t1", "prompt": "p", "budget_usd": 2.5}).to_json()["budget_usd"] == 2.5
