"""What one worker is started with (WorkerSpec): its image, settings, labels, limits and secrets,
built once from the batch's settings, whatever engine starts it (engine.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from . import config, environment
from .cli import (
    check_branch_prefix,
)
from .config import CONTAINER_ORCHESTRATION_DIR
from .docker import (
    env_pass,
    flag,
    labels,
    storage_quota_supported,
)
from .doors import CONTROL_ALIAS
from .errors import UserError
from .limits import WorkerLimits
from .secrets import Secrets
from .tasks import validate_task_id
from .tickets import EGRESS, GIT, RELAY, Tickets, key_folder

# The runtime's capabilities: to start the agent as its own user, and to end its processes.
RUNTIME_CAPABILITIES = ("SETUID", "SETGID", "KILL")
WORKER_MIRROR_DIR = "/mirror"  # where a worker finds the control plane's mirror, read-only
WORKER_DOORS_DIR = "/run/orchestrator"  # where it finds the control plane's relay and git channel
# A swarm worker's copy of the mirror (taken over the git channel), where a local worker mounts it:
# readable by all, as the agent's clone reads through the runtime's.
WORKER_MIRROR_COPY_DIR = WORKER_MIRROR_DIR


class WorkerDidNotStart(UserError):
    """The engine made the worker but could not start it (the worker is removed again)."""


class WorkerExists(UserError):
    """The task has a worker container already; ``status`` is Docker's state of it."""

    def __init__(self, message: str, status: str | None):
        super().__init__(message)
        self.status = status


class WorkerOfAnotherBatch(UserError):
    """The task's container name is a worker of another batch's (on another volume): not ours to touch."""


@dataclass(frozen=True)
class WorkerSpec:
    """Everything needed to start one worker, secrets included (never printed)."""

    worker_type: str
    task_id: str
    image: str
    repo_url: str
    branch: str
    model: str
    api_url: str | None
    timeout: int | None
    volume: str
    network: str | None
    git_user_name: str | None
    git_user_email: str | None
    git_token_user: str | None
    secrets: Secrets
    limits: WorkerLimits
    stop_timeout: int
    attempt: int | None = None
    branch_prefix: str = environment.BRANCH_PREFIX.require({})
    push_retry: str | None = None  # seconds a push waits for an unreachable server
    engine: str = config.ENGINE_DOCKER  # what runs it: a container, or a swarm job
    storage_quota: bool = False  # the engine bounds a container's writable layer (see limits.py)
    mirror_volume: str | None = None  # the control plane's mirror of origin, mounted read-only to clone from
    # A control plane's worker: the volume of its doors (mounted read-only), the task's tickets
    # (relay, git), and whether the credential behind the relay is an API key. No secret then.
    doors_volume: str | None = None
    tickets: tuple[str, str] | None = None
    api_key: bool = False
    egress_ticket: str | None = None  # its agent's, for the control plane's egress proxy
    # A swarm worker of a control plane: no doors' volume (a job may run on another node), but the
    # control plane on the batch's internal overlay network (doors.py), ``tcp://ALIAS``.
    doors_address: str | None = None
    dns: str | None = None  # a swarm job's name server: its control plane's, which resolves nothing
    rehearsal: str | None = None  # run.py --rehearsal's: its result says so

    @property
    def network_mode(self) -> str | None:
        """A control plane's worker has no network at all: the relay, the git channel and the
        egress proxy are Unix sockets on its doors' volume (the runtime opens doors to the relay
        and the proxy on the worker's own loopback). Nothing it runs can reach a host, a name
        server or the engine's embedded DNS but through the proxy, which keeps the task's policy."""
        return "none" if self.doors_volume else self.network

    @property
    def container(self) -> str:
        return config.container_name(self.task_id)

    def environment(self) -> dict[str, str]:
        """The worker's environment: settings only. Every value travels through docker's own
        environment, not argv."""
        env = {
            environment.TASK_ID.name: self.task_id,
            environment.WORKER_TYPE.name: self.worker_type,
            environment.REPO_URL.name: self.repo_url,
            environment.REPO_BRANCH.name: self.branch,
            environment.ANTHROPIC_MODEL.name: self.model,
            environment.ANTHROPIC_BASE_URL.name: self.api_url or "",
            environment.GIT_USER_NAME.name: self.git_user_name or "",
            environment.GIT_USER_EMAIL.name: self.git_user_email or "",
            environment.GIT_TOKEN_USER.name: self.git_token_user or "",
            environment.TASK_TIMEOUT.name: str(self.timeout) if self.timeout else "",
            environment.TASK_ATTEMPT.name: str(self.attempt) if self.attempt else "",
            environment.BRANCH_PREFIX.name: self.branch_prefix,
            environment.PUSH_RETRY_SECONDS.name: self.push_retry or "",
            environment.MIRROR_DIR.name: WORKER_MIRROR_DIR
            if self.mirror_volume
            else (WORKER_MIRROR_COPY_DIR if self.doors_address else ""),
            environment.REHEARSAL.name: self.rehearsal or "",
        }
        if (self.doors_volume or self.doors_address) and self.tickets:
            env[environment.DOORS_DIR.name] = WORKER_DOORS_DIR if self.doors_volume else self.doors_address or ""
            env[environment.RELAY_TICKET.name], env[environment.GIT_TICKET.name] = self.tickets
            env[environment.CREDENTIAL_KIND.name] = "api-key" if self.api_key else "oauth"
            env[environment.EGRESS_TICKET.name] = self.egress_ticket or ""
        return {name: value for name, value in env.items() if value}

    def labels(self) -> dict[str, str]:
        """What the worker's container (or job) is labelled with: orch finds its workers by them."""
        return {
            config.LABEL_ROLE: "worker",
            config.LABEL_TASK_ID: self.task_id,
            config.LABEL_WORKER_TYPE: self.worker_type,
            config.LABEL_VOLUME: self.volume,
        }

    def create_argv(self) -> list[str]:
        return [
            "create",
            "--name", self.container,
            *labels(self.labels()),
            "--volume", f"{self.volume}:{CONTAINER_ORCHESTRATION_DIR}",
            *(["--volume", f"{self.mirror_volume}:{WORKER_MIRROR_DIR}:ro"] if self.mirror_volume else []),
            *(["--volume", f"{self.doors_volume}:{WORKER_DOORS_DIR}:ro"] if self.doors_volume else []),
            *flag("--network", self.network_mode),
            *self.limits.argv(),
            *self.limits.disk_argv(self.storage_quota),
            "--cap-drop", "ALL",
            *[arg for cap in RUNTIME_CAPABILITIES for arg in ("--cap-add", cap)],
            "--security-opt", "no-new-privileges",
            # Time for the runtime to stop the agent, commit and push when the container is stopped.
            "--stop-timeout", str(self.stop_timeout),
            # A missing image is an error to report (with how to build it), not one to pull.
            "--pull", "never",
            *[arg for name in self.environment() for arg in env_pass(name)],
            self.image,
        ]  # fmt: skip


