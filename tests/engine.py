"""Fixtures for the end-to-end tests: the real engine, images built from the real
Dockerfiles, a scripted Claude API and a git server of the tests' own on loopback, and a
volume per test. Every agent is the real Claude Code of the images, talking to the scripted
API (tests/scripted_api.py): each task's prompt carries a marker that picks its scenario.

Every name carries the prefix orch-test- (and task ids a per-test run id), so that the
tests never touch a user's own images, volume or workers. ORCH_TEST_PREFIX sets another
prefix, so that two checkouts can run their tests on one engine at once.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator import images

from .helpers import ROOT, free_port, seed_repo, start_git_daemon
from .scripted_api import ScriptedAPI, Turn

PREFIX = os.environ.get("ORCH_TEST_PREFIX") or "orch-test-"
MANAGER_IMAGE = f"{PREFIX}orchestrator"
WORKER_IMAGE = f"{PREFIX}flutter"  # flutter/Dockerfile without the SDK


def sh(
    *argv: str, check: bool = True, input: str | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=timeout, check=False)
    if check and proc.returncode:
        raise AssertionError(f"{argv} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def engine() -> None:
    """The Docker engine. Unusable is a failure: these tests are never skipped."""
    if shutil.which("docker") is None:
        pytest.fail("the docker CLI is not installed; end-to-end tests need a Docker engine (see .ci/ensure-docker)")
    proc = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode:
        pytest.fail(f"the Docker engine is not usable: {proc.stderr.strip()}")


# Read now: every test runs with the project's variables cleared (conftest.py).
CA_CERTS = os.environ.get("ORCHESTRATOR_CA_CERTS", "")


@pytest.fixture(scope="session")
def test_images(engine: None) -> None:
    """The manager and worker images from the real Dockerfiles, and the stand-in layer."""
    certs = [images.read_ca_cert(p) for p in CA_CERTS.split(os.pathsep) if p]
    images.build_manager_image(MANAGER_IMAGE, certs)
    images.build_worker_image(WORKER_IMAGE, "flutter", MANAGER_IMAGE, {"FLUTTER_VERSION": "none"})


@pytest.fixture(scope="session")
def api() -> Iterator[ScriptedAPI]:
    """The Claude API of every agent in the tests: on 127.0.0.1, reached from the containers
    through the host network (a worker's relay passes requests on to it)."""
    with ScriptedAPI() as server:
        yield server


@dataclass
class GitServer:
    """git daemon on 127.0.0.1, reached by containers on the host network."""

    base: Path
    port: int

    def repo(self, name: str) -> str:
        """A new seeded repository; returns its URL."""
        work = seed_repo(self.base.parent / "seeds" / name)
        bare = self.base / f"{name}.git"
        sh("git", "clone", "-q", "--bare", str(work), str(bare))
        return f"git://127.0.0.1:{self.port}/{name}.git"


@pytest.fixture(scope="session")
def git_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitServer]:
    base = tmp_path_factory.mktemp("git") / "repos"
    base.mkdir()
    server = GitServer(base, free_port())
    daemon = start_git_daemon(base, server.port, server.repo("probe"))
    yield server
    daemon.terminate()
    daemon.wait(10)


@dataclass
class Run:
    """One test's names: task ids, its volume and its manager; and its agents' scenarios."""

    id: str
    volume: str
    api: ScriptedAPI

    def task_id(self, name: str) -> str:
        return f"{self.id}-{name}"

    def prompt(self, name: str, *turns: Turn, words: str = "Do the task.") -> str:
        """A prompt whose agent follows ``turns`` (the scripted API's answers), marked ``name``."""
        marker = self.marker(name)
        self.api.script(marker, *turns)
        return f"[{marker}] {words}"

    def marker(self, name: str) -> str:
        return f"scenario-{self.id}-{name}"

    def tool_results(self, name: str) -> list[str]:
        """What the agent's tools printed, in order, as its Claude Code sent it back to the API."""
        return self.api.tool_results(self.marker(name))

    @property
    def manager(self) -> str:
        return f"{PREFIX}manager-{self.id}"

    # Mounted where the images have /orchestration, so that a new volume gets its folders.
    def read(self, path: str) -> str:
        """A file on the volume, read through a throwaway container."""
        return sh("docker", "run", "--rm", "--volume", f"{self.volume}:/orchestration", "--entrypoint", "cat",
                  WORKER_IMAGE, f"/orchestration/{path}").stdout  # fmt: skip

    def read_many(self, paths: list[str]) -> str:
        """Files on the volume, each after a line naming it; a missing one reads as MISSING."""
        script = 'for f in "$@"; do echo "== $f"; cat "/orchestration/$f" 2>/dev/null || echo MISSING; done'
        return sh("docker", "run", "--rm", "--volume", f"{self.volume}:/orchestration", "--entrypoint", "sh",
                  WORKER_IMAGE, "-c", script, "sh", *paths).stdout  # fmt: skip

    def result(self, task_id: str) -> dict:
        return json.loads(self.read(f"results/{task_id}.json"))

    def write(self, path: str, content: str) -> None:
        sh("docker", "run", "--rm", "-i", "--volume", f"{self.volume}:/orchestration", "--entrypoint", "sh",
           WORKER_IMAGE, "-c", f"cat > /orchestration/{path}", input=content)  # fmt: skip

    def volume_contains(self, needle: str) -> list[str]:
        """Files on the volume that contain ``needle``."""
        proc = sh("docker", "run", "--rm", "--volume", f"{self.volume}:/orchestration", "--entrypoint", "grep",
                  WORKER_IMAGE, "-r", "-l", "-F", needle, "/orchestration", check=False)  # fmt: skip
        return proc.stdout.split()


