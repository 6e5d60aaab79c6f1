"""Shared fixtures: a fake docker CLI for the unit level, real engine helpers for end to end."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
FIXTURES = TESTS / "fixtures"
STANDIN = TESTS / "standin"

sys.path.insert(0, str(ROOT))


@dataclass
class FakeDocker:
    log: Path
    containers: Path

    def calls(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def argvs(self) -> list[list[str]]:
        return [call["argv"] for call in self.calls()]

    def find(self, *prefix: str) -> list[dict]:
        return [call for call in self.calls() if call["argv"][: len(prefix)] == list(prefix)]

    def add_container(self, name: str, fixture: str) -> None:
        """`docker container inspect NAME` answers with a saved real inspect document."""
        (self.containers / f"{name}.json").write_text((FIXTURES / fixture).read_text())


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
def docker_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A real unix socket standing for the engine's, named by DOCKER_HOST."""
    path = tmp_path / "docker.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    monkeypatch.setenv("DOCKER_HOST", f"unix://{path}")
    yield path
    sock.close()


def seed_repo(path: Path) -> Path:
    """A small repository with one commit on main."""
    path.mkdir(parents=True)
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    (path / "lib").mkdir()
    (path / "lib" / "main.dart").write_text("void main() {}\n")
    (path / "README.md").write_text("# App\n")
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "initial"]):
        subprocess.run(["git", *args], cwd=path, check=True, env=env, capture_output=True)
    return path
