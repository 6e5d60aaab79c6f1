"""What the batch's tests share: a fake engine and a few shortcuts over the volume."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator import batch
from orchestrator.batch import load_view, load_views
from orchestrator.tasks import OrchestrationDir, State, TaskResult, utc_now


class FakeEngine:
    def __init__(self) -> None:
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
