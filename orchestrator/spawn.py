"""spawn-worker TYPE TASK_ID: start one worker container for one task.

Works on the host and inside the manager. Secrets never reach a command line or the
container's environment: they are copied into the created container, into the home of its
runtime (root), through the Docker API, which works from both places where a bind mount of a
path inside the manager would not. The worker runs with limits and without capabilities
beyond the runtime's two (see sandbox.py).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from . import config, environment
from .cli import (
    HelpFormatter,
    add_api_option,
    add_git_access_options,
    add_limit_options,
    add_placement_options,
    check_branch_prefix,
    run_command,
)
from .config import CONTAINER_ORCHESTRATION_DIR
from .docker import (
    DaemonUnreachable,
    NameConflict,
    NoSuchImage,
    StorageQuotaRefused,
    container_label,
    docker,
    env_pass,
    flag,
    inspect_container,
    labels,
    remove_container,
    storage_quota_supported,
    unusable,
)
from .errors import InvalidInput, UserError
from .limits import WorkerLimits
from .secrets import DEFAULT_TOKEN_FILE, Secrets
from .tasks import OrchestrationDir, State, validate_task_id
from .volume import HelperVolume, LocalVolume, host_volume, local_volume

# The runtime's capabilities: to start the agent as its own user, and to end its processes.
RUNTIME_CAPABILITIES = ("SETUID", "SETGID", "KILL")


def stop_timeout(env: Mapping[str, str]) -> int:
    text = environment.STOP_TIMEOUT.require(env)
    if not text.isdigit() or int(text) <= 0:
        raise InvalidInput(f"{environment.STOP_TIMEOUT.name} must be a positive number of seconds, not {text!r}")
    return int(text)


class WorkerExists(UserError):
    """The task has a worker container already; ``status`` is Docker's state of it."""

    def __init__(self, message: str, status: str | None):
        super().__init__(message)
        self.status = status


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
        }
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
            *flag("--network", self.network),
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


def spawn(spec: WorkerSpec, orch_dir: str) -> str:
    """Create, prepare and start the worker; returns the container name.

    Three docker calls when all goes well: create, cp (the secrets) and start. What may stand in
    the way (a container of that name, a missing image, an engine out of reach) is learned from
    create's refusal and only then looked into. On the host, the volume's folder is looked up
    while the container is created.
    """
    volume: LocalVolume | HelperVolume | None = local_volume(orch_dir)
    if spec.engine == config.ENGINE_SWARM:
        from .swarm import spawn_job

        claimed = volume or host_volume(spec.volume, spec.image)
        return spawn_job(spec, lambda: claimed.claim(spec.task_id, spec.worker_type, spec.container))
    with ThreadPoolExecutor(2) as pool:
        found = pool.submit(host_volume, spec.volume, spec.image) if volume is None else None
        create(spec)
        try:
            if found is not None:
                volume = found.result()
            assert volume is not None
            # The name is the lock: of two spawns for one task, only the one that created the
            # container marks the task starting. The secrets travel meanwhile.
            given = pool.submit(spec.secrets.give, spec.container, config.WORKER_RUNTIME_HOME, uid=0, gid=0)
            try:
                volume.claim(spec.task_id, spec.worker_type, spec.container)
            finally:
                given.result()
        except BaseException:
            remove_container(spec.container)
            raise
    try:
        docker("start", spec.container, timeout=120)
    except UserError as exc:
        remove_container(spec.container)
        volume.set_state(spec.task_id, State.FAILED, f"the worker container did not start: {exc}")
        raise
    return spec.container


def create(spec: WorkerSpec) -> None:
    """``docker create`` of the worker; a refusal becomes the error that says what to do."""
    try:
        try:
            docker(*spec.create_argv(), env=spec.environment(), timeout=120)
        except StorageQuotaRefused:
            # The driver said no (overlay2 on XFS without pquota): the workspace is a tmpfs instead.
            docker(*replace(spec, storage_quota=False).create_argv(), env=spec.environment(), timeout=120)
    except NameConflict:
        raise existing_worker(spec) from None
    except NoSuchImage:
        raise UserError(
            f"image {spec.image} not found; build it with `bin/run.py --build` "
            f"or `docker build -t {spec.image} {spec.worker_type}/`"
        ) from None
    except DaemonUnreachable as exc:
        raise unusable(exc) from None


