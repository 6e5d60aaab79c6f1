"""Budgets the agents cannot lift, end to end: the control plane's relay measures what each task's
real Claude Code spends (the scripted API's usage figures, priced), refuses the next request once
a task's budget or the batch's is spent, and the dispatcher starts nothing more."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.e2e.test_hostile_agent import CURL, FIND_TICKET, TICKET
from tests.support.commands import sh
from tests.support.end_to_end import Bridge, Run, start_manager
from tests.support.git_servers import GitServer
from tests.support.scripted_api import attempts, bash, costing, error, text, write
from tests.support.waiting import wait_until

CLONE = "/workspace/repo"
# One such answer costs $1.50 or more at the price of the model the tests' Claude Code asks for
# ($15 per million output tokens, or more).
DEAR = 100_000


def test_budgets_of_a_task_of_zero_and_of_the_batch_stop_the_spending_and_keep_the_work(
    bridge_run: Run, bridge: Bridge, bridge_git: GitServer, token_file: Path
):
    run = bridge_run
    repo = bridge_git.repo(f"budget-{run.id}")
    spender = run.prompt("spender", costing(write(f"{CLONE}/notes/spent.txt", "spent\n"), output=DEAR),
                         text("never sent: the budget is spent"))  # fmt: skip
    nothing = run.prompt("nothing", text("never sent: a budget of 0"))
    manager = start_manager(run, repo, token_file, network=bridge.name)
    try:
        task = manager.submit(spender, "--budget-usd", "0.50")
        zero = manager.submit(nothing, "--budget-usd", "0")
        manager.orch("start", task, zero, "--max-workers", "2")
        manager.orch("wait", task, zero, check=False)

        result = manager.result(task)
        assert result["status"] == "budget_exceeded", result
        assert "the budget of task:" in result["error"] and "is spent" in result["error"]
        # Its work came back as for any other end.
        assert result["pushed"] is True
        assert result["files_changed"] == [{"path": "notes/spent.txt", "added": 1, "deleted": 0}]
        # The relay's own measure, beside the agent's claim; the API saw nothing after the budget was spent.
        usage = result["usage"]
        assert usage["state"] == "spent" and usage["output_tokens"] >= DEAR and usage["cost_usd"] >= 1.5, usage
        assert usage["over_budget"] == 1
        assert len(run.api.requests_for(run.marker("spender"))) == 1
        # A budget of 0: not one request went upstream.
        nil = manager.result(zero)
        assert nil["status"] == "budget_exceeded" and nil["usage"]["requests"] == 0, nil
        assert run.api.requests_for(run.marker("nothing")) == []

        # The batch's budget: what the first task spent and half of one such answer more. The next
        # task's first answer crosses it; its next request is refused, and the task after it never starts.
        dear = usage["cost_usd"]
        budget = round(dear * 1.5, 4)
        big = run.prompt("big", costing(write(f"{CLONE}/notes/big.txt", "big\n"), output=DEAR), text("never sent"))
        after = run.prompt("after", text("never started"))
        first = manager.submit(big)
        second = manager.submit(after)
        manager.orch("start", first, second, "--max-workers", "1", "--budget-usd", str(budget))
        manager.orch("wait", first, second, check=False)
        ended = manager.result(first)
        assert ended["status"] == "budget_exceeded", ended
        assert len(run.api.requests_for(run.marker("big"))) == 1, (ended, manager.orch("status", "--json").stdout)
        late = manager.result(second)
        assert late["status"] == "budget_exceeded" and "not started: the batch's budget is spent" in late["error"]
        assert run.api.requests_for(run.marker("after")) == []
        # orch status says why, and shows the relay's figures.
        shown = manager.orch("status").stdout
        assert "the batch's budget is spent" in shown, shown
        status = manager.status()
        assert status[task]["cost_usd"] >= 1.5
        accounts = json.loads(manager.orch("status", "--json").stdout)["relay"]["accounts"]
        assert accounts["batch"]["cost_usd"] >= 2 * dear and accounts["batch"]["budget_usd"] == budget
    finally:
        manager.remove()


def test_a_hostile_agent_cannot_spend_past_its_budget(
    bridge_run: Run, bridge: Bridge, bridge_git: GitServer, token_file: Path
):
    # Its first answer spends its budget; then, with its own ticket (read from its Claude Code's
    # environment), it asks the API twenty times at once, forges a ticket of another task, goes
    # without one, and asks for another path. What it saw goes into its work, which comes back.
    run = bridge_run
    repo = bridge_git.repo(f"hostile-spend-{run.id}")
    spend = f"spend-more-{run.id}"
    body = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 10,
                       "messages": [{"role": "user", "content": spend}]})  # fmt: skip
    post = f"-X POST -H 'content-type: application/json' -d '{body}' \"$ANTHROPIC_BASE_URL/v1/messages?beta=true\""
    attack = (
        f"mkdir -p {CLONE}/notes; {{ "
        + FIND_TICKET
        + f"for i in $(seq 20); do {CURL} {TICKET} {post} & done; wait; "
        # Another task's ticket: its own, with another task in it (the MAC is of its own task).
        + "P=$(printf 'someone-else/1' | base64 | tr '+/' '-_' | tr -d '='); T2=\"relay-$P.${T##*.}\"; "
        + f'echo forged; {CURL} -H "Authorization: Bearer $T2" {post}; '
        + f"echo none; {CURL} {post}; "
        + f'echo models; {CURL} {TICKET} "$ANTHROPIC_BASE_URL/v1/models"; '
        + f"}} > {CLONE}/notes/attack.txt 2>&1"
    )
    prompt = run.prompt("hostile", costing(bash(attack), output=DEAR), text("never sent"))
    manager = start_manager(run, repo, token_file, network=bridge.name)
    try:
        task = manager.submit(prompt, "--budget-usd", "0.50", "--start")
        manager.orch("wait", task, check=False)
        result = manager.result(task)
    finally:
        manager.remove()
    assert result["status"] == "budget_exceeded" and result["pushed"] is True, result
    seen = subprocess.run(["git", "--git-dir", str(bridge_git.base / f"hostile-spend-{run.id}.git"), "show",
                           f"{result['branch']}:notes/attack.txt"], capture_output=True, text=True,
                          check=True).stdout  # fmt: skip
    lines = seen.split()
    print(f"\n{lines.count('http=402')} of 20 parallel requests refused for the budget; {seen!r}")
    assert "ticket: relay" in seen and lines.count("http=402") == 20, seen
    assert seen.split("forged")[1].split()[0] == "http=401" and seen.split("none")[1].split()[0] == "http=401"
    assert seen.split("models")[1].split()[0] == "http=403"
    # Nothing it sent reached the API: only the one answer that spent the budget.
    assert not [r for r in run.api.requests if spend in json.dumps(r.body)]
    assert len(run.api.requests_for(run.marker("hostile"))) == 1
    assert result["usage"]["over_budget"] >= 21 and result["usage"]["requests"] == 1, result["usage"]


def test_a_task_waiting_on_the_apis_rate_limit_says_so(
    bridge_run: Run, bridge: Bridge, bridge_git: GitServer, token_file: Path
):
    # The API answers 429 with retry-after 20 s: the control plane's relay holds the request, and
    # orch status and the worker's log say who waits and until when; then the answer comes.
    run = bridge_run
    repo = bridge_git.repo(f"limited-{run.id}")
    prompt = run.prompt("limited", attempts(error(429, "slow down", retry_after=20), text("after the pause")))
    manager = start_manager(run, repo, token_file, network=bridge.name)
    try:
        task = manager.submit(prompt, "--start")

        def waiting() -> str | None:
            out = manager.orch("status").stdout
            return out if f"waiting on the API's rate limit: {task}" in out else None

        shown = wait_until(waiting, lambda: manager.orch("status").stdout, timeout=120)
        assert "the API's rate limit: the relay holds requests back until " in shown
        assert "(retry-after 20 s (429)); at most 4 of 8 requests in flight for now" in shown
        gate = json.loads(manager.orch("status", "--json").stdout)["relay"]["gate"]
        assert gate["backing_off"] is True and gate["bound"] == 4
        manager.orch("wait", task, check=False)
        result = manager.result(task)
        assert result["status"] == "success" and result["output"] == "after the pause", result
        assert result["usage"]["rate_limited"] == 1 and result["usage"]["queued_seconds"] >= 20
        logs = sh("docker", "logs", f"worker-{task}").stdout
        assert "waiting on the API's rate limit: retry-after 20 s (429)" in logs
        assert "waiting on the API's rate limit" not in manager.orch("status").stdout  # said no more once it is over
    finally:
        manager.remove()
