"""Claude Code, the one agent CLI today (agents.py names it): its command line, its environment
given the relay's URL and ticket, and the reading of its stream.

``claude -p --output-format stream-json --verbose`` prints one JSON event a line: a
``system``/``init`` event, ``assistant`` and ``user`` messages (text, tool calls, tool
results) and, last, a ``result`` event with ``subtype``, ``is_error``, ``result``,
``session_id``, ``total_cost_usd``, ``num_turns`` and ``duration_ms``.

The exit code alone does not tell success: an API error or a missing login ends with
``"subtype": "success"`` and ``"is_error": true``. The reader reports all of it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .agent import AgentReport
from .docker import flag
from .secrets import API_KEY_ENV, OAUTH_TOKEN_ENV

CLAUDE = "claude"
_SUMMARY_LIMIT = 160


class ClaudeCode:
    """The agent CLI protocol (agent.AgentCLI) for Claude Code."""

    name = "claude"
    command = CLAUDE

    def argv(self, model: str | None, max_turns: int | None) -> list[str]:
        return headless_argv(model, max_turns)

    def environment(self, api_url: str, ticket: str, *, api_key: bool) -> dict[str, str]:
        """The relay's URL, and the ticket in the variable the real credential would be in: Claude
        Code then sends the headers that kind of credential needs (an OAuth token its beta
        header), which the relay keeps when it swaps the ticket for the credential. And no traffic
        of its own besides the API's (update checks, telemetry, error reports): a worker has no
        way out but the relay and the egress proxy, which would refuse it, once a task, in the log."""
        return {
            "ANTHROPIC_BASE_URL": api_url,
            API_KEY_ENV if api_key else OAUTH_TOKEN_ENV: ticket,
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        }

    def reader(self) -> ClaudeStream:
        return ClaudeStream()


class ClaudeStream:
    """One run's stream-json, line by line: lines for the log, and the final report."""

    def __init__(self) -> None:
        self.final: Mapping[str, Any] | None = None
        self.last_text = ""

    def feed(self, line: str) -> list[str]:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            return [line]
        if not isinstance(event, Mapping):
            return []
        if event.get("type") == "result":
            self.final = event
        elif event.get("type") == "assistant":
            text = _assistant_text(event)
            if text:
                self.last_text = text
        return render_event(event)

    def report(self) -> AgentReport:
        final = self.final
        if final is None:
            return AgentReport(finished=False, success=False, output=self.last_text)
        said = final.get("result")
        output = said if isinstance(said, str) else self.last_text
        success = final.get("is_error") is False and final.get("subtype") == "success"
        error = None
        if not success:
            message = said if isinstance(said, str) else ""
            errors = final.get("errors")
            if not message and isinstance(errors, list):
                message = "; ".join(str(e) for e in errors)
            error = message or "no message"
        subtype = final.get("subtype")
        cost, turns, session = final.get("total_cost_usd"), final.get("num_turns"), final.get("session_id")
        return AgentReport(
            finished=True,
            success=success,
            output=output,
            error=error,
            # "success" with is_error says nothing more than the error does.
            error_kind=str(subtype) if not success and subtype and subtype != "success" else None,
            cost_usd=cost if isinstance(cost, (int, float)) and not isinstance(cost, bool) else None,
            turns=turns if isinstance(turns, int) and not isinstance(turns, bool) else None,
            session_id=session if isinstance(session, str) else None,
        )


def headless_argv(model: str | None, max_turns: int | None = None) -> list[str]:
    """The command line of a headless run; the prompt goes on standard input, which has no
    size limit (Linux refuses a single argument over 128 KiB). Every flag here is in
    ``claude --help``, but ``--max-turns``: the CLI accepts it without listing it
    (tests/e2e/test_images.py checks the real binary takes it)."""
    return [
        CLAUDE,
        "--print",
        "--output-format",
        "stream-json",
        # The CLI refuses stream-json in print mode without it.
        "--verbose",
        # Nobody is there to answer a permission prompt; the container is the sandbox.
        "--dangerously-skip-permissions",
        *flag("--model", model),
        *flag("--max-turns", max_turns),
    ]


def _shorten(text: str, limit: int = _SUMMARY_LIMIT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tool_summary(name: str, tool_input: Any) -> str:
    if not isinstance(tool_input, Mapping):
        return name
    for key in ("command", "file_path", "notebook_path", "path", "pattern", "url", "description", "query"):
        value = tool_input.get(key)
        if isinstance(value, str) and value:
            return f"{name} {_shorten(value)}"
    return f"{name} {_shorten(json.dumps(tool_input, ensure_ascii=False))}"


def _result_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if isinstance(part, Mapping))
    return ""


def render_event(event: Mapping[str, Any]) -> list[str]:
    """Readable lines for one stream-json event (what ``docker logs`` shows)."""
    kind = event.get("type")
    subtype = event.get("subtype")
    if kind == "system":
        if subtype == "init":
            return [f"session {event.get('session_id')} started (model {event.get('model')}, cwd {event.get('cwd')})"]
        if subtype == "api_retry":
            return [f"API retry {event.get('attempt')}/{event.get('max_retries')} ({event.get('error')})"]
        # Bookkeeping of the CLI's own (task_started, task_notification around every Bash call,
        # ...): the transcript keeps it; the log would only repeat the tool lines.
        return []
    if kind in ("assistant", "user"):
        message = event.get("message")
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        lines: list[str] = []
        for block in content if isinstance(content, list) else []:
            if not isinstance(block, Mapping):
                continue
            btype = block.get("type")
            if btype == "text" and kind == "assistant" and block.get("text", "").strip():
                lines.extend(f"  {line}" for line in block["text"].strip().splitlines())
            elif btype == "tool_use":
                lines.append(f"-> {_tool_summary(str(block.get('name')), block.get('input'))}")
            elif btype == "tool_result":
                mark = "<- error:" if block.get("is_error") else "<-"
                lines.append(f"{mark} {_shorten(_result_text(block.get('content'))) or '(no output)'}")
            elif btype == "thinking":
                lines.append("(thinking)")
        return lines
    if kind == "result":
        cost = event.get("total_cost_usd")
        cost_text = f"${cost:.4f}" if isinstance(cost, (int, float)) else "cost unknown"
        seconds = event.get("duration_ms")
        time_text = f"{seconds / 1000:.1f} s" if isinstance(seconds, (int, float)) else "time unknown"
        error = " with an error" if event.get("is_error") else ""
        return [f"finished{error}: {subtype}, {event.get('num_turns')} turns, {cost_text}, {time_text}"]
    return []


def _assistant_text(event: Mapping[str, Any]) -> str:
    message = event.get("message")
    content = message.get("content") if isinstance(message, Mapping) else None
    if isinstance(content, str):
        return content.strip()
    if not isinstance(content, list):
        return ""
    parts = [b.get("text", "") for b in content if isinstance(b, Mapping) and b.get("type") == "text"]
    return "\n".join(p for p in parts if p).strip()
