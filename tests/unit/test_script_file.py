"""The rehearsal script (orchestrator/scripted/script_file.py): each turn it reads, the faults it names,
and a loaded script served and asked over HTTP."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from orchestrator.errors import InvalidInput, UserError
from orchestrator.scripted import script_file
from orchestrator.scripted.script_file import Scenario, Script
from orchestrator.scripted.server import ScriptedAPI
from orchestrator.scripted.turns import (
    Turn,
    attempts,
    bash,
    costing,
    edit,
    error,
    read,
    reply,
    slow,
    text,
    tool,
    write,
)


def script(*turns: object, **more: object) -> str:
    return json.dumps({"rehearsal": 1, "scenarios": [{"match": "TASK", "turns": list(turns)}], **more})


def one_turn(turn: object) -> Turn:
    (scenario,) = script_file.load(script(turn), "r.json").scenarios
    (loaded,) = scenario.turns
    return loaded


def fault(given: str) -> str:
    with pytest.raises(InvalidInput) as caught:
        script_file.load(given, "rehearsal.json")
    return str(caught.value)


# ---- what loads ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("Hello.", text("Hello.")),
        ({"text": "Hello."}, text("Hello.")),
        ({"bash": "ls -la"}, bash("ls -la")),
        ({"bash": "make", "description": "Build it"}, bash("make", "Build it")),
        ({"write": "a.txt", "content": "hi\n"}, write("a.txt", "hi\n")),
        ({"write": "empty.txt", "content": ""}, write("empty.txt", "")),
        ({"edit": "a.txt", "old": "hi", "new": "hello"}, edit("a.txt", "hi", "hello")),
        ({"read": "a.txt"}, read("a.txt")),
        ({"tool": "Glob", "input": {"pattern": "*.py"}}, tool("Glob", {"pattern": "*.py"})),
        ({"tool": "TodoRead"}, tool("TodoRead", {})),
        (
            {"reply": ["Looking.", {"bash": "ls"}, {"read": "a.txt"}, {"tool": "Glob", "input": {"pattern": "*"}}]},
            reply(text("Looking."), bash("ls"), read("a.txt"), tool("Glob", {"pattern": "*"})),
        ),
        (
            {"text": "Big.", "usage": {"input": 5, "output": 7, "cache_creation": 11, "cache_read": 13}},
            costing(text("Big."), input=5, output=7, cache_creation=11, cache_read=13),
        ),
        ({"bash": "ls", "usage": {"output": 5000}}, costing(bash("ls"), output=5000)),
        ({"text": "Hi.", "model": "claude-opus-4-5"}, costing(text("Hi."), model="claude-opus-4-5")),
        (
            {"reply": ["A", {"write": "f", "content": "x"}], "usage": {"input": 1}, "model": "m"},
            costing(reply(text("A"), write("f", "x")), input=1, model="m"),
        ),
        ({"error": 500}, error(500)),
        ({"error": "rate_limited", "retry_after": 6}, error(429, retry_after=6)),
        ({"error": "overloaded", "retry": False}, error(529, should_retry=False)),
        ({"error": "server_error", "message": "boom", "retry": True}, error(500, "boom", should_retry=True)),
        ({"error": "billing"}, error(402)),
        ({"error": "unauthorized", "retry_after": 0.5}, error(401, retry_after=0.5)),
        ({"error": 418}, error(418)),
        (
            {"attempts": [{"error": 500, "retry": False}, "Fixed."]},
            attempts(error(500, should_retry=False), text("Fixed.")),
        ),
        ({"after": 2.5, "then": {"bash": "ls"}}, slow(2.5, bash("ls"))),
        ({"after": 0, "then": {"attempts": ["x"]}}, slow(0, attempts(text("x")))),
    ],
)
def test_each_kind_of_turn_loads_to_its_turn(given: object, expected: Turn) -> None:
    assert one_turn(given) == expected


def test_a_whole_script_loads_with_its_request_scenarios_and_default() -> None:
    loaded = script_file.load(
        json.dumps(
            {
                "rehearsal": 1,
                "request": "Add a dark mode to the app",
                "scenarios": [
                    {"match": "manager", "turns": [{"bash": "orch spawn"}, "Spawned."]},
                    {"match": "dark mode", "turns": []},
                ],
                "default": ["Nothing to do."],
            }
        ),
        "rehearsal.json",
    )

    assert loaded == Script(
        "Add a dark mode to the app",
        (Scenario("manager", (bash("orch spawn"), text("Spawned."))), Scenario("dark mode", ())),
        (text("Nothing to do."),),
    )


def test_request_and_default_are_optional() -> None:
    loaded = script_file.load('{"rehearsal": 1, "scenarios": []}', "r.json")

    assert loaded == Script(None, (), None)


def test_read_names_the_file_it_read(tmp_path: Path) -> None:
    path = tmp_path / "rehearsal.json"
    path.write_text(script("Hi."))
    assert script_file.read(path).scenarios == (Scenario("TASK", (text("Hi."),)),)

    path.write_text('{"rehearsal": 2, "scenarios": []}')
    with pytest.raises(InvalidInput, match=re.escape(f"{path}: rehearsal: version 2")):
        script_file.read(path)
    with pytest.raises(UserError, match="cannot read"):
        script_file.read(tmp_path / "missing.json")
    path.write_bytes(b'{"rehearsal": 1, "scenarios": ["\xff"]}')
    with pytest.raises(InvalidInput, match="not UTF-8"):
        script_file.read(path)


# ---- the faults, and where they are --------------------------------------------------------------


def test_an_unknown_turn_is_named_with_its_place_and_the_kinds_there_are() -> None:
    given = json.dumps(
        {
            "rehearsal": 1,
            "scenarios": [
                {"match": "a", "turns": []},
                {"match": "b", "turns": []},
                {"match": "c", "turns": ["ok", {"bsh": "ls"}]},
            ],
        }
    )

    assert fault(given) == (
        'rehearsal.json: scenarios[2].turns[1]: unknown turn {"bsh": ...}: '
        "a turn is one of text, bash, write, edit, read, tool, reply, error, attempts, after"
    )


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        # the version
        ('{"scenarios": []}', 'rehearsal.json: missing "rehearsal"'),
        ('{"rehearsal": 2, "scenarios": []}', "rehearsal.json: rehearsal: version 2 is not one this program reads"),
        ('{"rehearsal": "1", "scenarios": []}', 'rehearsal.json: rehearsal: version "1" is not'),
        ('{"rehearsal": true, "scenarios": []}', "rehearsal.json: rehearsal: version true is not"),
        ('{"rehearsal": 1.0, "scenarios": []}', "rehearsal.json: rehearsal: version 1.0 is not"),
        # unknown keys
        ('{"rehearsal": 1, "scenarioz": []}', 'rehearsal.json: unknown key "scenarioz" in the script'),
        ('{"rehearsal": 1, "scenarios": [{"match": "a", "turn": []}]}', 'scenarios[0]: unknown key "turn"'),
        (script({"bash": "ls", "descripton": "x"}), 'scenarios[0].turns[0]: unknown key "descripton" in a bash turn'),
        (script({"error": 500, "retry_after_ms": 5}), 'scenarios[0].turns[0]: unknown key "retry_after_ms"'),
        (script({"text": "a", "usage": {"inputs": 1}}), 'turns[0].usage: unknown key "inputs" in usage'),
        # missing and wrong types
        ('{"rehearsal": 1}', 'rehearsal.json: missing "scenarios"'),
        ('{"rehearsal": 1, "scenarios": {}}', "rehearsal.json: scenarios: {} is not a list"),
        ('{"rehearsal": 1, "scenarios": ["a"]}', 'scenarios[0]: "a" is not an object'),
        ('{"rehearsal": 1, "scenarios": [{"turns": []}]}', 'scenarios[0]: missing "match"'),
        ('{"rehearsal": 1, "scenarios": [{"match": "", "turns": []}]}', "scenarios[0].match: an empty string"),
        ('{"rehearsal": 1, "scenarios": [{"match": 5, "turns": []}]}', "scenarios[0].match: 5 is not a string"),
        ('{"rehearsal": 1, "request": 5, "scenarios": []}', "rehearsal.json: request: 5 is not a string"),
        ('{"rehearsal": 1, "scenarios": [], "default": "Hi."}', 'default: "Hi." is not a list'),
        ('{"rehearsal": 1, "scenarios": [], "default": [7]}', "default[0]: not a turn: 7"),
        ("[1, 2]", "rehearsal.json: [...] is not an object"),
        (script({"bash": ["ls"]}), "scenarios[0].turns[0].bash: [...] is not a string"),
        (script({"write": "a.txt"}), 'scenarios[0].turns[0]: missing "content"'),
        (script({"edit": "a.txt", "old": "x"}), 'scenarios[0].turns[0]: missing "new"'),
        (script({"tool": "Glob", "input": "*.py"}), 'turns[0].input: "*.py" is not an object'),
        (script({"reply": []}), "turns[0].reply: an empty list"),
        (script({"reply": ["a", {"error": 500}]}), 'turns[0].reply[1]: unknown part {"error": ...}'),
        (script({"reply": [{"text": "a", "usage": {}}]}), "turns[0].reply[0].usage: usage goes on the reply"),
        (script({"attempts": []}), "turns[0].attempts: an empty list"),
        (script({"attempts": ["a", {"bsh": "ls"}]}), 'turns[0].attempts[1]: unknown turn {"bsh": ...}'),
        (script({"after": 5}), 'scenarios[0].turns[0]: missing "then"'),
        (script({"after": 1, "then": {"x": 1}}), 'turns[0].then: unknown turn {"x": ...}'),
        (script({"text": "a", "model": ""}), "turns[0].model: an empty string"),
        # numbers: a bool is no number, nor is a negative one
        (script({"text": "a", "usage": {"output": True}}), "turns[0].usage.output: true is not a whole number"),
        (script({"text": "a", "usage": {"input": -1}}), "turns[0].usage.input: -1 is not a whole number"),
        (script({"text": "a", "usage": {"input": 1.5}}), "turns[0].usage.input: 1.5 is not a whole number"),
        (script({"after": -1, "then": "a"}), "turns[0].after: -1 is not a number of seconds"),
        (script({"after": True, "then": "a"}), "turns[0].after: true is not a number of seconds"),
        (script({"error": 500, "retry_after": -2}), "turns[0].retry_after: -2 is not a number of seconds"),
        (script({"error": 500, "retry": "no"}), 'turns[0].retry: "no" is not true or false'),
        ('{"rehearsal": 1, "scenarios": [{"match": "a", "turns": [{"after": NaN, "then": "a"}]}]}', "NaN is not"),
        # two kinds in one turn
        (script({"text": "a", "bash": "ls"}), 'turns[0]: one turn with "text" and "bash"'),
        (script({"error": 500, "attempts": ["a"]}), 'turns[0]: one turn with "error" and "attempts"'),
        (script({"reply": [{"read": "a", "write": "b", "content": ""}]}), 'reply[0]: one part with "write" and "read"'),
        # statuses
        (script({"error": "overload"}), 'turns[0].error: unknown status "overload": a status is a number from 400'),
        (script({"error": 200}), "turns[0].error: not a status: 200"),
        (script({"error": 600}), "turns[0].error: not a status: 600"),
        (script({"error": True}), "turns[0].error: not a status: true"),
        # JSON itself
        ('{"rehearsal": 1,', "rehearsal.json: line 1 column 17: not valid JSON"),
        ('{"rehearsal": 1, "scenarios": [], "rehearsal": 1}', 'rehearsal.json: the key "rehearsal" is given twice'),
        (
            '{"rehearsal": 1, "scenarios": [{"match": "a", "turns": [{"text": "a", "text": "b"}]}]}',
            '"text" is given twice',
        ),
    ],
)
def test_a_fault_says_where_it_is(given: str, expected: str) -> None:
    message = fault(given)

    assert message.startswith("rehearsal.json: ")
    assert expected in message


def test_two_scenarios_may_not_share_a_match() -> None:
    given = json.dumps({"rehearsal": 1, "scenarios": [{"match": "a", "turns": []}, {"match": "a", "turns": []}]})

    assert fault(given) == "rehearsal.json: scenarios[1].match: 'a' is already the match of scenarios[0]"


def test_a_fault_is_a_user_error() -> None:
    with pytest.raises(UserError):
        script_file.load("{}", "r.json")


# ---- served --------------------------------------------------------------------------------------


def ask(api: ScriptedAPI, prompt: str, messages: list[dict] | None = None) -> tuple[int, dict]:
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "tools": [{"name": "Bash", "input_schema": {"type": "object"}}],
        "messages": [{"role": "user", "content": prompt}, *(messages or [])],
        "stream": False,
    }
    request = urllib.request.Request(
        api.url + "/v1/messages",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "x-api-key": "rehearsal"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_served_script_answers_with_its_turns_and_usage() -> None:
    loaded = script_file.load(
        json.dumps(
            {
                "rehearsal": 1,
                "scenarios": [
                    {
                        "match": "DARK-MODE",
                        "turns": [
                            {"bash": "git status", "usage": {"input": 1234, "output": 56, "cache_read": 7}},
                            {"text": "Done it.", "model": "claude-opus-4-5"},
                        ],
                    },
                    {"match": "OTHER", "turns": [{"error": "overloaded", "retry": False}]},
                ],
                "default": ["I was not told."],
            }
        ),
        "rehearsal.json",
    )

    with loaded.serve() as api:
        status, first = ask(api, "Please do DARK-MODE now")
        history = [{"role": "assistant", "content": first["content"]}, {"role": "user", "content": "ok"}]
        _, second = ask(api, "Please do DARK-MODE now", history)
        other_status, other = ask(api, "OTHER")
        _, unmatched = ask(api, "something else")

    assert status == 200
    assert first["stop_reason"] == "tool_use"
    (call,) = first["content"]
    assert (call["type"], call["name"], call["input"]) == (
        "tool_use",
        "Bash",
        {"command": "git status", "description": "Run a command"},
    )
    assert first["model"] == "claude-sonnet-4-5"
    assert first["usage"] == {
        "input_tokens": 1234,
        "output_tokens": 56,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 7,
    }
    assert second["content"] == [{"type": "text", "text": "Done it."}]
    assert (second["model"], second["stop_reason"]) == ("claude-opus-4-5", "end_turn")
    assert second["usage"]["input_tokens"] == 1000
    assert other_status == 529
    assert other["error"]["type"] == "overloaded_error"
    assert unmatched["content"] == [{"type": "text", "text": "I was not told."}]
    assert api.answered("DARK-MODE") == 2


def test_serve_keeps_the_latest_requests_it_is_told_to_keep() -> None:
    with Script(None, (Scenario("KEEP", (text("a"),)),)).serve(keep_requests=3) as api:
        for _ in range(5):
            assert ask(api, "KEEP")[0] == 200
        kept = api.requests

    assert [request.number for request in kept] == [3, 4, 5]
    assert api.answered("KEEP") == 5


def test_keep_requests_keeps_the_latest_and_counts_them_all() -> None:
    with ScriptedAPI(keep_requests=2, capacity=0) as api:
        api.script("ALL", attempts(error(500), text("ok")))
        for _ in range(3):
            assert ask(api, "ALL")[0] == 429  # over capacity: counted, no turn

    assert [request.number for request in api.requests] == [2, 3]
    assert api.rate_limited == 3

    with ScriptedAPI(keep_requests=2) as api:
        api.script("ALL", attempts(error(500), text("ok")))
        answers = [ask(api, "ALL")[0] for _ in range(4)]

    assert answers == [500, 200, 200, 200]  # the attempts count every request, kept or not
    assert [(request.number, request.attempt) for request in api.requests] == [(3, 2), (4, 3)]
    assert api.answered("ALL") == 4


def test_keep_requests_none_keeps_them_all() -> None:
    with ScriptedAPI() as api:
        api.script("ALL", text("ok"))
        for _ in range(5):
            ask(api, "ALL")

    assert len(api.requests) == 5
    with pytest.raises(ValueError, match="keep_requests"):
        ScriptedAPI(keep_requests=-1)
