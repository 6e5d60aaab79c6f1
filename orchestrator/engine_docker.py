"""Workers as containers on this engine (``--engine docker``, the default).

A start is three docker calls when all goes well (create, cp of the secrets, start); what may
stand in the way (a container of that name, a missing image, an engine out of reach) is learned
from create's refusal and only then looked into. Every answer is about this volume's workers:
worker names carry only the task id, so a batch on another volume may have a worker of the same
name, which is left alone as if it did not exist.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from . import config
from .docker import (
    DaemonUnreachable,
    NameConflict,
    NoSuchImage,
    StorageQuotaRefused,
    container_label,
    docker,
    inspect_container,
    inspect_containers,
    remove_container,
    text,
    unusable,
)
from .engine_events import EngineEvents
from .errors import UserError
from .workerspec import WorkerDidNotStart, WorkerExists, WorkerOfAnotherBatch, WorkerSpec


class DockerEngine:
    """The engine as reconcile and the dispatcher need it, limited to this volume's workers.

    Worker names carry only the task id, so a batch on another volume may have a worker of
    the same name: it is left alone, as if it did not exist.
    """

    def __init__(self, volume: str):
        self.volume = volume

    def launch(self, spec: WorkerSpec, claim: Callable[[], object]) -> str:
        """Create the container, claim the task (the name is the lock: of two spawns for one task,
        only the one that created the container marks it starting) while the secrets travel, then
        start it. A worker that holds no secret (a control plane's) is one ``docker run -d``,
        after the claim, which is undone when it does not start."""
        if not spec.secrets.files():
            undo = claim()
            try:
                create(spec, run=True)
            except WorkerExists:
                raise  # another spawn's worker: its claim stands
            except WorkerOfAnotherBatch:
                if callable(undo):  # the name is another batch's: its container is left alone
                    undo()
                raise
            except BaseException:
                remove_container(spec.container)  # made, perhaps, but not started
                if callable(undo):
                    undo()
                raise
            return spec.container
        create(spec)
        try:
            with ThreadPoolExecutor(1) as pool:
                given = pool.submit(spec.secrets.give, spec.container, config.WORKER_RUNTIME_HOME, uid=0, gid=0)
                try:
                    claim()
                finally:
                    given.result()
        except BaseException:
            remove_container(spec.container)
            raise
        try:
            docker("start", spec.container, timeout=120)
        except UserError as exc:
            remove_container(spec.container)
            raise WorkerDidNotStart(f"the worker container did not start: {exc}") from None
        return spec.container

    def events(self) -> EngineEvents:
        return EngineEvents(self.volume)

    def ours(self, info: Mapping[str, Any]) -> bool:
        return container_label(info, config.LABEL_VOLUME) in (None, self.volume)

    def containers(self, names: list[str]) -> dict[str, Mapping[str, Any]]:
        return {name: info for name, info in inspect_containers(names).items() if self.ours(info)}

    def _is_ours(self, name: str) -> bool:
        return name in self.containers([name])

    def remove(self, name: str) -> None:
        if self._is_ours(name):
            remove_container(name)

    def rename(self, name: str, new_name: str) -> bool:
        """Keep a container under another name; False when there is none of ours to keep."""
        if not self._is_ours(name):
            return False
        docker("rename", name, new_name, timeout=30)
        return True

    def signal(self, name: str, signal: str) -> None:
        if self._is_ours(name):
            docker("kill", "--signal", signal, name, check=False, timeout=30)

    def stop(self, name: str, grace: int | None = None) -> None:
        """docker stop: SIGTERM, then SIGKILL after ``grace`` seconds, else the container's own
        stop timeout (spawn-worker gives workers time to hand their work back)."""
        if self._is_ours(name):
            docker("stop", *(["--time", str(grace)] if grace is not None else []), name, check=False, timeout=None)

    def workers(self) -> list[tuple[str, bool]]:
        """This volume's worker containers, by name, and whether each is running."""
        proc = docker(
            "ps", "--all", "--filter", f"label={config.LABEL_ROLE}=worker",
            "--filter", f"label={config.LABEL_VOLUME}={self.volume}", "--format", "{{json .}}",
            timeout=60,
        )  # fmt: skip
        found = []
        for line in text(proc).splitlines():
            info = json.loads(line)
            found.append((str(info.get("Names", "")), info.get("State") == "running"))
        return found

    def logs(self, name: str) -> str:
        """What the worker container printed, as `docker logs` shows it."""
        proc = docker("logs", name, check=False, timeout=60)
        if proc.returncode:
            raise UserError(f"no container {name}")
        return text(proc)

    def release(self) -> list[str]:
        """What the engine keeps for the batch besides its workers: nothing (a swarm keeps secrets)."""
        return []


def create(spec: WorkerSpec, *, run: bool = False) -> None:
    """``docker create`` of the worker (``docker run -d`` with ``run``); a refusal becomes the
    error that says what to do."""

    def argv(of: WorkerSpec) -> list[str]:
        made = of.create_argv()
        return ["run", "--detach", *made[1:]] if run else made

    try:
        try:
            docker(*argv(spec), env=spec.environment(), timeout=120)
        except StorageQuotaRefused:
            # The driver said no (overlay2 on XFS without pquota): the workspace is a tmpfs instead.
            docker(*argv(replace(spec, storage_quota=False)), env=spec.environment(), timeout=120)
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
        return WorkerOfAnotherBatch(
            f"{spec.container} is a worker of the batch on the volume {owner}: two batches on one engine cannot "
            f"both have a task {spec.task_id} at once. Give this one another id (orch submit --id, or the task "
            f"file's name and id), or run it once that worker is gone (`orch cleanup --volume {owner}` removes the "
            "finished ones); ids orch makes up never collide"
        )
    if state.get("Running"):
        return WorkerExists(f"task {spec.task_id} already has a running worker ({spec.container})", "running")
    if state.get("Status") == "created":
        return WorkerExists(
            f"{spec.container} exists but was never started (a spawn under way, or one that failed); wait a moment "
            f"and look again (`orch status {spec.task_id}`), or remove it (`docker rm {spec.container}`: it never "
            "ran, nothing is lost)",
            "created",
        )
    return WorkerExists(
        f"task {spec.task_id} ran already: its worker {spec.container} exited with code {state.get('ExitCode')} "
        f"(`docker logs {spec.container}` shows it). `orch retry {spec.task_id}` runs it again and keeps this "
        "attempt and its container; or give a new task a new id",
        state.get("Status"),
    )
