"""The real Claude Code CLI (CLAUDE_BIN, run as tests/support/claude_cli.py runs it) through the API
relay, against the scripted API, on this host (no Docker): a run succeeds and costs what the CLI
itself says; a spent budget ends a run at once with the budget's own words; a rate limit is waited
out in the relay, not by the CLI."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from orchestrator.relay import ApiRelay, Notice, NoticeKind
from orchestrator.secrets import ClaudeCredential
from tests.support.claude_cli import Agent
from tests.support.scripted_api import ScriptedAPI, attempts, bash, costing, error, reply, text, write


@pytest.fixture
def relay(api: ScriptedAPI, token: str, notices: list[Notice]) -> Iterator[ApiRelay]:
    with ApiRelay(ClaudeCredential(token), api.url, on_notice=notices.append) as relay:
        yield relay


def test_a_headless_run_succeeds_and_costs_what_the_cli_says(
    api: ScriptedAPI, relay: ApiRelay, agent: Agent, token: str
) -> None:
    api.script(
        "CLI-1",
        reply(text("Writing."), write("notes.txt", "through the relay\n")),
        costing(bash("cat notes.txt"), input=4000, output=700, cache_creation=2000, cache_read=9000),
        text("Read it back."),
    )
    ticket = relay.issue_ticket("task-001", budget_usd=5)

    run = agent.run(relay, "CLI-1: write and read", credentials={"CLAUDE_CODE_OAUTH_TOKEN": ticket})

    assert run.result["subtype"] == "success" and run.result["result"] == "Read it back.", api.log()
    assert api.tool_results("CLI-1")[1] == "through the relay"
    assert set(api.authorizations()) == {f"Bearer {token}"}  # the real token reached the API, never the ticket
    view = relay.account("task-001")
    print(f"\nthe CLI's total_cost_usd ${run.result['total_cost_usd']:.6f}, the relay's ${view.cost_usd:.6f}")
    assert view.cost_usd == pytest.approx(run.result["total_cost_usd"])
    assert view.requests == len(api.requests) == 3 and view.refused == 0


def test_a_spent_budget_ends_the_run_with_its_error_and_nothing_more_goes_upstream(
    api: ScriptedAPI, relay: ApiRelay, agent: Agent, notices: list[Notice]
) -> None:
    # The first turn costs $0.753 (1000 in, 50,000 out at claude-sonnet-4-5): over the $0.50.
    api.script("CLI-2", costing(bash("echo ran > proof.txt"), output=50_000), bash("echo never"), text("Never."))
    ticket = relay.issue_ticket("task-001", budget_usd=0.50)

    run = agent.run(relay, "CLI-2: spend", credentials={"CLAUDE_CODE_OAUTH_TOKEN": ticket})

    print(f"\nthe CLI's result: {run.result['result']}")
    assert (agent.work / "proof.txt").read_text() == "ran\n"  # the first turn's tool ran
    assert run.returncode == 1 and run.result["is_error"] is True
    assert run.result["api_error_status"] == 402
    assert run.result["result"] == "API Error: 402 the budget of task-001 is spent: $0.75 of $0.50"
    assert len(api.requests) == 1, api.log()  # the CLI asked again (with the tool's result): refused in the relay
    assert relay.account("task-001").over_budget == 1  # and it did not retry
    assert [(n.kind, n.account) for n in notices] == [(NoticeKind.BUDGET_SPENT, "task-001")]


def test_a_rate_limit_is_waited_out_in_the_relay(
    api: ScriptedAPI, relay: ApiRelay, agent: Agent, notices: list[Notice]
) -> None:
    api.script("CLI-3", attempts(error(429, retry_after=2), error(529), text("Recovered.")))

    run = agent.run(relay, "CLI-3: go", credentials={"CLAUDE_CODE_OAUTH_TOKEN": relay.ticket})

    assert run.result["subtype"] == "success" and run.result["result"] == "Recovered.", api.log()
    view = relay.account("agent")
    assert len(api.requests) == 3 and view.requests == 3
    assert view.requests - view.retried == 1  # the CLI sent one request; the relay sent it three times
    assert (view.rate_limited, view.overloaded) == (1, 1)
    assert [n.message for n in notices] == [
        "waiting on the API's rate limit: retry-after 2 s (429)",
        "waiting on the API's rate limit: 529 without retry-after: a pause of 2 s",
    ]
