"""Fixtures of the end-to-end tests: the real engine, images built from the real Dockerfiles, git
servers of the tests' own on loopback, a run (names and a volume) and a manager per test, and an
engine of the tests' own. Every test in this folder is marked ``docker`` here, so that
``pytest -m "not docker"`` runs the unit tests alone."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.commands import sh
from tests.support.end_to_end import PREFIX, Bridge, Manager, Run, build_test_images, make_bridge, start_manager
from tests.support.git_servers import (
    GitServer,
    HttpGitServer,
    SshGitServer,
    serve_git_daemon,
    serve_http_git,
    serve_ssh_git,
)
from tests.support.own_engine import OwnEngine, own_engine_running
from tests.support.scripted_api import ScriptedAPI

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.docker)


@pytest.fixture(scope="session")
def engine() -> None:
    """The Docker engine. Unusable is a failure: these tests are never skipped."""
    if shutil.which("docker") is None:
        pytest.fail("the docker CLI is not installed; end-to-end tests need a Docker engine (see .ci/ensure-docker)")
    proc = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode:
        pytest.fail(f"the Docker engine is not usable: {proc.stderr.strip()}")


@pytest.fixture(scope="session")
def test_images(engine: None) -> None:
    """The manager and worker images from the real Dockerfiles."""
    build_test_images()


@pytest.fixture(scope="session")
def git_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitServer]:
    """git daemon on 127.0.0.1, no authentication."""
    with serve_git_daemon(tmp_path_factory.mktemp("git") / "repos") as server:
        yield server


@pytest.fixture(scope="session")
def http_git_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpGitServer]:
    """A git server over HTTP that wants a token."""
    with serve_http_git(tmp_path_factory.mktemp("http-git") / "repos") as server:
        yield server


@pytest.fixture(scope="session")
def ssh_git_server(engine: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshGitServer]:
    """The SSH git server, in a container on the host network."""
    with serve_ssh_git(tmp_path_factory.mktemp("ssh-git")) as server:
        yield server


@pytest.fixture
def run(test_images: None, api: ScriptedAPI) -> Iterator[Run]:
    """The test's names and volume; its containers and volumes are removed after it."""
    run = Run(id=uuid.uuid4().hex[:8], volume=f"{PREFIX}volume-{uuid.uuid4().hex[:8]}", api=api)
    yield run
    run.remove_everything()


@pytest.fixture(scope="session")
def bridge(engine: None) -> Iterator[Bridge]:
    """A Docker network of the tests' own, for the tests of run.py's default layout, where the
    manager's own network has no route out and the control plane reaches origin and the API on
    this one: on its gateway, the servers below."""
    bridge = make_bridge(f"{PREFIX}bridge-{uuid.uuid4().hex[:8]}")
    yield bridge
    sh("docker", "network", "rm", bridge.name, check=False)


@pytest.fixture(scope="session")
def bridge_git(bridge: Bridge, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitServer]:
    """git daemon on the bridge's gateway, no authentication."""
    with serve_git_daemon(tmp_path_factory.mktemp("bridge-git") / "repos", host=bridge.gateway) as server:
        yield server


@pytest.fixture
def bridge_run(test_images: None, bridge: Bridge) -> Iterator[Run]:
    """A run whose scripted API listens on the bridge's gateway."""
    with ScriptedAPI(host=bridge.gateway) as api:
        run = Run(id=uuid.uuid4().hex[:8], volume=f"{PREFIX}volume-{uuid.uuid4().hex[:8]}", api=api)
        yield run
        run.remove_everything()


@pytest.fixture
def manager(run: Run, git_server: GitServer, token_file: Path) -> Iterator[Manager]:
    """A manager on a new repository of the tests' git server, removed after the test."""
    manager = start_manager(run, git_server.repo(f"repo-{run.id}"), token_file)
    yield manager
    manager.remove()


@pytest.fixture(scope="module")
def own_engine(test_images: None) -> Iterator[OwnEngine]:
    """An engine of the tests' own, for the suites that stop it or put it in swarm mode."""
    with own_engine_running() as engine:
        yield engine
