"""What the end-to-end tests share: the names of their images, containers and volumes, a test's
run (its task ids, its volume, its agents' scenarios), run.py as a person runs it, and a manager
left running for `docker exec`. Every agent is the real Claude Code of the images, talking to the
scripted API (scripted_api.py): each task's prompt carries a marker that picks its scenario.

Every name carries the prefix orch-test- (and task ids a per-test run id), so that the tests
never touch a user's own images, volume or workers. ORCH_TEST_PREFIX sets another prefix, so
that two checkouts can run their tests on one engine at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from orchestrator import images

from .commands import sh
from .paths import ROOT
from .scripted_api import ScriptedAPI, Turn
from .waiting import wait_until

PREFIX = os.environ.get("ORCH_TEST_PREFIX") or "orch-test-"
MANAGER_IMAGE = f"{PREFIX}orchestrator"
WORKER_IMAGE = f"{PREFIX}flutter"  # flutter/Dockerfile without the SDK

# Read now: every test runs with the project's variables cleared (tests/conftest.py).
CA_CERTS = os.environ.get("ORCHESTRATOR_CA_CERTS", "")


def ca_certs() -> list[Path]:
    """The machine's extra CA certificates (an intercepting proxy), for the images the tests build."""
    return [images.read_ca_cert(path) for path in CA_CERTS.split(os.pathsep) if path]


def build_test_images() -> None:
    """The manager and worker images from the real Dockerfiles."""
    certs = ca_certs()
    images.build_manager_image(MANAGER_IMAGE, certs)
    images.build_worker_image(WORKER_IMAGE, "flutter", MANAGER_IMAGE, {"FLUTTER_VERSION": "none"})


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

    def remove_everything(self) -> None:
        """The run's containers (workers, managers), its volume and its managers' workspaces."""
        names = sh(
            "docker", "ps", "-aq", "--filter", f"name=worker-{self.id}-", "--filter", f"name={self.manager}"
        ).stdout.split()
        names += sh("docker", "ps", "-aq", "--filter", f"label=orchestrator.volume={self.volume}").stdout.split()
        names += sh("docker", "ps", "-aq", "--filter", f"name={self.manager}-").stdout.split()
        if names:
            sh("docker", "rm", "--force", *names, check=False)
        # The shared volume, and the volumes of its managers and control planes (NAME-workspace,
        # NAME-mirror, ...), and their networks (NAME-net).
        volumes = sh("docker", "volume", "ls", "-q", "--filter", f"name={self.manager}").stdout.split()
        volumes += sh("docker", "volume", "ls", "-q", "--filter", f"name={self.volume}-").stdout.split()  # its doors
        sh("docker", "volume", "rm", "--force", self.volume, *volumes, check=False)
        networks = sh("docker", "network", "ls", "-q", "--filter", f"name={self.manager}").stdout.split()
        if networks:
            sh("docker", "network", "rm", *networks, check=False)


def busy_for(seconds: int) -> str:
    """A Bash command for an agent that runs for ``seconds``. Not `sleep N`: Claude Code refuses a
    Bash command that starts with a long sleep ("Blocked: standalone sleep 300. To wait for a
    condition, ..."; measured with 2.1.332: sleep 30 is refused, sleep 10 runs)."""
    return f"python3 -c 'import time; time.sleep({seconds})'"


def docker_logs_show(container: str, needle: str) -> bool:
    return needle in sh("docker", "logs", container, check=False).stdout


