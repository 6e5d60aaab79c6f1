"""Fixtures of the unit tests: a shared folder, a fake docker CLI, a socket standing for the
engine's, the board's fake batch, the relay's notices, and the real Claude Code CLI on this machine."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from orchestrator.control.dashboard import Dashboard
from orchestrator.relay import Notice
from orchestrator.store import OrchestrationDir
from tests.support.claude_cli import CLAUDE_BIN, INSTALL_HINT, Agent, agent_folders
from tests.support.fake_board import FakeBoard, sample_batch
from tests.support.fake_docker import FakeDocker
from tests.support.paths import FAKES


@pytest.fixture
def orch(tmp_path: Path) -> OrchestrationDir:
    """A shared folder of the tests' own, with its subfolders."""
    orch = OrchestrationDir(tmp_path / "orchestration")
    orch.ensure()
    return orch


@pytest.fixture
def fake_docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeDocker:
    """The fake docker CLI (support/fakes/docker) first on PATH, recording every call."""
    containers = tmp_path / "fake-containers"
    containers.mkdir()
    fake = FakeDocker(log=tmp_path / "docker-calls.jsonl", containers=containers)
    monkeypatch.setenv("PATH", f"{FAKES}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DOCKER_LOG", str(fake.log))
    monkeypatch.setenv("FAKE_DOCKER_CONTAINERS", str(containers))
    # The volumes `volume create` makes (run.py's control plane binds a folder of the shared one).
    monkeypatch.setenv("FAKE_DOCKER_VOLUMES", str(tmp_path / "fake-volumes"))
    return fake


@pytest.fixture
def docker_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A real unix socket standing for the engine's, named by DOCKER_HOST."""
    path = tmp_path / "docker.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    monkeypatch.setenv("DOCKER_HOST", f"unix://{path}")
    yield path
    sock.close()


@pytest.fixture
def backend() -> FakeBoard:
    """The board's backend: a batch of every state, which a test changes as it goes."""
    return sample_batch()


@pytest.fixture
def board(backend: FakeBoard) -> Iterator[Dashboard]:
    with Dashboard(backend, poll_interval=0.05) as running:
        yield running


@pytest.fixture
def notices() -> list[Notice]:
    """What a relay told its owner."""
    return []


@pytest.fixture(scope="session")
def claude_bin() -> str:
    if not os.access(CLAUDE_BIN, os.X_OK):
        pytest.fail(f"the Claude Code CLI is not at {CLAUDE_BIN} (CLAUDE_BIN); install it with: {INSTALL_HINT}")
    return CLAUDE_BIN


@pytest.fixture
def make_agent(claude_bin: str) -> Iterator[Callable[[], Agent]]:
    """The real CLI as an unprivileged user, a HOME of its own for each agent made."""
    with agent_folders() as make:
        yield make


@pytest.fixture
def agent(make_agent: Callable[[], Agent]) -> Agent:
    return make_agent()
