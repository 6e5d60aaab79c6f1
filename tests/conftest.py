"""Shared fixtures: a fake docker CLI for the unit level; the real engine's come from engine.py."""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator import environment
from orchestrator.secrets import SECRET_ENV
from orchestrator.store import OrchestrationDir

from .engine import api, engine, git_server, manager, run, test_images  # noqa: F401  (end-to-end fixtures)
from .helpers import TESTS, FakeDocker
from .http_git import http_git_server  # noqa: F401  (a git server over HTTP that wants a token)
from .own_engine import own_engine  # noqa: F401  (an engine of the tests' own)
from .ssh_git import ssh_git_server  # noqa: F401  (the SSH git server)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No setting or secret of the person running the tests reaches a test, and every test
    starts with the usual umask (the commands set their own, and some tests call them here)."""
    for var in environment.ALL:
        monkeypatch.delenv(var.name, raising=False)
    for name in SECRET_ENV:
        monkeypatch.delenv(name, raising=False)
    umask = os.umask(0o022)
    yield
    os.umask(umask)


@pytest.fixture
def orch(tmp_path: Path) -> OrchestrationDir:
    """A shared folder of the tests' own, with its subfolders."""
    orch = OrchestrationDir(tmp_path / "orchestration")
    orch.ensure()
    return orch


@pytest.fixture
def fake_docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeDocker:
    containers = tmp_path / "fake-containers"
    containers.mkdir()
    fake = FakeDocker(log=tmp_path / "docker-calls.jsonl", containers=containers)
    monkeypatch.setenv("PATH", f"{TESTS / 'fakes'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DOCKER_LOG", str(fake.log))
    monkeypatch.setenv("FAKE_DOCKER_CONTAINERS", str(containers))
    return fake


@pytest.fixture
def token() -> str:
    """A token value unlike anything else, so that any leak of it is found."""
    return f"sk-ant-oat01-TEST{uuid.uuid4().hex}"


@pytest.fixture
def token_file(tmp_path: Path, token: str) -> Path:
    path = tmp_path / "claude-token"
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def ssh_key(tmp_path: Path) -> Path:
    path = tmp_path / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "orchestrator-test", "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path


@pytest.fixture
def docker_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A real unix socket standing for the engine's, named by DOCKER_HOST."""
    path = tmp_path / "docker.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    monkeypatch.setenv("DOCKER_HOST", f"unix://{path}")
    yield path
    sock.close()
