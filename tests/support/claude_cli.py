"""The real Claude Code CLI as an agent on this machine (no Docker), pointed at the scripted API or
at a relay in front of it.

The CLI refuses --dangerously-skip-permissions as root, so a root test process runs it as uid 1001
with a fresh HOME and working folder of that user's. CLAUDE_BIN names the binary.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .scripted_api import ScriptedAPI

# Where .ci/ensure-tools installs it, at the version the images pin.
CLAUDE_BIN = (
    os.environ.get("CLAUDE_BIN")
    or "/opt/orchestrator-ci/claude-code/node_modules/@anthropic-ai/claude-code/bin/claude.exe"
)
INSTALL_HINT = ".ci/ensure-tools"
AGENT_UID = 1001
MODEL = "claude-sonnet-4-5"  # a model with a known price, so that the CLI's cost is above 0


class Endpoint(Protocol):
    """What the CLI is pointed at: the scripted API, or a relay in front of it."""

    @property
    def url(self) -> str: ...


@dataclass(frozen=True)
class AgentRun:
    returncode: int
    events: tuple[dict, ...]
    stderr: str

    @property
    def result(self) -> dict:
        results = [event for event in self.events if event.get("type") == "result"]
        assert results, f"no result event (exit {self.returncode}):\n{self.stderr[-3000:]}"
        return results[-1]


@dataclass(frozen=True)
class Agent:
    """The real CLI, headless, as an unprivileged user with its own HOME and working folder."""

    home: Path
    work: Path

    def argv(self, prompt: str | None, options: tuple[str, ...]) -> list[str]:
        flags = ["-p", "--output-format", "stream-json", "--verbose", "--dangerously-skip-permissions"]
        return [CLAUDE_BIN, *flags, "--model", MODEL, *options, *([prompt] if prompt is not None else [])]

    def env(self, api: Endpoint, credentials: dict[str, str]) -> dict[str, str]:
        # Nothing of the test process's own environment: a real key there must not reach the scripted server.
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.home),
            "ANTHROPIC_BASE_URL": api.url,
            "DISABLE_AUTOUPDATER": "1",
            # Without it the CLI first sends HEAD /api/hello; the scripted API answers that too.
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            **credentials,
        }

    def popen_options(self) -> dict:
        if os.geteuid() == 0:
            return {"user": AGENT_UID, "group": AGENT_UID, "extra_groups": []}
        return {}

    def run(
        self,
        api: Endpoint,
        prompt: str | None,
        *options: str,
        stdin: str = "",
        credentials: dict[str, str] | None = None,
        timeout: float = 180,
    ) -> AgentRun:
        proc = subprocess.run(  # a failing run is an outcome to assert on
            self.argv(prompt, options),
            check=False,
            cwd=self.work,
            env=self.env(api, credentials or {"CLAUDE_CODE_OAUTH_TOKEN": "sk-ant-oat01-scripted"}),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            **self.popen_options(),
        )
        events = tuple(json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{"))
        return AgentRun(proc.returncode, events, proc.stderr)

    def start(self, api: ScriptedAPI, prompt: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(prompt, ()),
            cwd=self.work,
            env=self.env(api, {"CLAUDE_CODE_OAUTH_TOKEN": "sk-ant-oat01-scripted"}),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **self.popen_options(),
        )


def as_agent(path: Path, content: str) -> None:
    """A file the agent's user may edit."""
    path.write_text(content)
    if os.geteuid() == 0:
        os.chown(path, AGENT_UID, AGENT_UID)


@contextmanager
def agent_folders() -> Iterator[Callable[[], Agent]]:
    """Makes Agents, each with a HOME and a working folder of its own; removes them at the end."""
    # Not pytest's tmp_path: pytest makes its folders 0700 for root, where uid 1001 cannot go.
    roots: list[Path] = []

    def make() -> Agent:
        root = Path(tempfile.mkdtemp(prefix="scripted-api-"))
        roots.append(root)
        agent = Agent(root / "home", root / "work")
        for path in (agent.home, agent.work):
            path.mkdir()
        if os.geteuid() == 0:
            for path in (root, agent.home, agent.work):
                os.chown(path, AGENT_UID, AGENT_UID)
        return agent

    try:
        yield make
    finally:
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)
