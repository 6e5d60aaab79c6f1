"""The scripted API against the real Claude Code CLI on this host (no Docker), run as a user of its
own (tests/support/claude_cli.py); and the server alone, over HTTP."""

from __future__ import annotations

import json
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import cast

import pytest

from tests.support.claude_cli import MODEL, Agent, AgentRun, as_agent
from tests.support.scripted_api import (
    INPUT_TOKENS,
    OUTPUT_TOKENS,
    Reply,
    Request,
    ScriptedAPI,
    attempts,
    bash,
    costing,
    dynamic,
    edit,
    error,
    hang,
    read,
    reply,
    slow,
    text,
    write,
)
from tests.support.waiting import wait_until

# ---- the real CLI --------------------------------------------------------------------------------


def test_a_write_call_creates_the_file_and_the_run_succeeds_with_a_cost(api: ScriptedAPI, agent: Agent) -> None:
    api.script("WRITE-1", reply(text("Writing it."), write("hello.txt", "hi there\n")), text("Wrote hello.txt."))

    run = agent.run(api, "WRITE-1: write hello.txt")

    assert (agent.work / "hello.txt").read_text() == "hi there\n"
    assert run.result["subtype"] == "success", api.log()
    assert run.result["is_error"] is False
    assert run.result["result"] == "Wrote hello.txt."
    assert run.result["total_cost_usd"] > 0
    assert run.returncode == 0
    assert [r.position for r in api.requests_for("WRITE-1")] == [0, 1]


def test_a_bash_calls_output_comes_back_as_a_tool_result(api: ScriptedAPI, agent: Agent) -> None:
    api.script("BASH-1", bash("echo from-$((6 * 7)); pwd"), text("Ran it."))

    run = agent.run(api, "BASH-1: run a command")

    assert run.result["subtype"] == "success", api.log()
    assert api.tool_results("BASH-1") == [f"from-42\n{agent.work}"]


def test_results_of_calls_in_one_reply_come_in_the_order_of_the_calls(api: ScriptedAPI, agent: Agent) -> None:
    # The CLI runs both at once and sends back the one that finishes first first.
    api.script("ORDER-1", reply(text("Both."), bash("sleep 1; echo first"), bash("echo second")), text("Done."))

    agent.run(api, "ORDER-1: run two")

    assert api.tool_results("ORDER-1") == ["first", "second"]


def test_read_then_edit_change_a_file(api: ScriptedAPI, agent: Agent) -> None:
    notes = agent.work / "notes.txt"
    as_agent(notes, "colour: red\nsize: big\n")
    # Claude Code refuses to edit a file it has not read in this conversation.
    api.script("EDIT-1", read(str(notes)), edit(str(notes), "colour: red", "colour: blue"), text("Edited."))

    run = agent.run(api, "EDIT-1: change the colour")

    assert run.result["subtype"] == "success", api.log()
    assert notes.read_text() == "colour: blue\nsize: big\n"
    read_result, edit_result = api.tool_result_blocks("EDIT-1")
    assert "colour: red" in read_result.content
    assert not read_result.is_error
    assert not edit_result.is_error, edit_result.content