def run_py(
    run: Run, *args: str, timeout: float = 600, network: str = "host", input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """bin/run.py as a person would run it, with the test images, the host network (or
    ``network``, whose gateway serves the scripted API) and the scripted API."""
    return subprocess.run(
        ["python3", str(ROOT / "bin" / "run.py"), "--image-prefix", PREFIX, "--network", network,
         "--api-url", run.api.url, *args],
        capture_output=True, text=True, timeout=timeout, check=False,
        **({"input": input} if input is not None else {"stdin": subprocess.DEVNULL}),
    )  # fmt: skip


@dataclass(frozen=True)
class Bridge:
    """A Docker network of the tests' own; servers on the host listen on its gateway address,
    which its containers reach (and nothing else of the host's)."""

    name: str
    gateway: str


def make_bridge(name: str) -> Bridge:
    sh("docker", "network", "create", "--label", "orchestrator.test=1", name)
    gateway = sh("docker", "network", "inspect", "--format", "{{(index .IPAM.Config 0).Gateway}}", name).stdout
    return Bridge(name, gateway.strip())


def spawn_worker_py(run: Run, task_id: str, *options: str) -> subprocess.CompletedProcess[str]:
    """bin/spawn-worker.py on the host, for a task of the run's volume, with the test images, the
    host network and the scripted API."""
    return subprocess.run(
        ["python3", str(ROOT / "bin" / "spawn-worker.py"), "flutter", task_id, "--volume", run.volume,
         "--image-prefix", PREFIX, "--network", "host", "--api-url", run.api.url, *options],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


@dataclass
class Manager:
    """A manager container left running (its command is `sleep infinity`), for `docker exec`."""

    name: str
    process: subprocess.Popen[str]
    log: Path  # what run.py printed

    def said(self) -> str:
        """What run.py has printed so far."""
        return self.log.read_text()

    def orch(
        self, *args: str, check: bool = True, timeout: float = 600, tty: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """`orch ARGS` in the manager's shell (on a terminal of docker's with ``tty``)."""
        return sh("docker", "exec", *(["--tty"] if tty else []), self.name, "orch", *args, check=check, timeout=timeout)

    def submit(self, prompt: str, *options: str) -> str:
        """`orch submit --prompt PROMPT OPTIONS`; the task's id."""
        return self.orch("submit", "--prompt", prompt, *options).stdout.strip()

    def status(self) -> dict[str, dict]:
        """`orch status --json`, by task id."""
        return {task["id"]: task for task in json.loads(self.orch("status", "--json").stdout)["tasks"]}

    def result(self, task_id: str, *options: str) -> dict:
        """`orch result TASK --json`."""
        return json.loads(self.orch("result", task_id, *options, "--json").stdout)

    def logs_show(self, task_id: str, needle: str) -> bool:
        return needle in self.orch("logs", task_id, check=False).stdout

    def wait_for_state(self, task_id: str, *states: str, timeout: float = 120) -> dict:
        """The task's status once it is in one of ``states``."""

        def in_state() -> dict | None:
            task = self.status()[task_id]
            return task if task["state"] in states else None

        return wait_until(in_state, lambda: f"{task_id} to be {states}: it is {self.status()[task_id]}", timeout)

    def wait_for_log(self, task_id: str, needle: str, timeout: float = 120) -> None:
        """Until `orch logs` of the task shows ``needle``."""
        wait_until(
            lambda: self.logs_show(task_id, needle),
            lambda: f"{task_id} to log {needle!r}; it logged:\n{self.orch('logs', task_id, check=False).stdout}",
            timeout,
        )

    def remove(self) -> None:
        sh("docker", "rm", "--force", self.name, check=False)
        self.process.wait(60)


def start_manager(
    run: Run, repo: str, token_file: Path, *options: str, name: str | None = None, network: str = "host"
) -> Manager:
    """run.py as a person runs it, with `-- sleep infinity` so that tests can `docker exec` into it."""
    name = name or run.manager
    # run.py's output goes to a file, so that a manager that never starts can say what run.py said.
    said = tempfile.NamedTemporaryFile("w+", prefix="run-py-", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen(
        ["python3", str(ROOT / "bin" / "run.py"), "--image-prefix", PREFIX, "--network", network,
         "--api-url", run.api.url, "--repo", repo, "--token", str(token_file), "--volume", run.volume,
         "--name", name, *options, "--", "sleep", "infinity"],
        stdin=subprocess.DEVNULL, stdout=said, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    # Ready when the entrypoint has replaced itself with the command.
    ready = 'for f in /proc/[0-9]*/cmdline; do [ "$(tr "\\0" " " < "$f")" = "sleep infinity " ] && exit 0; done; exit 1'

    def output() -> str:
        control = sh("docker", "logs", "--tail", "40", f"{name}-control", check=False)
        manager = sh("docker", "logs", "--tail", "40", name, check=False)
        return (
            f"run.py said:\n{Path(said.name).read_text()}\n"
            f"the control plane's log:\n{control.stdout}{control.stderr}\n"
            f"the manager's log:\n{manager.stdout}{manager.stderr}"
        )

    def started() -> bool:
        if sh("docker", "exec", name, "sh", "-c", ready, check=False).returncode == 0:
            return True
        if process.poll() is not None:
            raise AssertionError(f"the manager exited ({process.returncode}):\n{output()}")
        return False

    wait_until(started, lambda: f"the manager {name} to start:\n{output()}", timeout=120)
    return Manager(name, process, Path(said.name))
