"""Workers as Docker Swarm jobs: `--engine swarm` (ORCHESTRATOR_ENGINE=swarm).

A worker is a service in mode ``replicated-job`` named ``worker-ID``: one task that runs to
completion, never restarted, placed by the swarm on a node with the resources it reserves, with
the task's labels and the shared volume at /orchestration.

Started by a control plane (the default), a job holds no secret: its task's tickets, and the
batch's internal overlay network (``VOLUME-workers``), on which the control plane serves it the
relay, the git channel (the mirror's copy, the hand-back) and the egress proxy (doors.py,
control/swarm_doors.py). Started outside one (the original layout), its secrets are Swarm
secrets, created once per batch and mounted as files in the runtime's home, where the agent
cannot read them: never in the service's environment or in ``docker service inspect``.

``SwarmEngine`` answers reconcile, the dispatcher and orch the way ``DockerEngine`` does for
containers: the state of each job's task is given as a container's would be (running, exited
with a code, an error), so that the batch's rules hold as they are.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from . import config
from .docker import DockerError, docker, env_pass, labels, text
from .doors import workers_network
from .engine_events import EngineEvents
from .errors import UserError
from .secrets import GIT_TOKEN_NAME, PINNED_KNOWN_HOSTS_NAME, SSH_KEY_NAME, TOKEN_NAME, Secrets
from .workerspec import RUNTIME_CAPABILITIES, WorkerExists, WorkerSpec

# A job the swarm cannot place (no node has the resources it reserves) fails after this long.
SCHEDULE_GRACE_SECONDS = 60.0
# Task states of a job that has not ended yet.
_UNDER_WAY = {"new", "pending", "assigned", "accepted", "preparing", "ready", "starting", "running"}


def _secret_name(volume: str, kind: str, data: bytes) -> str:
    """A secret's name: the batch's volume, what it is, and its content's hash (a secret cannot
    change; a new token is a new secret)."""
    digest = hashlib.sha256(data).hexdigest()[:12]
    return f"orchestrator-{volume}-{kind}-{digest}"[:64]


def ensure_secrets(volume: str, secrets: Secrets) -> dict[str, str]:
    """The batch's Swarm secrets, created when missing; by the path each is mounted at."""
    wanted = {file.name: file for file in secrets.files()}
    kinds = {TOKEN_NAME: "claude-token", GIT_TOKEN_NAME: "git-token", SSH_KEY_NAME: "ssh-key",
             PINNED_KNOWN_HOSTS_NAME: "known-hosts"}  # fmt: skip
    names: dict[str, str] = {}
    existing = set(text(docker("secret", "ls", "--format", "{{.Name}}", timeout=60)).split())
    for relative, file in wanted.items():
        name = _secret_name(volume, kinds[relative], file.data)
        if name not in existing:
            try:
                docker("secret", "create", *labels({config.LABEL_VOLUME: volume}), name, "-", input=file.data,
                       timeout=60)  # fmt: skip
            except DockerError as exc:
                if "already exists" not in exc.stderr:
                    raise
        names[f"{config.WORKER_RUNTIME_HOME}/{relative}"] = name
    return names


def remove_secrets(volume: str) -> list[str]:
    """The batch's secrets, removed (once no job of its needs them)."""
    listing = text(docker("secret", "ls", "--filter", f"label={config.LABEL_VOLUME}={volume}",
                          "--format", "{{.Name}}", timeout=60))  # fmt: skip
    removed = []
    for name in listing.split():
        if docker("secret", "rm", name, check=False, timeout=60).returncode == 0:
            removed.append(name)
    return removed


