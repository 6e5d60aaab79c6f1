"""Names the host side, the manager and the workers agree on: images, containers, labels,
users and folders in the images. (Environment variables are in environment.py.)"""

from __future__ import annotations

import re

from .errors import InvalidInput

MANAGER_IMAGE = "orchestrator"  # after the image prefix: claude-orchestrator
DEFAULT_WORKER_TYPE = "flutter"

# The orchestrator's user in both images (the manager runs as it); its group owns the shared
# volume. Files copied into the manager are given to it.
CONTAINER_UID = 1000
CONTAINER_GID = 1000
CONTAINER_HOME = "/home/claude"
CONTAINER_ORCHESTRATION_DIR = "/orchestration"
# How long an agent may run when neither its task nor spawn-worker says (seconds).
DEFAULT_TASK_TIMEOUT = 3600
CONTAINER_WORKSPACE = "/workspace"
# In a worker, the runtime is root (it holds the secrets) and the agent a user of its own.
WORKER_RUNTIME_HOME = "/root"
AGENT_USER = "agent"

BRANCH_PREFIX_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,60}")

LABEL_ROLE = "orchestrator.role"
LABEL_TASK_ID = "orchestrator.task-id"
LABEL_WORKER_TYPE = "orchestrator.worker-type"
LABEL_VOLUME = "orchestrator.volume"  # which batch a worker belongs to (its shared volume)
LABEL_EGRESS_ALLOW = "orchestrator.egress-allow"  # a worker image's default egress policy (its type's file)

WORKER_TYPE_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.-]{0,40}")


def worker_image(worker_type: str, prefix: str) -> str:
    if not WORKER_TYPE_PATTERN.fullmatch(worker_type):
        raise InvalidInput(f"worker type {worker_type!r} is not valid: use lower-case letters, digits, '.', '_' or '-'")
    if worker_type == MANAGER_IMAGE:
        raise InvalidInput(f"worker type {worker_type!r} names the manager's image, which is no worker's")
    return f"{prefix}{worker_type}"


def container_name(task_id: str) -> str:
    return f"worker-{task_id}"


_KEPT_ATTEMPT = re.compile(r"worker-(?P<task>.+)-attempt-(?P<n>\d+)")


def container_task_id(name: str) -> str | None:
    """The task of a worker container: worker-ID, or worker-ID-attempt-N kept by orch retry."""
    kept = _KEPT_ATTEMPT.fullmatch(name)
    if kept:
        return kept.group("task")
    return name.removeprefix("worker-") if name.startswith("worker-") else None


def container_attempt(name: str) -> int | None:
    """N for a container kept by orch retry (worker-ID-attempt-N), else None."""
    kept = _KEPT_ATTEMPT.fullmatch(name)
    return int(kept.group("n")) if kept else None


# What runs the workers (--engine, ORCHESTRATOR_ENGINE): containers, or Swarm jobs (orchestrator/swarm.py).
ENGINE_DOCKER = "docker"
ENGINE_SWARM = "swarm"
ENGINES = (ENGINE_DOCKER, ENGINE_SWARM)