def container_file(container: str, path: str) -> str:
    """A file inside a (stopped) container, through docker cp."""
    data = subprocess.run(["docker", "cp", f"{container}:{path}", "-"], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = tar.getmembers()[0]
        extracted = tar.extractfile(member)
        assert extracted is not None, f"{path} is not a file"
        return extracted.read().decode()


@pytest.fixture
def run(test_images: None, api: ScriptedAPI) -> Iterator[Run]:
    run = Run(id=uuid.uuid4().hex[:8], volume=f"{PREFIX}volume-{uuid.uuid4().hex[:8]}", api=api)
    yield run
    names = sh(
        "docker", "ps", "-aq", "--filter", f"name=worker-{run.id}-", "--filter", f"name={run.manager}"
    ).stdout.split()
    names += sh("docker", "ps", "-aq", "--filter", f"label=orchestrator.volume={run.volume}").stdout.split()
    names += sh("docker", "ps", "-aq", "--filter", f"name={run.manager}-").stdout.split()
    if names:
        sh("docker", "rm", "--force", *names, check=False)
    # The shared volume, and the workspaces of its managers (NAME-workspace).
    volumes = sh("docker", "volume", "ls", "-q", "--filter", f"name={run.manager}").stdout.split()
    sh("docker", "volume", "rm", "--force", run.volume, *volumes, check=False)


def run_py(run: Run, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """bin/run.py as a person would run it, with the test images, the host network and the scripted API."""
    return subprocess.run(
        ["python3", str(ROOT / "bin" / "run.py"), "--image-prefix", PREFIX, "--network", "host",
         "--api-url", run.api.url, *args],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip


@dataclass
class Manager:
    """A manager container left running (its command is `sleep infinity`), for `docker exec`."""

    name: str
    process: subprocess.Popen[str]

    def orch(
        self, *args: str, check: bool = True, timeout: float = 600, tty: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """`orch ARGS` in the manager's shell (on a terminal of docker's with ``tty``)."""
        return sh("docker", "exec", *(["--tty"] if tty else []), self.name, "orch", *args, check=check, timeout=timeout)

    def status(self) -> dict[str, dict]:
        """`orch status --json`, by task id."""
        return {task["id"]: task for task in json.loads(self.orch("status", "--json").stdout)["tasks"]}

    def wait_for_state(self, task_id: str, *states: str, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            task = self.status()[task_id]
            if task["state"] in states:
                return task
            assert time.monotonic() < deadline, f"{task_id} stayed {task['state']}, not {states}"
            time.sleep(0.5)

    def remove(self) -> None:
        sh("docker", "rm", "--force", self.name, check=False)
        self.process.wait(60)


@pytest.fixture
def manager(run: Run, git_server: GitServer, token_file: Path) -> Iterator[Manager]:
    """A manager on a new repository of the tests' git server, removed after the test."""
    manager = start_manager(run, git_server.repo(f"repo-{run.id}"), token_file)
    yield manager
    manager.remove()


def start_manager(run: Run, repo: str, token_file: Path, *options: str, name: str | None = None) -> Manager:
    """run.py as a person runs it, with `-- sleep infinity` so that tests can `docker exec` into it."""
    name = name or run.manager
    process = subprocess.Popen(
        ["python3", str(ROOT / "bin" / "run.py"), "--image-prefix", PREFIX, "--network", "host",
         "--api-url", run.api.url, "--repo", repo, "--token", str(token_file), "--volume", run.volume,
         "--name", name, *options, "--", "sleep", "infinity"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    # Ready when the entrypoint has replaced itself with the command.
    ready = 'for f in /proc/[0-9]*/cmdline; do [ "$(tr "\\0" " " < "$f")" = "sleep infinity " ] && exit 0; done; exit 1'
    while sh("docker", "exec", name, "sh", "-c", ready, check=False).returncode:
        if process.poll() is not None:
            said = process.stdout.read() if process.stdout else ""
            raise AssertionError(f"the manager exited ({process.returncode}):\n{said}")
        assert time.monotonic() < deadline, "the manager did not start"
        time.sleep(0.3)
    return Manager(name, process)
