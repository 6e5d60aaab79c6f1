"""Judging and rendering Claude Code's stream-json output.

The not-logged-in and API-error streams in tests/support/saved were produced by the real CLI
(2.1.197) in this environment, which cannot reach the API.
"""

from __future__ import annotations

import io
import json

import pytest

from orchestrator.agent import AgentProcess, AgentReport, AgentRun, judge
from orchestrator.agent_claude import ClaudeStream, headless_argv, render_event
from orchestrator.sandbox import AgentUser
from orchestrator.tasks import State
from tests.support.paths import SAVED


def events(name: str) -> list[dict]:
    return [json.loads(line) for line in (SAVED / name).read_text().splitlines() if line.strip()]


def report_of(*stream: dict | None) -> AgentReport:
    """What Claude Code's reader makes of these events, as the worker reads them."""
    reader = ClaudeStream()
    for event in stream:
        if event is not None:
            reader.feed(json.dumps(event))
    return reader.report()


def run_of(stream: list[dict], exit_code: int) -> AgentRun:
    return AgentRun(exit_code=exit_code, report=report_of(*stream), stderr_tail="")


SUCCESS = {
    "type": "result",
    "subtype": "success",
    "is_error": False,
    "duration_ms": 1200,
    "num_turns": 3,
    "result": "Done.",
    "session_id": "s1",
    "total_cost_usd": 0.02,
}


def test_success_needs_a_clean_result_and_exit_code_zero():
    assert judge(AgentRun(0, report_of(SUCCESS), ""), 60) == (State.SUCCESS, None)


@pytest.mark.parametrize(
    ("fixture", "message"),
    [("not-logged-in.jsonl", "Not logged in"), ("api-error.jsonl", "Unable to connect to API")],
)
def test_real_error_streams_are_failures_even_with_subtype_success(fixture, message):
    stream = events(fixture)
    final = stream[-1]
    assert (final["subtype"], final["is_error"]) == ("success", True)  # what makes this case tricky
    state, error = judge(run_of(stream, 1), 60)
    assert state is State.FAILED
    assert message in (error or "")
    # Even had the CLI exited 0, an error result is not a success.
    assert judge(run_of(stream, 0), 60)[0] is State.FAILED


@pytest.mark.parametrize(
    ("final", "exit_code", "expected"),
    [
        ({**SUCCESS, "subtype": "error_max_turns", "is_error": False, "result": ""}, 0, "error_max_turns"),
        ({**SUCCESS, "subtype": "error_during_execution", "is_error": True}, 1, "error_during_execution"),
        ({k: v for k, v in SUCCESS.items() if k != "is_error"}, 0, "reported an error"),
        (SUCCESS, 2, "exited with code 2"),
        (None, 0, "without a result (exit code 0)"),
        (None, -9, "without a result (exit code -9)"),
    ],
)
def test_anything_short_of_a_clean_result_fails(final, exit_code, expected):
    state, error = judge(AgentRun(exit_code, report_of(final), "boom"), 60)
    assert state is State.FAILED
    assert expected in (error or "")


def test_stopped_runs_are_timeout_or_cancelled_whatever_the_agent_said():
    assert judge(AgentRun(-15, report_of(SUCCESS), "", stopped="timeout"), 30)[0] is State.TIMEOUT
    assert "30 s" in (judge(AgentRun(-15, report_of(), "", stopped="timeout"), 30)[1] or "")
    assert judge(AgentRun(-15, report_of(), "", stopped="cancelled"), 30)[0] is State.CANCELLED


def test_the_error_says_what_the_agent_said_and_no_subtype_that_says_nothing():
    # Claude Code ends an API error with subtype "success" and is_error true: "(success)" would mislead.
    api_error = {**SUCCESS, "is_error": True, "result": "API Error: 529 Overloaded"}
    assert (
        judge(AgentRun(1, report_of(api_error), ""), 60)[1] == "the agent reported an error: API Error: 529 Overloaded"
    )
    turns = {**SUCCESS, "subtype": "error_max_turns", "is_error": True, "result": "Reached maximum number of turns"}
    assert judge(AgentRun(1, report_of(turns), ""), 60)[1] == (
        "the agent reported an error (error_max_turns): Reached maximum number of turns"
    )


