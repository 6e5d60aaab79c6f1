"""What a worker is told by its container's environment (workerspec.py writes it): its task,
the repository, the agent's user and CLI, and the control plane's doors and tickets."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from . import environment
from .control.mirror import MIRROR_NAME
from .errors import UserError
from .store import OrchestrationDir


@dataclass(frozen=True)
class WorkerConfig:
    task_id: str
    repo_url: str | None
    branch: str
    model: str | None
    api_url: str | None  # the real API endpoint; None for Anthropic's
    timeout: int | None  # set by spawn-worker --timeout; overrides the task's own
    attempt: int | None
    worker_type: str | None
    workspace: Path
    home: Path  # the runtime's home, where its secrets are copied in
    runtime_dir: Path
    agent_user: str
    orch: OrchestrationDir
    git_user_name: str
    git_user_email: str
    branch_prefix: str
    agent_cli: str  # which agent CLI runs the task (agents.py)
    mirror: Path | None = None  # the control plane's mirror of origin, when mounted: the clone borrows from it
    doors: str | None = None  # the control plane's doors, when it started this worker (worker_access.py)
    relay_ticket: str | None = None
    git_ticket: str | None = None
    egress_ticket: str | None = None
    api_key: bool = False  # the credential behind the control plane's relay is an API key

    @classmethod
    def from_env(cls, env: Mapping[str, str], task_id: str | None = None) -> WorkerConfig:
        task_id = task_id or environment.TASK_ID.get(env)
        if not task_id:
            raise UserError("no task id: set TASK_ID or pass --task-id")
        timeout = environment.TASK_TIMEOUT.whole_number(env) if environment.TASK_TIMEOUT.get(env) else None
        attempt = environment.TASK_ATTEMPT.require(env)
        return cls(
            task_id=task_id,
            repo_url=environment.REPO_URL.get(env),
            branch=environment.REPO_BRANCH.require(env),
            model=environment.ANTHROPIC_MODEL.get(env),
            api_url=environment.ANTHROPIC_BASE_URL.get(env),
            timeout=timeout,
            attempt=int(attempt) if attempt.isdigit() else None,
            worker_type=environment.WORKER_TYPE.get(env),
            workspace=Path(environment.WORKSPACE.require(env)),
            home=Path(env.get("HOME") or Path.home()),
            runtime_dir=Path(environment.RUNTIME_DIR.require(env)),
            agent_user=environment.AGENT_USER.require(env),
            orch=OrchestrationDir(
                Path(environment.ORCHESTRATION_DIR.require(env)), rehearsal=bool(environment.REHEARSAL.get(env))
            ),
            git_user_name=environment.GIT_USER_NAME.require(env),
            git_user_email=environment.GIT_USER_EMAIL.require(env),
            branch_prefix=environment.BRANCH_PREFIX.require(env),
            agent_cli=environment.AGENT_CLI.require(env),
            # Set by the spec only where the mirror is mounted (MIRROR_DIR has a default elsewhere).
            mirror=Path(mirror) / MIRROR_NAME if (mirror := env.get(environment.MIRROR_DIR.name)) else None,
            doors=environment.DOORS_DIR.get(env),
            relay_ticket=environment.RELAY_TICKET.get(env),
            git_ticket=environment.GIT_TICKET.get(env),
            egress_ticket=environment.EGRESS_TICKET.get(env),
            api_key=environment.CREDENTIAL_KIND.get(env) == "api-key",
        )
