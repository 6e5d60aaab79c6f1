"""The scripted Anthropic Messages API the tests run the real Claude Code CLI against.

It lives in the package, orchestrator/scripted/ (rehearsal mode serves it too), whose docstring tells how a
request finds its turn and what the real CLI sends and does; the tests import it from here.
"""

from __future__ import annotations

from orchestrator.scripted.requests import SYSTEM_REMINDER, Request, ToolResult, assistant_turns
from orchestrator.scripted.server import ScriptedAPI
from orchestrator.scripted.turns import (
    DONE,
    ERROR_TYPES,
    INPUT_TOKENS,
    OUTPUT_TOKENS,
    Attempts,
    Dynamic,
    Error,
    Hang,
    Reply,
    Slow,
    TextBlock,
    ToolCall,
    Turn,
    Usage,
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
    tool,
    write,
)

__all__ = [
    "DONE",
    "ERROR_TYPES",
    "INPUT_TOKENS",
    "OUTPUT_TOKENS",
    "SYSTEM_REMINDER",
    "Attempts",
    "Dynamic",
    "Error",
    "Hang",
    "Reply",
    "Request",
    "ScriptedAPI",
    "Slow",
    "TextBlock",
    "ToolCall",
    "ToolResult",
    "Turn",
    "Usage",
    "assistant_turns",
    "attempts",
    "bash",
    "costing",
    "dynamic",
    "edit",
    "error",
    "hang",
    "read",
    "reply",
    "slow",
    "text",
    "tool",
    "write",
]