def worker_spec(
    worker_type: str,
    task_id: str,
    *,
    env: Mapping[str, str],
    repo: str | None,
    branch: str,
    model: str,
    api_url: str | None,
    volume: str,
    network: str | None,
    image_prefix: str,
    limits: WorkerLimits,
    timeout: int | None = None,
    token_file: str | None = None,
    ssh_key_file: str | None = None,
    known_hosts_file: str | None = None,
    git_token_file: str | None = None,
    branch_prefix: str | None = None,
    attempt: int | None = None,
    engine: str = config.ENGINE_DOCKER,
    storage_quota: bool | None = None,
) -> WorkerSpec:
    """The spec of a worker, with the secrets read now (spawn-worker and orch's dispatcher). In a
    control plane (its doors' volume set), the worker gets tickets of its task in their place."""
    task_id = validate_task_id(task_id, "TASK_ID")
    image = config.worker_image(worker_type, image_prefix)
    if not repo:
        raise UserError("no repository: pass --repo URL or set REPO_URL")
    if timeout is not None and timeout <= 0:
        raise UserError("--timeout must be a positive number of seconds")
    secrets = Secrets.read(
        token_file=token_file,
        ssh_key=ssh_key_file,
        known_hosts=known_hosts_file,
        git_token_file=git_token_file,
        env=env,
    )
    # Started by a control plane (its doors' volume set): tickets, no secret. A container mounts
    # the doors; a swarm job, which may run on another node, reaches them over the workers' network.
    through_control = bool(environment.DOORS_VOLUME.get(env))
    doors = environment.DOORS_VOLUME.get(env) if engine == config.ENGINE_DOCKER else None
    doors_address = f"tcp://{CONTROL_ALIAS}" if through_control and engine == config.ENGINE_SWARM else None
    tickets = egress_ticket = None
    if through_control:
        tickets, egress_ticket = worker_tickets(env, task_id, attempt)
        api_key = secrets.claude is not None and secrets.claude.is_api_key
        secrets = Secrets()  # the control plane keeps them: the worker reaches origin and the API through it
    return WorkerSpec(
        worker_type=worker_type,
        task_id=task_id,
        image=image,
        repo_url=repo,
        branch=branch,
        model=model,
        api_url=api_url,
        timeout=timeout,
        volume=volume,
        network=network,
        git_user_name=environment.GIT_USER_NAME.get(env),
        git_user_email=environment.GIT_USER_EMAIL.get(env),
        git_token_user=env.get(environment.GIT_TOKEN_USER.name),
        secrets=secrets,
        limits=limits,
        stop_timeout=environment.STOP_TIMEOUT.whole_number(env),
        attempt=attempt,
        push_retry=env.get(environment.PUSH_RETRY_SECONDS.name),
        branch_prefix=check_branch_prefix(branch_prefix or environment.BRANCH_PREFIX.require(env)),
        engine=engine,
        storage_quota=engine == config.ENGINE_DOCKER and limits.bounded and quota_of(storage_quota, env),
        # A volume is on one node: a swarm job elsewhere would find it empty.
        mirror_volume=environment.MIRROR_VOLUME.get(env) if engine == config.ENGINE_DOCKER else None,
        doors_volume=doors,
        tickets=tickets,
        api_key=through_control and api_key,
        egress_ticket=egress_ticket,
        doors_address=doors_address,
        dns=environment.SWARM_CONTROL_ADDRESS.get(env) if doors_address else None,
        rehearsal=environment.REHEARSAL.get(env),
    )


def worker_tickets(env: Mapping[str, str], task_id: str, attempt: int | None) -> tuple[tuple[str, str], str]:
    """The task's relay and git tickets, and its egress ticket, made with the control plane's key."""
    folder = key_folder(env)
    try:
        tickets = Tickets.in_folder(folder)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if tickets is None:
        raise UserError(f"no worker ticket key in {folder}: workers are started by a running control plane")
    return (tickets.make(RELAY, task_id, attempt), tickets.make(GIT, task_id, attempt)), tickets.make(
        EGRESS, task_id, attempt
    )


def quota_of(given: bool | None, env: Mapping[str, str]) -> bool:
    """Whether the engine bounds a container's writable layer: as given, as run.py found out
    ($ORCHESTRATOR_STORAGE_QUOTA), else asked now."""
    if given is not None:
        return given
    known = environment.STORAGE_QUOTA.get(env)
    if known in ("yes", "no"):
        return known == "yes"
    return storage_quota_supported()
