"""The control plane's egress: the proxy (egress.py) that a control plane's workers reach
through ``egress.sock`` on their doors' volume, who is asking (the task's egress ticket), which
policy the task has, and where each connection is recorded.

Workers have no network (workerspec.WorkerSpec.network_mode): the proxy is their only way to any
host, and it opens only the hosts of the task's policy. The policy is made when a connection
comes, from the task file, the batch's settings and run.py's (egress_choice.py): a policy
changed by ``orch start`` holds for the next connection.

Each connection is a line of ``egress/TASK.jsonl`` on the shared volume (EgressRecord), up to
``MAX_LOG_BYTES`` a task; ``egress/TASK.counts.json`` counts every one (``orch status``). A
refused connection of a task is also told to its worker's log, through the relay's notices of
the task's account, which the worker already reads (worker_access.NoticeReader): nothing new
runs in the worker, and the line comes from the control plane, which the agent cannot silence.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from .. import config, environment
from ..docker import docker, text
from ..egress_choice import EgressChoice, from_environment, resolve
from ..egress_counts import FOLDER, EgressCounts
from ..errors import InvalidInput, UserError
from ..store import OrchestrationDir, write_json
from ..tickets import EGRESS, Tickets, ended
from .door import Door, listen_unix, tcp
from .egress import EgressProxy, EgressRecord, ProxySettings
from .egress_policy import NONE, Policy, PolicyError, parse_policy
from .egress_tickets import basic_credentials

log = logging.getLogger(__name__)

SOCKET = "egress.sock"  # in the doors' folder (doors.EGRESS)
UNIDENTIFIED = ".unidentified"  # the records of clients with no valid ticket (no task id starts with '.')
MAX_LOG_BYTES = 2 * 1024 * 1024  # a task's records; past this, connections are counted only
DEFAULT_CACHE_SECONDS = 60.0


class EgressLog:
    """The records, a file per task; one writer (the control plane), serialised."""

    def __init__(self, orch: OrchestrationDir, on_refused: Callable[[str, str], None] = lambda task, line: None):
        self.folder = orch.root / FOLDER
        self.on_refused = on_refused
        self._lock = threading.Lock()

    def record(self, entry: EgressRecord) -> None:
        name = entry.task or UNIDENTIFIED
        with self._lock:
            self.folder.mkdir(exist_ok=True)
            counts_path = self.folder / f"{name}.counts.json"
            try:
                counts = EgressCounts.from_json(json.loads(counts_path.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                counts = EgressCounts()
            log_path = self.folder / f"{name}.jsonl"
            line = entry.to_json() + "\n"
            size = log_path.stat().st_size if log_path.exists() else 0
            unlogged = counts.unlogged
            if size + len(line) <= MAX_LOG_BYTES:
                with open(log_path, "a", encoding="utf-8") as out:
                    out.write(line)
            else:
                unlogged += 1
            refused = entry.decision == "refused"
            write_json(counts_path, EgressCounts(counts.allowed + (not refused), counts.refused + refused,
                                                 unlogged).to_json())  # fmt: skip
        if refused and entry.task is not None:
            where = f"{entry.host}:{entry.port}" if entry.port else entry.host
            self.on_refused(
                entry.task, f"egress: refused {entry.method or 'a connection'} {where[:200]}: {entry.reason}"
            )


class TaskPolicies:
    """A task's policy, made when its connection comes (egress_choice.resolve)."""

    def __init__(self, orch: OrchestrationDir, env: Mapping[str, str], image_prefix: str):
        self.orch = orch
        self.image_prefix = image_prefix
        self.orchestration = from_environment(environment.EGRESS.get(env), environment.ALLOW_HOSTS.get(env))
        self._defaults: dict[str, tuple[float, Policy]] = {}
        self._lock = threading.Lock()

    def __call__(self, task_id: str) -> Policy | None:
        try:
            task = self.orch.load_task(task_id)
        except (OSError, ValueError, InvalidInput):
            return None  # no task file: nothing is allowed
        batch = self.orch.load_settings()
        levels = (self.orchestration, EgressChoice(batch.egress, batch.allow_hosts or ()),
                  EgressChoice(task.egress, task.allow_hosts))  # fmt: skip
        try:
            return resolve(levels, lambda: self.default(task.worker or config.DEFAULT_WORKER_TYPE))
        except PolicyError as exc:
            log.warning("task %s has no usable egress policy: %s", task_id, exc)
            return None

    def default(self, worker_type: str) -> Policy:
        """The worker type's own list, which its image carries (images.build_worker_image); none
        when the image has none (built before it did)."""
        now = time.monotonic()
        with self._lock:
            cached = self._defaults.get(worker_type)
            if cached is not None and now - cached[0] < DEFAULT_CACHE_SECONDS:
                return cached[1]
        image = config.worker_image(worker_type, self.image_prefix)
        try:
            found = docker("image", "inspect", "--format", "{{json .Config.Labels}}", image, timeout=30)
            listed = (json.loads(text(found) or "null") or {}).get(config.LABEL_EGRESS_ALLOW)
        except (UserError, ValueError, AttributeError):
            listed = None
        policy = parse_policy(listed, name="default", source=f"{image}'s egress-allow.txt") if listed else NONE
        with self._lock:
            self._defaults[worker_type] = (now, policy)
        return policy


class EgressIdentify:
    """Who is asking: ``Proxy-Authorization: Basic TASK:TICKET``, a ticket of the task's made
    with the control plane's key, for an attempt that has not ended."""

    def __init__(self, tickets: Tickets, orch: OrchestrationDir):
        self.tickets = tickets
        self.orch = orch

    def __call__(self, client: tuple[str, int], authorization: str | None) -> str | None:
        credentials = basic_credentials(authorization)
        if credentials is None:
            return None
        task_id, ticket = credentials
        found = self.tickets.read(EGRESS, ticket)
        if found is None or found.task_id != task_id or ended(self.orch, found):
            return None
        return task_id


class EgressService:
    """The proxy on the control plane's loopback, and its door on the doors' volume."""

    def __init__(self, doors_dir: Path, tickets: Tickets, orch: OrchestrationDir, env: Mapping[str, str],
                 image_prefix: str, on_refused: Callable[[str, str], None]):  # fmt: skip
        self.proxy = EgressProxy(
            "127.0.0.1", 0, identify=EgressIdentify(tickets, orch),
            policy_for=TaskPolicies(orch, env, image_prefix), record=EgressLog(orch, on_refused).record,
            # Every client comes through the door, from the control plane's loopback: the bound per
            # address would be one for all the workers together. The bound per task holds.
            settings=ProxySettings(max_per_address=ProxySettings.max_connections),
        )  # fmt: skip
        self.socket = doors_dir / SOCKET
        self.door: Door | None = None

    def start(self) -> EgressService:
        self.proxy.start()
        host, port = self.proxy.address
        self.door = Door(listen_unix(self.socket, 0o666), tcp(host, port)).start()
        return self

    def stop(self) -> None:
        if self.door is not None:
            self.door.close()
        self.proxy.stop()
        if os.path.lexists(self.socket):
            os.unlink(self.socket)
