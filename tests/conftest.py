"""Fixtures of the unit and the end-to-end tests alike: a clean environment, secrets unlike any
other, and the scripted Claude API. Those of one kind live in unit/conftest.py and e2e/conftest.py."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator import environment
from orchestrator.secrets import SECRET_ENV
from tests.support.scripted_api import ScriptedAPI


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
def api() -> Iterator[ScriptedAPI]:
    """The Claude API of the test's agents, on 127.0.0.1: the containers of the end-to-end tests
    reach it through the host network (a worker's relay passes requests on to it). A test's
    containers are removed before it stops (the run fixture depends on it)."""
    with ScriptedAPI() as server:
        yield server


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