def service_argv(spec: WorkerSpec, secret_names: Mapping[str, str]) -> list[str]:
    """``docker service create`` of the worker as a job: the same labels, volume, limits and
    capabilities as a container, the secrets as Swarm secrets (root's, mode 0400)."""
    task_labels = labels(spec.labels())
    container_labels = [arg.replace("--label", "--container-label") for arg in task_labels]
    return [
        "service", "create", "--detach", "--name", spec.container,
        "--mode", "replicated-job", "--restart-condition", "none",
        *task_labels, *container_labels,
        "--mount", f"type=volume,source={spec.volume},target={config.CONTAINER_ORCHESTRATION_DIR}",
        # A control plane's job: on the batch's internal network, where its control plane is its only
        # way out (doors.py); otherwise the network given.
        *(["--network", workers_network(spec.volume)] if spec.doors_address else
          ["--network", spec.network] if spec.network else []),
        # Its name server: the control plane's, which answers NXDOMAIN to every name the network's
        # embedded DNS forwards (no lookup leaves the machine, so no name carries data out).
        *(["--dns", spec.dns] if spec.dns else []),
        # The swarm places a job where what it reserves is free; the limits hold it there.
        "--reserve-memory", spec.limits.memory, "--limit-memory", spec.limits.memory,
        "--limit-cpu", spec.limits.cpus, "--limit-pids", str(spec.limits.pids),
        # A service has no storage option: what the agent writes is bounded by a tmpfs workspace.
        *(["--mount", spec.limits.workspace_mount()] if spec.limits.bounded else []),
        "--cap-drop", "ALL", *[arg for cap in RUNTIME_CAPABILITIES for arg in ("--cap-add", f"CAP_{cap}")],
        "--stop-grace-period", f"{spec.stop_timeout}s",
        *[arg for path, name in secret_names.items()
          for arg in ("--secret", f"source={name},target={path},uid=0,gid=0,mode=0400")],
        *[arg for name in spec.environment() for arg in env_pass(name)],
        # The image as this node has it: nodes load or pull it beforehand (see the README).
        "--no-resolve-image",
        spec.image,
    ]  # fmt: skip


def spawn_job(spec: WorkerSpec, claim: Callable[[], object]) -> str:
    """Create the worker's job: the batch's secrets first, then the service. ``claim`` records
    the task as starting once the name is ours."""
    # A control plane's job holds no secret (its tickets are in its environment): none is created.
    names = ensure_secrets(spec.volume, spec.secrets) if spec.secrets.files() else {}
    try:
        docker(*service_argv(spec, names), env=spec.environment(), timeout=120)
    except DockerError as exc:
        if "already exists" in exc.stderr or "name conflicts" in exc.stderr:
            raise WorkerExists(f"task {spec.task_id} already has a worker job ({spec.container})", "running") from None
        if "No such image" in exc.stderr:
            raise UserError(f"image {spec.image} is not on this node; build or load it on every node") from None
        raise
    try:
        claim()
    except BaseException:
        docker("service", "rm", spec.container, check=False, timeout=60)
        raise
    return spec.container


_SWARM_TIME = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z?")


def _age(stamp: object) -> float:
    """Seconds since a swarm timestamp (2026-11-25T23:36:54.499339247Z); 0 when unreadable."""
    match = _SWARM_TIME.match(stamp) if isinstance(stamp, str) else None
    if match is None:
        return 0.0
    when = datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    return (datetime.now(UTC) - when).total_seconds()


def task_as_container(task: Mapping[str, Any], created: str | None = None) -> dict[str, Any]:
    """A job's task state, as a container's ``State`` would say it (what reconcile reads)."""
    status = task.get("Status") or {}
    state = str(status.get("State") or "")
    error = str(status.get("Err") or "")
    code = (status.get("ContainerStatus") or {}).get("ExitCode")
    if state == "pending" and error and _age(created or task.get("CreatedAt")) > SCHEDULE_GRACE_SECONDS:
        return {"Status": "exited", "Running": False, "ExitCode": None, "Error": f"no node can run it: {error}"}
    if state in _UNDER_WAY:
        return {"Status": "running", "Running": True}
    if state == "complete":
        return {"Status": "exited", "Running": False, "ExitCode": code if isinstance(code, int) else 0}
    if state == "orphaned":
        # Its node went away: the worker was stopped from outside.
        return {"Status": "exited", "Running": False, "ExitCode": 255, "Error": "its node went away"}
    if state in ("rejected",) or (state == "failed" and not isinstance(code, int)):
        return {"Status": "exited", "Running": False, "ExitCode": None, "Error": error or state}
    # failed, shutdown: ended with the container's code.
    return {"Status": "exited", "Running": False, "ExitCode": code if isinstance(code, int) else 143}


