"""Names and defaults shared by the host side, the manager and the workers."""

from __future__ import annotations

import re

from .errors import InvalidInput

DEFAULT_MODEL = "claude-opus-4-5-20251101"
DEFAULT_BRANCH = "main"
DEFAULT_VOLUME = "orchestration-volume"
DEFAULT_IMAGE_PREFIX = "claude-"  # images are claude-orchestrator, claude-flutter, claude-TYPE
MANAGER_IMAGE = "orchestrator"
DEFAULT_WORKER_TYPE = "flutter"

# The user both images run as; files copied into containers are given to it.
CONTAINER_UID = 1000
CONTAINER_GID = 1000
CONTAINER_HOME = "/home/claude"
CONTAINER_ORCHESTRATION_DIR = "/orchestration"

# Environment variables that carry these settings into the manager, so that
# spawn-worker there starts workers the way run.py was told to.
ENV_VOLUME = "ORCHESTRATOR_VOLUME"
ENV_NETWORK = "ORCHESTRATOR_NETWORK"
ENV_IMAGE_PREFIX = "ORCHESTRATOR_IMAGE_PREFIX"
ENV_BRANCH_PREFIX = "ORCHESTRATOR_BRANCH_PREFIX"  # task branches are PREFIX + task id (orchestrator/task-001)
DEFAULT_BRANCH_PREFIX = "orchestrator/"
BRANCH_PREFIX_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,60}")

LABEL_ROLE = "orchestrator.role"
LABEL_TASK_ID = "orchestrator.task-id"
LABEL_WORKER_TYPE = "orchestrator.worker-type"
LABEL_VOLUME = "orchestrator.volume"  # which batch a worker belongs to (its shared volume)

WORKER_TYPE_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.-]{0,40}")


def worker_image(worker_type: str, prefix: str) -> str:
    if not WORKER_TYPE_PATTERN.fullmatch(worker_type):
        raise InvalidInput(f"worker type {worker_type!r} is not valid: use lower-case letters, digits, '.', '_' or '-'")
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