def test_rendering_is_readable():
    lines = [line for event in events("api-error.jsonl") for line in render_event(event)]
    assert lines[0].startswith("session 637277dd-") and "claude-opus-4-5-20251101" in lines[0]
    assert "API retry 1/10 (unknown)" in lines
    assert "  API Error: Unable to connect to API (ConnectionRefused)" in lines
    assert lines[-1].startswith("finished with an error: success, 1 turns, $0.0000")

    tool_use = {
        "type": "assistant",
        "message": {"content": [{"type": "tool_use", "name": "Bash", "input": {"command": "flutter test"}}]},
    }
    assert render_event(tool_use) == ["-> Bash flutter test"]
    result = {"type": "user", "message": {"content": [{"type": "tool_result", "content": "All tests passed!"}]}}
    assert render_event(result) == ["<- All tests passed!"]
    failed = {
        "type": "user",
        "message": {
            "content": [{"type": "tool_result", "is_error": True, "content": [{"type": "text", "text": "exit 1"}]}]
        },
    }
    assert render_event(failed) == ["<- error: exit 1"]
    assert render_event({"type": "stream_event"}) == []


def test_headless_argv_leaves_the_prompt_to_standard_input():
    argv = headless_argv("claude-x", max_turns=3)
    assert argv[:2] == ["claude", "--print"]
    assert argv[2:4] == ["--output-format", "stream-json"]
    assert "--verbose" in argv and "--dangerously-skip-permissions" in argv
    assert argv[argv.index("--model") + 1] == "claude-x" and argv[argv.index("--max-turns") + 1] == "3"
    assert "--model" not in headless_argv(None) and "--" not in argv


def test_a_stop_before_the_start_keeps_the_agent_from_starting(tmp_path):
    process = AgentProcess(
        ["/nonexistent/claude"],
        prompt="p",
        user=AgentUser("nobody", 65534, 65534, tmp_path),
        cwd=str(tmp_path),
        env={},
        timeout=None,
        on_line=lambda line: None,
        transcript=io.StringIO(),
        scrub=str,
        reader=ClaudeStream(),
    )
    process.stop("cancelled")
    run = process.run()  # would raise FileNotFoundError had it tried to start
    assert (run.stopped, run.exit_code) == ("cancelled", None)
    assert judge(run, None)[0] is State.CANCELLED


def test_what_is_kept_and_shown_of_the_agent_s_output_is_bounded(tmp_path, monkeypatch):
    """An agent that prints without end fills neither the shared volume nor the worker's log,
    nor the runtime's memory with one endless line."""
    from orchestrator import agent

    monkeypatch.setattr(agent, "OUTPUT_LIMIT", 1000)
    monkeypatch.setattr(agent, "LINE_LIMIT", 400)
    shown: list[str] = []
    transcript = io.StringIO()
    process = AgentProcess(["claude"], prompt="p", user=AgentUser("nobody", 65534, 65534, tmp_path),
                           cwd=str(tmp_path), env={}, timeout=None, on_line=shown.append, transcript=transcript,
                           scrub=str, reader=ClaudeStream())  # fmt: skip
    long_line = "x" * 900 + "\n"
    final = json.dumps(SUCCESS) + "\n"
    process._read_stdout(io.StringIO("y" * 30 + "\n" + long_line + "z" * 30 + "\n"))
    assert shown == ["y" * 30, "x" * 400, "z" * 30]  # the long line: its first LINE_LIMIT characters
    assert transcript.getvalue().splitlines() == ["y" * 30, "x" * 400, "z" * 30]
    process._read_stdout(io.StringIO(("v" * 50 + "\n") * 100 + final))
    assert sum(len(line) + 1 for line in transcript.getvalue().splitlines()) <= 1000 + 500
    assert "transcript cut at 1000 bytes" in transcript.getvalue().splitlines()[-1]
    assert "cut here, at 1000 bytes" in shown[-1] and sum(len(line) for line in shown) <= 1000 + 500
    assert process.reader.report() == report_of(SUCCESS)  # read all the same: the outcome does not depend on the cut