class SwarmEngine:
    """This volume's workers as Swarm jobs, for reconcile, the dispatcher and orch."""

    def __init__(self, volume: str):
        self.volume = volume

    def launch(self, spec: WorkerSpec, claim: Callable[[], object]) -> str:
        return spawn_job(spec, claim)

    def events(self) -> EngineEvents:
        """The events of this node's containers (a job's, where it runs here); elsewhere, the
        periodic look at every job catches them."""
        return EngineEvents(self.volume)

    def _services(self, names: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Service inspect documents of this volume's jobs, by name (missing ones left out)."""
        if not names:
            return {}
        proc = docker("service", "inspect", *names, check=False, timeout=60)
        found = json.loads(text(proc) or "[]")
        return {
            str(doc["Spec"]["Name"]): doc
            for doc in found
            if isinstance(doc, dict)
            and ((doc.get("Spec") or {}).get("Labels") or {}).get(config.LABEL_VOLUME) in (None, self.volume)
        }

    def containers(self, names: list[str]) -> dict[str, Mapping[str, Any]]:
        services = self._services(names)
        if not services:
            return {}
        ids = text(docker("service", "ps", "-q", "--no-trunc", *services, check=False, timeout=60)).split()
        tasks = json.loads(text(docker("inspect", *ids, check=False, timeout=60)) or "[]") if ids else []
        by_service: dict[str, dict[str, Any]] = {}
        for task in tasks:
            if not isinstance(task, dict):
                continue
            known = by_service.get(task.get("ServiceID", ""))
            # A job has one task; should there be more, the latest says how it stands.
            if known is None or str(task.get("CreatedAt", "")) > str(known.get("CreatedAt", "")):
                by_service[task.get("ServiceID", "")] = task
        found: dict[str, Mapping[str, Any]] = {}
        for name, service in services.items():
            task = by_service.get(service.get("ID", ""))
            state = (
                task_as_container(task, service.get("CreatedAt")) if task else {"Status": "running", "Running": True}
            )
            found[name] = {"State": state, "Config": {"Labels": (service.get("Spec") or {}).get("Labels") or {}}}
        return found

    def remove(self, name: str) -> None:
        if self._services([name]):
            docker("service", "rm", name, check=False, timeout=60)

    def rename(self, name: str, new_name: str) -> bool:
        """A job cannot be renamed: the earlier attempt's job goes (its log and result are on the
        volume, its work on origin or in a bundle), and the name is free for the next one."""
        self.remove(name)
        return False

    def release(self) -> list[str]:
        """The batch's secrets, removed once it has no job left; their names."""
        return remove_secrets(self.volume) if not self.workers() else []

    def signal(self, name: str, signal: str) -> None:
        """Nothing reaches a job's container on another node by signal: the worker reads its stop
        request in its status, which the caller has written."""

    def stop(self, name: str, grace: int | None = None) -> None:
        """Wait for the worker to end on the stop request in its status; after its grace, remove
        the job (the swarm stops its container, with its stop grace period)."""
        limit = time.monotonic() + (grace if grace is not None else 120) + 15
        while time.monotonic() < limit:
            state = self.containers([name]).get(name)
            if state is None or not (state.get("State") or {}).get("Running"):
                return
            time.sleep(1.0)
        self.remove(name)

    def workers(self) -> list[tuple[str, bool]]:
        listing = text(docker("service", "ls", "--filter", f"label={config.LABEL_ROLE}=worker",
                              "--filter", f"label={config.LABEL_VOLUME}={self.volume}",
                              "--format", "{{.Name}}", timeout=60))  # fmt: skip
        names = listing.split()
        states = self.containers(names)
        return [(n, bool((states.get(n, {}).get("State") or {}).get("Running"))) for n in names]

    def logs(self, name: str) -> str:
        proc = docker("service", "logs", "--raw", name, check=False, timeout=60)
        if proc.returncode:
            raise UserError(f"no job {name}")
        return text(proc)
