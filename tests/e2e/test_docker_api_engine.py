"""The Docker API filter in front of the real engine, used by the real docker CLI: what the manager
does with ``docker`` keeps working on its workers, and everything else is refused with the rule."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.config import LABEL_ROLE, LABEL_VOLUME
from orchestrator.control.docker_api import DockerApiFilter, WorkerPolicy
from tests.support.commands import sh
from tests.support.end_to_end import PREFIX
from tests.support.waiting import wait_until

IMAGE = "debian:bookworm-slim"
REFUSED_BY = "(refused by the control plane's Docker API filter)"
# Prints a numbered line five times a second until /tmp/stop exists, then one last line.
PRINTER = 'i=0; while [ ! -e /tmp/stop ]; do i=$((i+1)); echo "line-$i"; sleep 0.2; done; echo the-end'


@dataclass
class Setup:
    api_filter: DockerApiFilter
    volume: str
    printer: str  # ours: prints until told to stop
    idle: str  # ours: sleeps, and is never stopped
    to_stop: str  # ours
    to_kill: str  # ours
    other: str  # not ours: no labels at all (as the control plane's own container)
    other_id: str
    started: int  # when the containers were started (for docker events --since)
    refusals: list[tuple[str, str, str]]

    @property
    def ours(self) -> set[str]:
        return {self.printer, self.idle, self.to_stop, self.to_kill}


def docker_via_filter(setup: Setup, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DOCKER_HOST": setup.api_filter.url}
    return subprocess.run(["docker", *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)


def stream_via_filter(setup: Setup, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "DOCKER_HOST": setup.api_filter.url}
    return subprocess.Popen(["docker", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def state(name: str) -> dict:
    return json.loads(sh("docker", "inspect", "--format", "{{json .State}}", name).stdout)


@pytest.fixture(scope="module")
def setup(engine: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    run = uuid.uuid4().hex[:8]
    volume = f"{PREFIX}dapi-{run}"
    names = {role: f"{PREFIX}dapi-{run}-{role}" for role in ("printer", "idle", "stop", "kill", "other")}
    ours = ["--label", f"{LABEL_ROLE}=worker", "--label", f"{LABEL_VOLUME}={volume}"]
    base = ["docker", "run", "--detach", "--network", "none"]
    refusals: list[tuple[str, str, str]] = []
    folder = tmp_path_factory.mktemp("dapi")
    try:
        started = int(time.time()) - 1
        sh(*base, "--name", names["printer"], *ours, IMAGE, "sh", "-c", PRINTER)
        for role in ("idle", "stop", "kill"):
            sh(*base, "--init", "--name", names[role], *ours, IMAGE, "sleep", "infinity")
        other_id = sh(*base, "--init", "--name", names["other"], IMAGE, "sleep", "infinity").stdout.strip()
        api_filter = DockerApiFilter(folder / "docker.sock", "/var/run/docker.sock", WorkerPolicy(volume),
                                     on_refused=lambda *line: refusals.append(line))  # fmt: skip
        with api_filter:
            yield Setup(api_filter, volume, names["printer"], names["idle"], names["stop"], names["kill"],
                        names["other"], other_id, started, refusals)  # fmt: skip
            counts = api_filter.counts
            print(
                f"\nDocker API filter on the real engine: {counts.refused} requests refused, {counts.allowed} allowed"
            )
    finally:
        sh("docker", "rm", "--force", *names.values(), check=False)


def listed(proc: subprocess.CompletedProcess[str]) -> set[str]:
    assert proc.returncode == 0, proc.stderr
    return set(proc.stdout.split())


def test_docker_ps_shows_only_our_workers(setup: Setup):
    assert listed(docker_via_filter(setup, "ps", "--format", "{{.Names}}")) >= setup.ours - {setup.printer}
    everything = listed(docker_via_filter(setup, "ps", "-a", "--format", "{{.Names}}"))
    assert everything == setup.ours, "docker ps showed a container that is not one of the workers"
    by_name = docker_via_filter(setup, "ps", "-a", "--filter", f"name={setup.idle}", "--format", "{{.Names}}")
    assert listed(by_name) == {setup.idle}
    by_label = docker_via_filter(setup, "ps", "-a", "--filter", f"label={LABEL_VOLUME}={setup.volume}",
                                 "--format", "{{.Names}}")  # fmt: skip
    assert listed(by_label) == setup.ours


def test_inspect_logs_top_and_stats_work_on_a_worker(setup: Setup):
    proc = docker_via_filter(setup, "inspect", setup.idle)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["Config"]["Labels"][LABEL_VOLUME] == setup.volume
    proc = docker_via_filter(setup, "logs", setup.printer)
    assert proc.returncode == 0 and "line-1" in proc.stdout, proc.stderr
    proc = docker_via_filter(setup, "top", setup.idle)
    assert proc.returncode == 0 and "sleep infinity" in proc.stdout, proc.stderr
    proc = docker_via_filter(setup, "stats", "--no-stream", "--format", "{{.Name}}", setup.idle)
    assert proc.returncode == 0 and setup.idle in proc.stdout, proc.stderr


def test_logs_follow_streams_while_the_worker_prints_and_wait_ends_with_it(setup: Setup):
    already = len(docker_via_filter(setup, "logs", setup.printer).stdout.split())
    follow = stream_via_filter(setup, "logs", "-f", setup.printer)
    wait = stream_via_filter(setup, "wait", setup.printer)
    lines: queue.Queue[str] = queue.Queue()

    def read_lines() -> None:
        for line in follow.stdout or []:
            lines.put(line.strip())

    threading.Thread(target=read_lines, daemon=True).start()
    seen: list[str] = []

    def followed(line: str) -> bool:
        """Whether ``line`` has come through docker logs -f (what came is taken in ``seen``)."""
        while not lines.empty():
            seen.append(lines.get())
        return line in seen

    try:
        wanted = f"line-{already + 3}"  # printed after docker logs -f began
        wait_until(lambda: followed(wanted), lambda: f"{wanted} through docker logs -f; came: {seen}", timeout=120)
        assert state(setup.printer)["Running"], "the lines came only once the worker had ended"
        assert follow.poll() is None and wait.poll() is None
        sh("docker", "exec", setup.printer, "touch", "/tmp/stop")  # on the real engine, as the test
        assert follow.wait(timeout=120) == 0, follow.stderr.read() if follow.stderr else ""
        wait_until(lambda: followed("the-end"), lambda: f"the-end through docker logs -f; came: {seen}", timeout=30)
        assert wait.wait(timeout=120) == 0 and wait.stdout is not None and wait.stdout.read().strip() == "0"
    finally:
        for proc in (follow, wait):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_stop_and_kill_work_on_a_worker(setup: Setup):
    proc = docker_via_filter(setup, "stop", "--time", "30", setup.to_stop)
    assert proc.returncode == 0, proc.stderr
    assert not state(setup.to_stop)["Running"] and state(setup.to_stop)["ExitCode"] == 143
    proc = docker_via_filter(setup, "kill", setup.to_kill)
    assert proc.returncode == 0, proc.stderr
    assert not state(setup.to_kill)["Running"] and state(setup.to_kill)["ExitCode"] == 137


def test_events_show_only_our_workers(setup: Setup):
    proc = docker_via_filter(setup, "events", "--since", str(setup.started), "--until", str(int(time.time()) + 1),
                             "--format", "{{json .}}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    names = {event["Actor"]["Attributes"].get("name") for event in events}
    assert names and names <= setup.ours and setup.idle in names
    assert all(event["Actor"]["Attributes"][LABEL_VOLUME] == setup.volume for event in events)


NOT_A_WORKER = "container '{ref}' is not a worker of this orchestration"
REFUSED = {
    "run -v /:/host": (["run", "--rm", "-v", "/:/host", IMAGE, "cat", "/host/etc/hostname"], 125,
                       "the manager may not create containers: workers are started with spawn-worker or orch"),
    "run --privileged": (["run", "--rm", "--privileged", IMAGE, "true"], 125, "the manager may not create containers"),
    "exec": (["exec", "{idle}", "true"], 1, "the manager may not exec in containers"),
    # A hijacked request's refusal body goes unread: the CLI says only "unable to upgrade to tcp, received 403".
    "attach": (["attach", "--no-stdin", "{idle}"], 1, "the manager may not attach to containers"),
    "rm": (["rm", "--force", "{idle}"], 1, "the manager may not remove containers"),
    "inspect other": (["inspect", "{other}"], 1, NOT_A_WORKER.format(ref="{other}")),
    "inspect other by id": (["inspect", "{other_id12}"], 1, NOT_A_WORKER.format(ref="{other_id12}")),
    "stop other": (["stop", "{other}"], 1, NOT_A_WORKER.format(ref="{other}")),
    "kill other": (["kill", "{other}"], 1, NOT_A_WORKER.format(ref="{other}")),
    "logs other": (["logs", "{other}"], 1, NOT_A_WORKER.format(ref="{other}")),
    "images": (["images"], 1, "the manager may not use images"),
    "volume ls": (["volume", "ls"], 1, "the manager may not use volumes"),
    "network ls": (["network", "ls"], 1, "the manager may not use networks"),
    "build": (["build", "{context}"], 1, "the manager may not build images"),
    "swarm init": (["swarm", "init"], 1, "the manager may not use swarm"),
    "system prune": (["system", "prune", "-f"], 1, "the manager may not prune containers"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(REFUSED))
def test_everything_else_is_refused_with_its_rule(setup: Setup, case: str, tmp_path: Path):
    (tmp_path / "Dockerfile").write_text(f"FROM {IMAGE}\nRUN touch /built\n")
    (tmp_path / "payload").write_bytes(os.urandom(4 * 1024 * 1024))  # a context larger than one write
    names = {"idle": setup.idle, "other": setup.other, "other_id12": setup.other_id[:12], "context": str(tmp_path)}
    argv, code, rule = REFUSED[case]
    before = len(setup.refusals)
    proc = docker_via_filter(setup, *[arg.format(**names) for arg in argv])
    assert proc.returncode == code, proc.stderr
    if case == "attach":
        assert "received 403" in proc.stderr
    else:
        assert f"Error response from daemon: {rule.format(**names)}" in proc.stderr and REFUSED_BY in proc.stderr
    assert len(setup.refusals) == before + 1 and rule.format(**names) in setup.refusals[-1][2]
    assert state(setup.other)["Running"] and state(setup.idle)["Running"]
