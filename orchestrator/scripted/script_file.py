"""The rehearsal script: a JSON file of scenarios that the scripted API plays in place of a model.

A rehearsal (`run.py --rehearsal`) runs the whole system with this script instead of a model: the manager
and every worker run the real Claude Code, which runs the tools the script calls (real commands on real
files) and sends their results back. Nothing is charged; no credential is needed.

The format, version 1
---------------------
    {
      "rehearsal": 1,
      "request": "Add a dark mode to the app",
      "scenarios": [
        {"match": "text found in the prompt", "turns": [TURN, ...]}
      ],
      "default": [TURN, ...]
    }

- "rehearsal" (required): the format's version, the number 1.
- "request" (optional): what the manager is asked first, a non-empty string.
- "scenarios" (required, may be empty): a list of objects of two keys, both required: "match", a
  non-empty string, and "turns", a list of TURNs (may be empty). No two scenarios have the same match.
- "default" (optional): the TURNs of every conversation that no scenario matches. Without it, such a
  conversation's requests get an HTTP 400 error that names the matches and quotes the prompt.
Any other key, at the top or in a scenario, is an error: a misspelt key is never silently ignored. So is
a key given twice in one object.

How a conversation finds its turn: a conversation (an agent's run) belongs to the scenario whose "match"
is found in its first user message, the prompt the agent was given (leaving out the <system-reminder>
sections Claude Code adds, where a match could appear by chance); when several are found, the longest
wins. Its n-th request (counting the assistant turns already in the conversation) gets the n-th TURN;
past the last, the agent is answered "Done." and ends. A request retried (after an error) gets the same
TURN again, unless that TURN is "attempts".

A TURN is one of these; each object has exactly one of the keys text, bash, write, edit, read, tool,
reply, error, attempts, after, which says what it is:
- "words": a string is short for {"text": "words"}.
- {"text": "words"}: an answer of these words alone, which ends the agent's turn (no tool to run).
- {"bash": "command", "description": "optional"}: a Bash tool call (description: "Run a command").
- {"write": "path", "content": "text"}: the Write tool: the file with this content.
- {"edit": "path", "old": "text", "new": "text"}: the Edit tool: old replaced by new in the file.
- {"read": "path"}: the Read tool.
- {"tool": "Name", "input": {...}}: any tool, by its name, with this input (an object; default {}).
- {"reply": [PART, ...]}: one assistant message of several parts (at least one), in order, each PART one
  of text, bash, write, edit, read, tool (or a string, for text), without "usage" or "model".
  A message with a tool call asks for the tool's result: the conversation goes on with the next TURN.
- Each of text, bash, write, edit, read, tool and reply may also carry
  "usage": {"input": N, "output": N, "cache_creation": N, "cache_read": N}, the tokens the answer says
  it used (each optional, an integer of 0 or more; by default 1000 input, 100 output, no cache tokens),
  and "model": "name", the model the answer names (by default the one the agent asked for).
- {"error": STATUS, "message": "optional", "retry_after": SECONDS, "retry": BOOL}: an HTTP error, with
  the API's JSON error body. STATUS is a number from 400 to 599 or one of the names "rate_limited" (429),
  "overloaded" (529), "server_error" (500), "billing" (402), "unauthorized" (401). "retry_after" (a number
  of 0 or more) sets the retry-after header; "retry" (true or false) the x-should-retry header: with false,
  Claude Code gives up at once, else it retries 408, 409, 429 and 5xx up to 10 times over about 3 minutes.
- {"attempts": [TURN, ...]}: the n-th request at this position gets the n-th TURN (at least one), and the
  last answers every later one. [{"error": 500, "retry": false}, "Fixed."]: the first attempt of a task
  fails at once, a retry of the task succeeds. Two conversations of one scenario share these counts.
- {"after": SECONDS, "then": TURN}: the TURN, after a delay of SECONDS (a number of 0 or more).

A fault anywhere is reported with the file and the place in it, e.g.
    rehearsal.json: scenarios[2].turns[1]: unknown turn {"bsh": ...}: a turn is one of text, bash, ...
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidInput, UserError
from .server import ScriptedAPI
from .turns import (
    Reply,
    Turn,
    Usage,
    attempts,
    bash,
    costing,
    edit,
    error,
    reply,
    slow,
    text,
    tool,
    write,
)
from .turns import read as read_call

VERSION = 1
TOP_KEYS = ("rehearsal", "request", "scenarios", "default")
SCENARIO_KEYS = ("match", "turns")
PART_KINDS = ("text", "bash", "write", "edit", "read", "tool")
REPLY_KINDS = (*PART_KINDS, "reply")
TURN_KINDS = (*REPLY_KINDS, "error", "attempts", "after")
COSTING_KEYS = ("usage", "model")
USAGE_KEYS = ("input", "output", "cache_creation", "cache_read")
# The keys each kind of turn takes, its own name first.
KIND_KEYS = {
    "text": ("text",),
    "bash": ("bash", "description"),
    "write": ("write", "content"),
    "edit": ("edit", "old", "new"),
    "read": ("read",),
    "tool": ("tool", "input"),
    "reply": ("reply",),
    "error": ("error", "message", "retry_after", "retry"),
    "attempts": ("attempts",),
    "after": ("after", "then"),
}
STATUS_NAMES = {"rate_limited": 429, "overloaded": 529, "server_error": 500, "billing": 402, "unauthorized": 401}


@dataclass(frozen=True)
class Scenario:
    """The turns of the conversations whose prompt contains ``match``."""

    match: str
    turns: tuple[Turn, ...]

    @classmethod
    def from_json(cls, data: object, where: str) -> Scenario:
        found = _object(data, where, "a scenario")
        _allow(found, SCENARIO_KEYS, where, "a scenario")
        match = _string(_required(found, "match", where, "the text that picks this scenario"), _at(where, "match"))
        turns = _list(_required(found, "turns", where, "the list of its turns"), _at(where, "turns"))
        return cls(match, tuple(_turn(turn, f"{where}.turns[{i}]") for i, turn in enumerate(turns)))


@dataclass(frozen=True)
class Script:
    """A rehearsal script: what the manager is asked first, and what the scripted model answers."""

    request: str | None
    scenarios: tuple[Scenario, ...]
    default: tuple[Turn, ...] | None = None

    @classmethod
    def from_json(cls, data: object) -> Script:
        found = _object(data, "", "the script")
        if "rehearsal" not in found:
            raise _Fault("", f'missing "rehearsal": the format\'s version, {VERSION}')
        version = found["rehearsal"]
        if type(version) is not int or version != VERSION:
            raise _Fault("rehearsal", f"version {_sketch(version)} is not one this program reads: it reads {VERSION}")
        _allow(found, TOP_KEYS, "", "the script")
        request = _string(found["request"], "request") if "request" in found else None
        listed = _list(_required(found, "scenarios", "", "the list of scenarios (may be empty)"), "scenarios")
        scenarios = tuple(Scenario.from_json(item, f"scenarios[{i}]") for i, item in enumerate(listed))
        first: dict[str, int] = {}
        for i, scenario in enumerate(scenarios):
            if scenario.match in first:
                raise _Fault(
                    f"scenarios[{i}].match",
                    f"{scenario.match!r} is already the match of scenarios[{first[scenario.match]}]",
                )
            first[scenario.match] = i
        default = None
        if "default" in found:
            turns = _list(found["default"], "default")
            default = tuple(_turn(turn, f"default[{i}]") for i, turn in enumerate(turns))
        return cls(request, scenarios, default)

    def serve(self, host: str = "127.0.0.1", port: int = 0, keep_requests: int | None = 1000) -> ScriptedAPI:
        """The scripted API playing this script, started on host:port (port 0: a free one)."""
        api = ScriptedAPI(host, port, default=self.default, keep_requests=keep_requests)
        try:
            for scenario in self.scenarios:
                api.script(scenario.match, *scenario.turns)
            return api.start()
        except BaseException:
            api.stop()
            raise


def load(text: str, source: str) -> Script:
    """The script in this JSON text; ``source`` names it in error messages (the file's name)."""
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
        return Script.from_json(data)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{source}: line {exc.lineno} column {exc.colno}: not valid JSON: {exc.msg}") from None
    except _Fault as fault:
        raise InvalidInput(f"{source}: {fault}") from None


def read(path: Path) -> Script:
    """The script in this file."""
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read the rehearsal script: {exc.strerror or exc}") from None
    return load(content, str(path))


# ---- reading a turn ------------------------------------------------------------------------------


class _Fault(Exception):
    """A fault at a place in the script; load() adds the source."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}" if where else message)


def _turn(data: object, where: str) -> Turn:
    if isinstance(data, str):
        return text(data)
    if not isinstance(data, dict):
        raise _Fault(
            where, f"not a turn: {_sketch(data)}: a turn is a string or an object, one of {_list_of(TURN_KINDS)}"
        )
    kind = _kind(data, TURN_KINDS, where, "turn")
    if kind in REPLY_KINDS:
        _allow(data, (*KIND_KEYS[kind], *COSTING_KEYS), where, f"a {kind} turn")
        made = _parts(data["reply"], _at(where, "reply")) if kind == "reply" else _part_of_kind(kind, data, where)
        return _costed(made, data, where)
    _allow(data, KIND_KEYS[kind], where, f"an {kind} turn")
    if kind == "error":
        return _error(data, where)
    if kind == "attempts":
        listed = _list(data["attempts"], _at(where, "attempts"))
        if not listed:
            raise _Fault(_at(where, "attempts"), "an empty list: attempts needs at least one turn")
        return attempts(*(_turn(turn, f"{where}.attempts[{i}]") for i, turn in enumerate(listed)))
    seconds = _seconds(data["after"], _at(where, "after"))
    then = _required(data, "then", where, "the turn that comes after the delay")
    return slow(seconds, _turn(then, _at(where, "then")))


def _parts(data: object, where: str) -> Reply:
    listed = _list(data, where)
    if not listed:
        raise _Fault(where, "an empty list: a reply needs at least one part")
    return reply(*(_part(part, f"{where}[{i}]") for i, part in enumerate(listed)))


def _part(data: object, where: str) -> Reply:
    if isinstance(data, str):
        return text(data)
    if not isinstance(data, dict):
        raise _Fault(
            where, f"not a part: {_sketch(data)}: a part is a string or an object, one of {_list_of(PART_KINDS)}"
        )
    kind = _kind(data, PART_KINDS, where, "part")
    for key in COSTING_KEYS:
        if key in data:
            raise _Fault(_at(where, key), f"{key} goes on the reply, not on one of its parts")
    _allow(data, KIND_KEYS[kind], where, f"a {kind} part")
    return _part_of_kind(kind, data, where)


def _part_of_kind(kind: str, data: dict, where: str) -> Reply:
    """One text or tool call; the keys are checked already."""
    value = _at(where, kind)
    if kind == "text":
        return text(_string(data["text"], value, empty=True))
    if kind == "bash":
        command = _string(data["bash"], value)
        if "description" in data:
            return bash(command, _string(data["description"], _at(where, "description")))
        return bash(command)
    if kind == "write":
        content = _required(data, "content", where, "the text the file gets")
        return write(_string(data["write"], value), _string(content, _at(where, "content"), empty=True))
    if kind == "edit":
        old = _string(_required(data, "old", where, "the text to replace"), _at(where, "old"), empty=True)
        new = _string(_required(data, "new", where, "the text that replaces it"), _at(where, "new"), empty=True)
        return edit(_string(data["edit"], value), old, new)
    if kind == "read":
        return read_call(_string(data["read"], value))
    tool_input = _object(data["input"], _at(where, "input"), "the tool's input") if "input" in data else {}
    return tool(_string(data["tool"], value), tool_input)


def _costed(made: Reply, data: dict, where: str) -> Reply:
    if not any(key in data for key in COSTING_KEYS):
        return made
    model = _string(data["model"], _at(where, "model")) if "model" in data else None
    usage = Usage()
    if "usage" in data:
        at_usage = _at(where, "usage")
        given = _object(data["usage"], at_usage, "the tokens used")
        _allow(given, USAGE_KEYS, at_usage, "usage")
        figures = {key: _count(given[key], _at(at_usage, key)) for key in USAGE_KEYS if key in given}
        usage = Usage(**figures)
    return costing(
        made,
        input=usage.input,
        output=usage.output,
        cache_creation=usage.cache_creation,
        cache_read=usage.cache_read,
        model=model,
    )


def _error(data: dict, where: str) -> Turn:
    status = data["error"]
    at_status = _at(where, "error")
    known = f"a status is a number from 400 to 599 or one of {_list_of(STATUS_NAMES)}"
    if isinstance(status, str):
        if status not in STATUS_NAMES:
            raise _Fault(at_status, f"unknown status {json.dumps(status)}: {known}")
        status = STATUS_NAMES[status]
    elif type(status) is not int or not 400 <= status <= 599:
        raise _Fault(at_status, f"not a status: {_sketch(status)}: {known}")
    message = _string(data["message"], _at(where, "message")) if "message" in data else None
    retry_after = _seconds(data["retry_after"], _at(where, "retry_after")) if "retry_after" in data else None
    should_retry = None
    if "retry" in data:
        should_retry = data["retry"]
        if not isinstance(should_retry, bool):
            raise _Fault(_at(where, "retry"), f"{_sketch(should_retry)} is not true or false")
    return error(status, message, should_retry=should_retry, retry_after=retry_after)


# ---- reading JSON values -------------------------------------------------------------------------


def _kind(data: dict, kinds: Sequence[str], where: str, what: str) -> str:
    found = [kind for kind in kinds if kind in data]
    if not found:
        raise _Fault(where, f"unknown {what} {_sketch(data)}: a {what} is one of {_list_of(kinds)}")
    if len(found) > 1:
        both = " and ".join(json.dumps(kind) for kind in found)
        raise _Fault(where, f"one {what} with {both}: a {what} is exactly one of {_list_of(kinds)}; give each its own")
    return found[0]


def _allow(data: dict, keys: Sequence[str], where: str, what: str) -> None:
    for key in data:
        if key not in keys:
            raise _Fault(where, f"unknown key {json.dumps(key)} in {what}: it takes {_list_of(keys)}")


def _required(data: dict, key: str, where: str, meaning: str) -> object:
    if key not in data:
        raise _Fault(where, f"missing {json.dumps(key)}: {meaning}")
    return data[key]


def _object(data: object, where: str, meaning: str) -> dict:
    if not isinstance(data, dict):
        raise _Fault(where, f"{_sketch(data)} is not an object ({meaning})")
    return data


def _list(data: object, where: str) -> list:
    if not isinstance(data, list):
        raise _Fault(where, f"{_sketch(data)} is not a list")
    return data


def _string(data: object, where: str, *, empty: bool = False) -> str:
    if not isinstance(data, str):
        raise _Fault(where, f"{_sketch(data)} is not a string")
    if not data and not empty:
        raise _Fault(where, "an empty string")
    return data


def _count(data: object, where: str) -> int:
    # bool is an int in Python, and `true` tokens are a typo, not 1
    if type(data) is not int or data < 0:
        raise _Fault(where, f"{_sketch(data)} is not a whole number of 0 or more")
    return data


def _seconds(data: object, where: str) -> float:
    if isinstance(data, bool) or not isinstance(data, int | float) or not math.isfinite(data) or data < 0:
        raise _Fault(where, f"{_sketch(data)} is not a number of seconds, 0 or more")
    return float(data)


def _at(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _list_of(names: Sequence[str] | dict[str, int]) -> str:
    return ", ".join(names)


def _sketch(data: object) -> str:
    """The value as JSON, short: an object by its keys alone ({"bsh": ...}), for it may hold a whole file."""
    if isinstance(data, dict):
        return "{" + ", ".join(f"{json.dumps(key)}: ..." for key in data) + "}"
    if isinstance(data, list):
        return "[...]" if data else "[]"
    shown = json.dumps(data)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    found: dict[str, object] = {}
    for key, value in pairs:
        if key in found:
            # json would keep the last silently, and one of the two is a mistake
            raise _Fault("", f"the key {json.dumps(key)} is given twice in one object")
        found[key] = value
    return found


def _no_constant(name: str) -> object:
    raise _Fault("", f"{name} is not a number JSON allows")