def test_two_conversations_at_once_each_follow_their_own_scenario(
    api: ScriptedAPI, make_agent: Callable[[], Agent]
) -> None:
    # A delay on each first turn, so that both conversations are open at the same time.
    api.script("PAR-A", slow(1, bash("echo alpha")), bash("echo alpha-2"), text("A done."))
    api.script("PAR-B", slow(1, bash("echo beta")), text("B done."))
    agents = {"PAR-A": make_agent(), "PAR-B": make_agent()}
    runs: dict[str, AgentRun] = {}

    def go(marker: str) -> None:
        runs[marker] = agents[marker].run(api, f"{marker}: your part")

    threads = [threading.Thread(target=go, args=(marker,)) for marker in agents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert runs["PAR-A"].result["result"] == "A done.", api.log()
    assert runs["PAR-B"].result["result"] == "B done.", api.log()
    assert api.tool_results("PAR-A") == ["alpha", "alpha-2"]
    assert api.tool_results("PAR-B") == ["beta"]
    assert api.unmatched() == []


def test_a_turn_may_read_an_earlier_tool_result(api: ScriptedAPI, agent: Agent) -> None:
    def echo_the_id(request):  # what a manager does with a task id a command printed
        task_id = request.tool_results()[-1].content.split()[-1]
        return bash(f"echo got {task_id}")

    api.script("DYN-1", bash("echo created task-1234"), dynamic(echo_the_id), text("Done."))

    agent.run(api, "DYN-1: create a task")

    assert api.tool_results("DYN-1") == ["created task-1234", "got task-1234"]


def test_an_error_then_an_answer_recovers(api: ScriptedAPI, agent: Agent) -> None:
    api.script("RETRY-1", attempts(error(500), text("Recovered.")))

    run = agent.run(api, "RETRY-1: try")

    assert run.result["subtype"] == "success"
    assert run.result["result"] == "Recovered."
    assert [(r.position, r.attempt) for r in api.requests_for("RETRY-1")] == [(0, 0), (0, 1)]


def test_overloaded_twice_then_told_not_to_retry_fails(api: ScriptedAPI, agent: Agent) -> None:
    api.script("OVER-1", attempts(error(529), error(529), error(529, should_retry=False)))

    run = agent.run(api, "OVER-1: try")

    assert run.result["is_error"] is True
    assert run.result["api_error_status"] == 529
    assert len(api.requests_for("OVER-1")) == 3


@pytest.mark.parametrize(
    ("message", "says"),
    [
        ("OAuth token has expired", "Failed to authenticate. API Error: 401 OAuth token has expired"),
        # The CLI reads the message: the real API's answer to a bad key reads as not being logged in at all.
        ("invalid x-api-key", "Not logged in · Please run /login"),
    ],
)
def test_a_401_ends_the_run_as_an_authentication_failure(
    api: ScriptedAPI, agent: Agent, message: str, says: str
) -> None:
    api.script("AUTH-1", error(401, message))

    run = agent.run(api, "AUTH-1: try")

    assert run.returncode == 1
    assert run.result["is_error"] is True
    assert run.result["api_error_status"] == 401
    assert run.result["result"] == says


def test_max_turns_ends_a_longer_scenario(api: ScriptedAPI, agent: Agent) -> None:
    api.script("TURNS-1", bash("touch one"), bash("touch two"), text("Never said."))

    run = agent.run(api, "TURNS-1: go", "--max-turns", "1")

    assert run.result["subtype"] == "error_max_turns", api.log()
    assert run.result["is_error"] is True
    # The first call runs; its result is never sent, as the CLI stops before a second turn.
    assert (agent.work / "one").exists()
    assert len(api.requests_for("TURNS-1")) == 1


def test_a_prompt_without_a_marker_is_told_why(api: ScriptedAPI, agent: Agent) -> None:
    api.script("KNOWN-1", text("Hello."))

    run = agent.run(api, "a prompt of no scenario")

    assert run.result["is_error"] is True
    assert "no scenario matched" in run.result["result"]
    assert api.unmatched()
    assert all(r.marker is None for r in api.unmatched())


def test_the_prompt_may_come_on_stdin(api: ScriptedAPI, agent: Agent) -> None:
    api.script("STDIN-1", bash("echo from stdin"), text("Read my prompt."))

    run = agent.run(api, None, stdin="STDIN-1: the prompt on stdin\n")

    assert run.result["result"] == "Read my prompt.", api.log()
    assert api.tool_results("STDIN-1") == ["from stdin"]


def test_an_oauth_token_arrives_as_a_bearer_authorization(api: ScriptedAPI, agent: Agent, token: str) -> None:
    api.script("TOKEN-1", text("Hi."))

    agent.run(api, "TOKEN-1: hello", credentials={"CLAUDE_CODE_OAUTH_TOKEN": token})

    assert api.requests_for("TOKEN-1")
    assert set(api.authorizations()) == {f"Bearer {token}"}
    assert api.api_keys() == []


def test_an_api_key_arrives_as_x_api_key(api: ScriptedAPI, agent: Agent) -> None:
    key = "sk-ant-api03-scripted-key"
    api.script("KEY-1", text("Hi."))

    run = agent.run(api, "KEY-1: hello", credentials={"ANTHROPIC_API_KEY": key})

    assert run.result["result"] == "Hi.", api.log()
    assert set(api.api_keys()) == {key}
    assert api.authorizations() == []


def test_a_hanging_answer_ends_when_the_cli_is_killed_and_stop_returns(agent: Agent) -> None:
    api = ScriptedAPI().start()
    api.script("HANG-1", hang())
    proc = agent.start(api, "HANG-1: wait")
    try:
        wait_until(lambda: sent_a_request(api, "HANG-1", proc), "the CLI's request", timeout=120)
        assert proc.poll() is None  # the CLI waits for the rest of the answer
    finally:
        proc.kill()
        proc.communicate(timeout=60)
    stopper = threading.Thread(target=api.stop)
    stopper.start()
    stopper.join(timeout=60)  # a guard against a stop that never returns, not a timing
    assert not stopper.is_alive()
    assert [r.answer for r in api.requests_for("HANG-1")] == ["hang"]


def sent_a_request(api: ScriptedAPI, marker: str, proc: subprocess.Popen[str]) -> bool:
    """Whether the CLI's request for ``marker`` has arrived; fails at once if the CLI ended."""
    if api.requests_for(marker):
        return True
    if proc.poll() is not None:
        raise AssertionError(f"the CLI ended first: {proc.communicate()}")
    return False


# ---- the server alone, over HTTP -----------------------------------------------------------------


def call(api: ScriptedAPI, method: str, path: str, body: object = None) -> tuple[int, dict, str]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(api.url + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def conversation(prompt: str, messages: list[dict] | None = None, stream: bool = True) -> dict:
    first = {"role": "user", "content": [{"type": "text", "text": prompt}]}
    return {"model": MODEL, "messages": [first, *(messages or [])], "tools": [{"name": "Bash"}], "stream": stream}


def sse_events(body: str) -> list[tuple[str, dict]]:
    events = []
    for chunk in body.strip().split("\n\n"):
        name, data = chunk.split("\n")
        events.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return events


def test_requests_besides_the_conversation_get_answers_and_are_recorded(api: ScriptedAPI) -> None:
    api.script("SIDE-1", text("the scenario"))

    assert call(api, "HEAD", "/api/hello")[0] == 200
    assert json.loads(call(api, "POST", "/v1/messages/count_tokens", {"messages": []})[2]) == {"input_tokens": 100}
    status, _, body = call(api, "GET", "/v1/models")
    assert status == 404
    assert json.loads(body)["type"] == "error"
    # A title asked for without tools is no turn of the scenario.
    status, _, body = call(
        api, "POST", "/v1/messages", {"model": MODEL, "messages": [{"role": "user", "content": "SIDE-1"}]}
    )
    assert json.loads(body)["content"] == [{"type": "text", "text": "OK."}]

    assert [r.kind for r in api.requests] == ["hello", "count_tokens", "other", "side"]
    assert api.requests_for("SIDE-1") == []


def test_an_unstreamed_turn_is_answered_as_one_json_message(api: ScriptedAPI) -> None:
    api.script("JSON-1", reply(text("Looking."), bash("ls")))

    status, _, body = call(api, "POST", "/v1/messages", conversation("JSON-1", stream=False))

    message = json.loads(body)
    assert status == 200
    assert message["stop_reason"] == "tool_use"
    assert [block["type"] for block in message["content"]] == ["text", "tool_use"]
    assert message["content"][1]["input"] == {"command": "ls", "description": "Run a command"}


def test_the_position_is_the_number_of_assistant_turns_and_ends_in_done(api: ScriptedAPI) -> None:
    api.script("POS-1", text("first"), text("second"))
    assistant = {"role": "assistant", "content": [{"type": "text", "text": "x"}]}
    user = {"role": "user", "content": "go on"}

    def answer(messages: list[dict]) -> str:
        events = sse_events(call(api, "POST", "/v1/messages", conversation("POS-1", messages))[2])
        return "".join(e["delta"]["text"] for name, e in events if name == "content_block_delta")

    assert answer([]) == "first"
    # One reply the CLI sent back as two assistant messages is still one turn.
    assert answer([assistant, assistant, user]) == "second"
    assert answer([assistant, user, assistant, user]) == "Done."


def test_a_stream_has_the_events_of_the_messages_api(api: ScriptedAPI) -> None:
    api.script("SSE-1", reply(text("Let me write."), write("/w/a.txt", "A")))

    status, headers, body = call(api, "POST", "/v1/messages", conversation("SSE-1"))

    assert status == 200
    assert headers["Content-Type"] == "text/event-stream"
    names = [name for name, _ in sse_events(body)]
    block = ["content_block_start", "content_block_delta", "content_block_stop"]
    assert names == ["message_start", *block, *block, "message_delta", "message_stop"]
    delta = dict(sse_events(body))["message_delta"]
    assert delta["delta"]["stop_reason"] == "tool_use"


def test_errors_carry_the_error_type_of_the_api(api: ScriptedAPI) -> None:
    api.script("ERR-1", attempts(error(529, should_retry=False), error(429), text("ok")))

    status, headers, body = call(api, "POST", "/v1/messages", conversation("ERR-1"))
    assert (status, json.loads(body)["error"]["type"], headers["x-should-retry"]) == (529, "overloaded_error", "false")
    status, _, body = call(api, "POST", "/v1/messages", conversation("ERR-1"))
    assert (status, json.loads(body)["error"]["type"]) == (429, "rate_limit_error")
    assert call(api, "POST", "/v1/messages", conversation("ERR-1"))[0] == 200
    assert call(api, "POST", "/v1/messages", conversation("ERR-1"))[0] == 200  # the last turn answers every later try


def test_the_marker_is_not_looked_for_in_system_reminders(api: ScriptedAPI) -> None:
    api.script("REAL-1", text("right"))
    api.script("OTHER-1", text("wrong"))
    first = {
        "role": "user",
        "content": [
            {"type": "text", "text": "<system-reminder>git log: OTHER-1 merged</system-reminder>"},
            {"type": "text", "text": "REAL-1: the task"},
        ],
    }
    body = {"model": MODEL, "messages": [first], "tools": [{"name": "Bash"}], "stream": True}

    call(api, "POST", "/v1/messages", body)

    assert [r.marker for r in api.requests] == ["REAL-1"]


def test_stop_ends_a_hanging_answer() -> None:
    api = ScriptedAPI().start()
    api.script("HANG-2", hang())
    outcome: list[object] = []

    def ask() -> None:
        try:
            outcome.append(call(api, "POST", "/v1/messages", conversation("HANG-2")))
        except OSError as exc:
            outcome.append(exc)

    asker = threading.Thread(target=ask)
    asker.start()
    wait_until(lambda: api.requests_for("HANG-2"), "the request at the API")
    api.stop()
    asker.join(timeout=60)

    assert not asker.is_alive()
    status, _, body = cast(tuple[int, dict, str], outcome[0])
    assert status == 200
    assert [name for name, _ in sse_events(body)] == ["message_start"]


def test_a_default_scenario_answers_prompts_without_a_marker() -> None:
    with ScriptedAPI(default=[text("default answer")]) as api:
        body = call(api, "POST", "/v1/messages", conversation("no marker here"))[2]

    assert [e["delta"]["text"] for name, e in sse_events(body) if name == "content_block_delta"] == ["default answer"]
    assert [r.marker for r in api.unmatched()] == [None]


def test_a_scenario_takes_only_turns() -> None:
    with ScriptedAPI() as api, pytest.raises(TypeError, match="not a turn"):
        api.script("BAD-1", "hello")  # type: ignore[arg-type]


def test_usage_and_model_per_reply_in_streams_and_json(api: ScriptedAPI) -> None:
    api.script("USE-1", costing(text("priced"), input=7, output=9, cache_creation=11, cache_read=13, model="claude-x"))
    api.script("USE-2", text("default"))

    events = dict(sse_events(call(api, "POST", "/v1/messages", conversation("USE-1"))[2]))
    start = events["message_start"]["message"]
    assert start["model"] == "claude-x"
    assert start["usage"] == {"input_tokens": 7, "output_tokens": 1, "cache_creation_input_tokens": 11,
                              "cache_read_input_tokens": 13}  # fmt: skip
    assert events["message_delta"]["usage"] == {"output_tokens": 9}
    whole = json.loads(call(api, "POST", "/v1/messages", conversation("USE-1", stream=False))[2])
    assert (whole["model"], whole["usage"]["output_tokens"], whole["usage"]["cache_read_input_tokens"]) == (
        "claude-x", 9, 13)  # fmt: skip
    plain = json.loads(call(api, "POST", "/v1/messages", conversation("USE-2", stream=False))[2])
    assert plain["model"] == MODEL  # the model asked for
    assert (plain["usage"]["input_tokens"], plain["usage"]["output_tokens"]) == (INPUT_TOKENS, OUTPUT_TOKENS)


def test_a_429_turn_carries_retry_after_and_is_counted(api: ScriptedAPI) -> None:
    api.script("RA-1", attempts(error(429, retry_after=6), text("ok")))

    status, headers, _ = call(api, "POST", "/v1/messages", conversation("RA-1"))

    assert (status, headers["retry-after"]) == (429, "6")
    assert call(api, "POST", "/v1/messages", conversation("RA-1"))[0] == 200
    assert api.rate_limited == 1 and api.answered("RA-1") == 2


def test_over_capacity_a_conversation_request_gets_a_429_and_uses_no_turn() -> None:
    arrived, release = threading.Semaphore(0), threading.Event()

    def held(request: Request) -> Reply:
        arrived.release()
        release.wait(60)
        return text("held")

    with ScriptedAPI(capacity=2, retry_after=3) as api:
        api.script("CAP-1", dynamic(held))
        holders = [threading.Thread(target=call, args=(api, "POST", "/v1/messages", conversation("CAP-1")))
                   for _ in range(2)]  # fmt: skip
        for holder in holders:
            holder.start()
        assert arrived.acquire(timeout=60) and arrived.acquire(timeout=60)  # both being answered
        status, headers, body = call(api, "POST", "/v1/messages", conversation("CAP-1"))
        release.set()
        for holder in holders:
            holder.join(timeout=60)
        assert (status, headers["retry-after"], json.loads(body)["error"]["type"]) == (429, "3", "rate_limit_error")
        assert sorted(r.attempt for r in api.requests_for("CAP-1") if r.attempt is not None) == [0, 1]
        assert [r.answer for r in api.requests_for("CAP-1") if r.attempt is None] == ["429 over capacity"]
        assert (api.max_in_flight, api.rate_limited, api.answered("CAP-1")) == (2, 1, 2)
        # Below capacity again: answered.
        assert call(api, "POST", "/v1/messages", conversation("CAP-1"))[0] == 200
