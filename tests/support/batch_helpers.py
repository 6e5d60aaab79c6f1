"""What the batch's tests share: a fake engine and a few shortcuts over the volume."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from orchestrator import batch
from orchestrator.context import Context, Settings
from orchestrator.engine import Engine
from orchestrator.engine_events import EngineEvents
from orchestrator.store import OrchestrationDir
from orchestrator.tasks import State, TaskResult, utc_now
from orchestrator.views import load_view, load_views
from orchestrator.workerspec import WorkerSpec


class FakeEngine:
    """An engine (orchestrator.engine.Engine) of the tests' own: containers are what ``state`` says."""

    def __init__(self, volume: str = "orch-test-volume") -> None:
        self.volume = volume
        self.state: dict[str, dict[str, Any]] = {}
        self.removed: list[str] = []
        self.signals: list[tuple[str, str]] = []
        self.stopped: list[str] = []

    def containers(self, names: list[str]) -> dict[str, Mapping[str, Any]]:
        return {name: {"State": self.state[name]} for name in names if name in self.state}

    def remove(self, name: str) -> None:
        self.removed.append(name)
        self.state.pop(name, None)

    def signal(self, name: str, signal: str) -> None:
        self.signals.append((name, signal))

    def stop(self, name: str, grace: int | None = None) -> None:
        self.stopped.append(name)

    def rename(self, name: str, new_name: str) -> bool:
        if name not in self.state:
            return False
        self.state[new_name] = self.state.pop(name)
        return True

    def workers(self) -> list[tuple[str, bool]]:
        return [(name, bool(info.get("Running"))) for name, info in self.state.items()]

    def launch(self, spec: WorkerSpec, claim: Callable[[], object]) -> str:
        claim()
        self.state[spec.container] = {"Status": "running", "Running": True}
        return spec.container

    def logs(self, name: str) -> str:
        return ""

    def release(self) -> list[str]:
        return []

    def events(self) -> EngineEvents:
        return EngineEvents(self.volume)


def context(orch: OrchestrationDir, engine: Engine, env: Mapping[str, str] | None = None) -> Context:
    """A command's context with the tests' volume folder and engine."""
    env = dict(env or {})
    settings = Settings.from_env(env, volume=engine.volume, orchestration_dir=orch.root)
    return Context(settings=settings, orch=orch, engine=engine, env=env)


def submit(orch: OrchestrationDir, prompt: str = "do it", **options: Any) -> str:
    fields = {"task_id": None, "worker": "flutter", "depends_on": (), "timeout": None, "max_turns": None, "model": None}
    with orch.locked():
        return batch.submit(orch, prompt=prompt, **{**fields, **options}).id


def finish(orch: OrchestrationDir, task_id: str, state: State) -> None:
    orch.write_result(TaskResult(task_id, state, "", utc_now(), error=None if state is State.SUCCESS else "no"))
    orch.update_status(task_id, state)


def state(orch: OrchestrationDir, task_id: str) -> State:
    return load_view(orch, task_id).state


def queue_all(orch: OrchestrationDir) -> None:
    with orch.locked():
        batch.queue(orch, load_views(orch))
