"""What arrived at the scripted API: each request as recorded, and what is read from it (the prompt, where a
scenario's marker is looked for; the tool results the agent sent back; the position in the scenario)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

SYSTEM_REMINDER = re.compile(r"<system-reminder>.*?</system-reminder>", re.DOTALL)


@dataclass(frozen=True)
class ToolResult:
    """A tool call's result as the agent sent it back; content without the reminders Claude Code appends."""

    tool_use_id: str
    content: str
    is_error: bool
    raw: object


@dataclass(frozen=True)
class Request:
    """One request as it arrived, and how it was answered.

    kind: "conversation" (a POST /v1/messages with tools), "side" (one without tools), "hello",
    "count_tokens" or "other". marker, position and attempt are set for conversation requests that matched.
    """

    number: int
    received: float  # time.monotonic() on arrival
    method: str
    path: str
    headers: dict[str, str]
    body: object
    kind: str
    marker: str | None = None
    position: int | None = None
    attempt: int | None = None
    answer: str = ""

    def header(self, name: str) -> str | None:
        """A header by its name in any case, as HTTP has it."""
        wanted = name.lower()
        return next((value for key, value in self.headers.items() if key.lower() == wanted), None)

    @property
    def messages(self) -> list[dict]:
        messages = self.body.get("messages") if isinstance(self.body, dict) else None
        return [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []

    def prompt(self) -> str:
        """The text of the first user message without <system-reminder> sections: where markers are looked for.

        Claude Code puts its context (the environment, CLAUDE.md, git status with commit messages) in such
        sections of the first message, where another scenario's marker could appear by chance.
        """
        first = next((m for m in self.messages if m.get("role") == "user"), None)
        return _without_reminders(_text_of(first.get("content"))) if first else ""

    def tool_results(self) -> list[ToolResult]:
        """The results of tool calls in this request's history, in the order of the calls.

        Not in the order they came: the CLI runs the calls of one reply at once and sends their results
        back as they finish.
        """
        calls = [
            block.get("id")
            for message in self.messages
            if message.get("role") == "assistant" and isinstance(message.get("content"), list)
            for block in message["content"]
            if isinstance(block, dict) and block.get("type") == "tool_use"
        ]
        results = [
            ToolResult(
                str(block.get("tool_use_id")),
                _without_reminders(_text_of(block.get("content"))).strip("\n"),
                bool(block.get("is_error")),
                block.get("content"),
            )
            for message in self.messages
            if message.get("role") == "user" and isinstance(message.get("content"), list)
            for block in message["content"]
            if isinstance(block, dict) and block.get("type") == "tool_result"
        ]
        order = {tool_use_id: index for index, tool_use_id in enumerate(calls)}
        return sorted(results, key=lambda result: order.get(result.tool_use_id, len(order)))

    def summary(self) -> str:
        where = f" {self.marker!r}@{self.position}#{self.attempt}" if self.marker is not None else ""
        return f"{self.number} {self.method} {self.path} [{self.kind}{where}] -> {self.answer}"


def _text_of(content: object) -> str:
    """The text in a message's or tool result's content: a string, or a list of blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            block["text"] for block in content if isinstance(block, dict) and isinstance(block.get("text"), str)
        )
    return ""


def _without_reminders(text: str) -> str:
    return SYSTEM_REMINDER.sub("", text)


def assistant_turns(messages: Iterable[dict]) -> int:
    """Runs of assistant messages: the CLI may send one reply back as several messages."""
    turns = 0
    previous = None
    for message in messages:
        role = message.get("role")
        if role == "assistant" and previous != "assistant":
            turns += 1
        if role in ("user", "assistant"):
            previous = role
    return turns
