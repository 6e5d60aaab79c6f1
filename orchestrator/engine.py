"""What runs the workers: the ``Engine`` protocol and the table of engines (``--engine``,
``ORCHESTRATOR_ENGINE``). An engine is one module (engine_docker.py: containers on this engine;
engine_swarm.py: jobs of a swarm) and one entry in ENGINES; nothing else names them.

Every engine answers about the workers of one shared volume (one batch), and leaves any other
volume's alone: worker names carry only the task id.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from .engine_docker import DockerEngine
from .engine_events import EngineEvents
from .engine_swarm import SwarmEngine
from .errors import InvalidInput
from .workerspec import WorkerSpec


class Engine(Protocol):
    """What the batch's rules, the dispatcher, orch and spawn-worker ask of an engine."""

    volume: str

    def launch(self, spec: WorkerSpec, claim: Callable[[], object]) -> str:
        """Start the worker ``spec`` describes; ``claim`` records the task as starting once the
        worker's name is this spawn's (the name is the lock). Returns the worker's name."""
        ...

    def containers(self, names: list[str]) -> dict[str, Mapping[str, Any]]:
        """``docker inspect`` documents (or their like) of these workers of the volume, by name;
        those that do not exist are left out."""
        ...

    def workers(self) -> list[tuple[str, bool]]:
        """Every worker of the volume, by name, and whether it runs."""
        ...

    def remove(self, name: str) -> None: ...

    def rename(self, name: str, new_name: str) -> bool:
        """Keep a worker under another name; False when there is none (or the engine cannot)."""
        ...

    def signal(self, name: str, signal: str) -> None: ...

    def stop(self, name: str, grace: int | None = None) -> None: ...

    def logs(self, name: str) -> str:
        """What the worker printed, as ``docker logs`` shows it."""
        ...

    def release(self) -> list[str]:
        """What the engine keeps for the batch besides its workers, removed; their names."""
        ...

    def events(self) -> EngineEvents:
        """The events that wake a loop when a worker of the volume starts or ends."""
        ...


ENGINES: Mapping[str, Callable[[str], Engine]] = {"docker": DockerEngine, "swarm": SwarmEngine}


def engine_for(kind: str, volume: str) -> Engine:
    """The engine named ``kind``, for the workers of ``volume``."""
    make = ENGINES.get(kind)
    if make is None:
        raise InvalidInput(f"the engine must be one of {', '.join(ENGINES)}, not {kind!r}")
    return make(volume)
