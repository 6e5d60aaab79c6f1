"""The turns of a scenario: what the scripted API answers a request with, and the helpers that make them.

A turn is one assistant message (`Reply`: text and tool calls, with its usage), an HTTP error (`Error`),
or a rule that picks or delays one: `Attempts`, `Slow`, `Hang`, `Dynamic`. How a request finds its turn:
the package docstring (orchestrator/scripted/__init__.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .requests import Request

INPUT_TOKENS = 1000
OUTPUT_TOKENS = 100

# The error type the real API gives with each status; the CLI reads both.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


@dataclass(frozen=True)
class TextBlock:
    text: str


@dataclass(frozen=True)
class ToolCall:
    name: str
    input: Mapping[str, object]


@dataclass(frozen=True)
class Usage:
    """The usage an answer reports, in tokens."""

    input: int = INPUT_TOKENS
    output: int = OUTPUT_TOKENS
    cache_creation: int = 0
    cache_read: int = 0


@dataclass(frozen=True)
class Reply:
    """One assistant message, streamed as the API streams it. Tool calls make its stop_reason tool_use.

    ``model`` is the model the answer names (None: the one the request asked for)."""

    blocks: tuple[TextBlock | ToolCall, ...]
    usage: Usage = Usage()
    model: str | None = None

    @property
    def stop_reason(self) -> str:
        return "tool_use" if any(isinstance(block, ToolCall) for block in self.blocks) else "end_turn"


@dataclass(frozen=True)
class Error:
    """An HTTP error with the API's JSON error body; `headers` such as x-should-retry go with it."""

    status: int
    message: str
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def error_type(self) -> str:
        return ERROR_TYPES.get(self.status, "api_error")


@dataclass(frozen=True)
class Attempts:
    """The n-th request at this position gets turns[n]; the last turn answers every later attempt."""

    turns: tuple[Turn, ...]


@dataclass(frozen=True)
class Slow:
    """The turn, after a delay (cut short by the server's stop)."""

    seconds: float
    turn: Turn


@dataclass(frozen=True)
class Hang:
    """message_start, then nothing until the server stops."""


@dataclass(frozen=True)
class Dynamic:
    """A turn computed from the request, e.g. from an earlier tool result (a task id a command printed)."""

    make: Callable[[Request], Turn]


Turn = Reply | Error | Attempts | Slow | Hang | Dynamic

DONE = Reply((TextBlock("Done."),))


def text(words: str) -> Reply:
    return Reply((TextBlock(words),))


def tool(name: str, input: Mapping[str, object]) -> Reply:
    return Reply((ToolCall(name, dict(input)),))


def bash(command: str, description: str = "Run a command") -> Reply:
    return tool("Bash", {"command": command, "description": description})


def write(path: str, content: str) -> Reply:
    return tool("Write", {"file_path": path, "content": content})


def edit(path: str, old: str, new: str) -> Reply:
    return tool("Edit", {"file_path": path, "old_string": old, "new_string": new})


def read(path: str) -> Reply:
    return tool("Read", {"file_path": path})


def reply(*parts: Reply) -> Reply:
    """One message of several blocks: reply(text("Let me look."), bash("ls"), read("a.txt"))."""
    return Reply(tuple(block for part in parts for block in part.blocks))


def costing(
    turn: Reply,
    *,
    input: int = INPUT_TOKENS,
    output: int = OUTPUT_TOKENS,
    cache_creation: int = 0,
    cache_read: int = 0,
    model: str | None = None,
) -> Reply:
    """The reply with this usage, and naming this model if one is given: costing(text("Hi."), output=5000)."""
    return replace(turn, usage=Usage(input, output, cache_creation, cache_read), model=model)


def error(
    status: int,
    message: str | None = None,
    *,
    should_retry: bool | None = None,
    retry_after: float | None = None,
) -> Error:
    """should_retry sets the x-should-retry header, which the API uses to tell clients whether to retry;
    retry_after the retry-after header (seconds)."""
    headers = [] if should_retry is None else [("x-should-retry", "true" if should_retry else "false")]
    if retry_after is not None:
        headers.append(("retry-after", f"{retry_after:g}"))
    return Error(status, message or f"scripted {status} {ERROR_TYPES.get(status, 'api_error')}", tuple(headers))


def attempts(*turns: Turn) -> Attempts:
    if not turns:
        raise ValueError("attempts() needs at least one turn")
    return Attempts(turns)


def slow(seconds: float, turn: Turn) -> Slow:
    return Slow(seconds, turn)


def hang() -> Hang:
    return Hang()


def dynamic(make: Callable[[Request], Turn]) -> Dynamic:
    return Dynamic(make)