def existing_worker(spec: WorkerSpec) -> UserError:
    """Why the task's container name is taken: a worker running, one never started, one that
    exited, or a worker of another batch."""
    existing = inspect_container(spec.container)
    if existing is None:  # removed since: a spawn under way that gave up
        return WorkerExists(f"task {spec.task_id} already has a worker ({spec.container})", "created")
    state = existing.get("State") or {}
    owner = container_label(existing, config.LABEL_VOLUME)
    if owner and owner != spec.volume:
        return UserError(
            f"{spec.container} belongs to the batch on the volume {owner}; batches that run at once "
            f"need different task ids (orch submit --id)"
        )
    if state.get("Running"):
        return WorkerExists(f"task {spec.task_id} already has a running worker ({spec.container})", "running")
    if state.get("Status") == "created":
        return WorkerExists(
            f"{spec.container} exists but was never started (a spawn that failed, or one under way); "
            f"remove it with `docker rm {spec.container}` to run the task",
            "created",
        )
    return WorkerExists(
        f"{spec.container} exists (exited with code {state.get('ExitCode')}); "
        f"see `docker logs {spec.container}`, then `docker rm {spec.container}` to run the task again",
        state.get("Status"),
    )


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
    """The spec of a worker, with the secrets read now (spawn-worker and orch's dispatcher)."""
    task_id = validate_task_id(task_id, "TASK_ID")
    image = config.worker_image(worker_type, image_prefix)
    if not repo:
        raise UserError("no repository: pass --repo URL or set REPO_URL")
    if timeout is not None and timeout <= 0:
        raise UserError("--timeout must be a positive number of seconds")
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
        secrets=Secrets.read(
            token_file=token_file,
            ssh_key=ssh_key_file,
            known_hosts=known_hosts_file,
            git_token_file=git_token_file,
            env=env,
        ),
        limits=limits,
        stop_timeout=stop_timeout(env),
        attempt=attempt,
        push_retry=env.get(environment.PUSH_RETRY_SECONDS.name),
        branch_prefix=check_branch_prefix(branch_prefix or environment.BRANCH_PREFIX.require(env)),
        engine=engine,
        storage_quota=engine == config.ENGINE_DOCKER and limits.bounded and quota_of(storage_quota, env),
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        formatter_class=HelpFormatter,
        prog="spawn-worker",
        description="Start a worker container (worker-TASK_ID, image claude-TYPE) for the task "
        "tasks/TASK_ID.json on the shared volume. Defaults come from the environment, so inside the "
        "manager `spawn-worker flutter task-001` is enough.",
    )
    parser.add_argument("worker_type", metavar="TYPE", help="worker type; the image is <prefix>TYPE (claude-flutter)")
    parser.add_argument("task_id", metavar="TASK_ID", help="task id; tasks/TASK_ID.json must exist")
    parser.add_argument(
        "--repo",
        metavar="URL",
        default=environment.REPO_URL.get(os.environ),
        help="repository to clone (default: $REPO_URL)",
    )
    parser.add_argument(
        "--branch",
        default=environment.REPO_BRANCH.get(os.environ),
        help=f"branch to clone (default: $REPO_BRANCH, else {environment.REPO_BRANCH.default})",
    )
    parser.add_argument(
        "--model",
        default=environment.ANTHROPIC_MODEL.get(os.environ),
        help=f"model (default: $ANTHROPIC_MODEL, else {environment.ANTHROPIC_MODEL.default})",
    )
    parser.add_argument(
        "--token",
        metavar="FILE",
        help="file holding the Claude token (default: $CLAUDE_CODE_OAUTH_TOKEN or $ANTHROPIC_API_KEY, "
        f"else {DEFAULT_TOKEN_FILE})",
    )
    add_api_option(parser)
    add_git_access_options(parser)
    add_limit_options(parser)
    parser.add_argument(
        "--timeout",
        type=int,
        metavar="SECONDS",
        help="how long the agent may run (default: the task's timeout, else 3600)",
    )
    parser.add_argument(
        "--orchestration-dir",
        default=environment.ORCHESTRATION_DIR.get(os.environ),
        help="where the shared volume is mounted here, if it is (default: $ORCHESTRATION_DIR, else /orchestration)",
    )
    add_placement_options(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.umask(OrchestrationDir.UMASK)

    def work() -> int:
        spec = worker_spec(
            args.worker_type,
            args.task_id,
            env=os.environ,
            repo=args.repo,
            branch=args.branch,
            model=args.model,
            api_url=args.api_url,
            volume=args.volume,
            network=args.network,
            image_prefix=args.image_prefix,
            limits=WorkerLimits.parse(args.memory, args.cpus, args.pids_limit, args.disk),
            timeout=args.timeout,
            token_file=args.token,
            ssh_key_file=args.ssh_key,
            known_hosts_file=args.known_hosts,
            git_token_file=args.git_token,
            branch_prefix=args.branch_prefix,
            engine=args.engine,
        )
        task_id = spec.task_id
        name = spawn(spec, args.orchestration_dir)
        print(f"started {name} (image {spec.image}, task {task_id})")
        follow = "docker service logs -f" if spec.engine == config.ENGINE_SWARM else "docker logs -f"
        print(f"  follow it:   {follow} {name}")
        print(f"  its result:  {args.orchestration_dir}/results/{task_id}.json")
        return 0

    return run_command("spawn-worker", work, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
