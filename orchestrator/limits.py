"""What one worker container may use: memory, CPUs, processes.

A task may set its own (orch submit --memory ...), a batch its defaults (orch start --memory
..., kept in dispatcher.json), the manager the defaults of everything it starts (run.py's
options, as ORCHESTRATOR_WORKER_*); the first that is set applies.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from . import environment
from .errors import InvalidInput

MEMORY_PATTERN = re.compile(r"\d+(\.\d+)?[bkmg]?", re.IGNORECASE)


def check_memory(value: object) -> str:
    if not isinstance(value, str) or not MEMORY_PATTERN.fullmatch(value):
        raise InvalidInput(f"memory limit {value!r} is not a size such as 512m or 4g")
    return value


def check_cpus(value: object) -> str:
    text = str(value)
    try:
        if isinstance(value, bool) or float(text) <= 0:
            raise ValueError
    except ValueError:
        raise InvalidInput(f"CPU limit {value!r} is not a positive number") from None
    return text


def check_pids(value: object) -> int:
    text = str(value)
    if isinstance(value, bool) or not text.isdigit() or int(text) <= 0:
        raise InvalidInput(f"process limit {value!r} is not a positive whole number")
    return int(text)


@dataclass(frozen=True)
class WorkerLimits:
    """What one worker container may use."""

    memory: str
    cpus: str
    pids: int

    @classmethod
    def parse(cls, memory: object | None, cpus: object | None, pids: object | None) -> WorkerLimits:
        """From the values given, each one left out taking the project's default."""
        return cls(
            check_memory(memory or environment.WORKER_MEMORY.default),
            check_cpus(cpus or environment.WORKER_CPUS.default),
            check_pids(pids or environment.WORKER_PIDS.default),
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WorkerLimits:
        return cls.parse(
            environment.WORKER_MEMORY.get(env), environment.WORKER_CPUS.get(env), environment.WORKER_PIDS.get(env)
        )

    def over(self, memory: object | None, cpus: object | None, pids: object | None) -> WorkerLimits:
        """These limits, with the values given (those not None) in place of their own."""
        return WorkerLimits.parse(memory or self.memory, cpus or self.cpus, pids or self.pids)

    def argv(self) -> list[str]:
        return ["--memory", self.memory, "--cpus", self.cpus, "--pids-limit", str(self.pids)]
