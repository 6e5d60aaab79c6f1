"""The agent CLIs a worker can run (STYLE.md: a Protocol, agent.AgentCLI, and a table). Another
one is a module of its own beside agent_claude.py and an entry here, and nothing else."""

from __future__ import annotations

from collections.abc import Mapping

from .agent import AgentCLI
from .agent_claude import ClaudeCode
from .errors import InvalidInput

AGENTS: Mapping[str, AgentCLI] = {"claude": ClaudeCode()}


def agent_cli(name: str) -> AgentCLI:
    found = AGENTS.get(name)
    if found is None:
        raise InvalidInput(f"no agent CLI {name!r}; there is {', '.join(AGENTS)}")
    return found
