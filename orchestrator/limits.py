"""What one worker container may use: memory, CPUs, processes, disk.

A task may set its own (orch submit --memory ...), a batch its defaults (orch start --memory
..., kept in dispatcher.json), the manager the defaults of everything it starts (run.py's
options, as ORCHESTRATOR_WORKER_*); the first that is set applies.

**Disk.** What the agent may write is bounded by whatever the engine offers:

- a storage driver with quotas (overlay2 on XFS mounted with ``pquota``, btrfs, zfs,
  devicemapper): ``--storage-opt size=DISK`` bounds everything the container writes;
- any other (overlay2 on ext4, the most common): the worker's workspace, where the agent's
  clone, home and temporary folder live (the image links /tmp and /var/tmp there), is a tmpfs
  of that size. A tmpfs is memory: what the agent writes counts in the worker's memory limit, so
  its size is kept below that limit with room left for the runtime to hand the work back and
  write the result, and it is gone once the container stops (a worker killed outright loses
  what its agent had not handed back);
- Swarm jobs (``docker service create`` has no storage option): the tmpfs.

``--disk none`` leaves the workspace in the container's writable layer, unbounded, as Docker
does by default.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from . import environment
from .errors import InvalidInput

MEMORY_PATTERN = re.compile(r"\d+(\.\d+)?[bkmg]?", re.IGNORECASE)
UNBOUNDED = "none"
WORKSPACE = "/workspace"
_UNITS = {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
MIB = 1 << 20
# What the runtime keeps of the worker's memory beside a tmpfs workspace: enough to hand the work
# back and write the result once the agent (the OOM killer's first choice) is gone.
RUNTIME_HEADROOM = 512 * MIB
SMALLEST_WORKSPACE = 64 * MIB


# Docker's own floor for a container's memory limit.
SMALLEST_MEMORY = 6 * MIB


def check_memory(value: object) -> str:
    if not isinstance(value, str) or not MEMORY_PATTERN.fullmatch(value):
        raise InvalidInput(f"memory limit {value!r} is not a size such as 512m or 4g")
    if size_bytes(value) < SMALLEST_MEMORY:
        number = value.rstrip("bB")
        hint = f" (did you mean {number}g?)" if number.replace(".", "").isdigit() else ""
        raise InvalidInput(f"memory limit {value!r} is {size_bytes(value):,} bytes; Docker needs at least 6m{hint}")
    return value


def check_disk(value: object) -> str:
    if value == UNBOUNDED:
        return UNBOUNDED
    if not isinstance(value, str) or not MEMORY_PATTERN.fullmatch(value):
        raise InvalidInput(f"disk limit {value!r} is not a size such as 512m or 20g, or {UNBOUNDED!r}")
    if size_bytes(value) < SMALLEST_WORKSPACE:
        raise InvalidInput(f"disk limit {value!r} is too small: a worker needs at least 64m")
    return value


def size_bytes(text: str) -> int:
    """A size as Docker writes it (512m, 4g, 1.5g, 1048576) in bytes."""
    unit = text[-1].lower()
    number = text[:-1] if unit in _UNITS else text
    return int(float(number) * _UNITS.get(unit, 1))


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
    disk: str = environment.WORKER_DISK.require({})

    @classmethod
    def parse(
        cls, memory: object | None, cpus: object | None, pids: object | None, disk: object | None = None
    ) -> WorkerLimits:
        """From the values given, each one left out taking the project's default."""
        return cls(
            check_memory(memory or environment.WORKER_MEMORY.default),
            check_cpus(cpus or environment.WORKER_CPUS.default),
            check_pids(pids or environment.WORKER_PIDS.default),
            check_disk(disk or environment.WORKER_DISK.default),
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WorkerLimits:
        return cls.parse(
            environment.WORKER_MEMORY.get(env),
            environment.WORKER_CPUS.get(env),
            environment.WORKER_PIDS.get(env),
            environment.WORKER_DISK.get(env),
        )

    def over(
        self, memory: object | None, cpus: object | None, pids: object | None, disk: object | None = None
    ) -> WorkerLimits:
        """These limits, with the values given (those not None) in place of their own."""
        return WorkerLimits.parse(memory or self.memory, cpus or self.cpus, pids or self.pids, disk or self.disk)

    def argv(self) -> list[str]:
        return ["--memory", self.memory, "--cpus", self.cpus, "--pids-limit", str(self.pids)]

    @property
    def bounded(self) -> bool:
        return self.disk != UNBOUNDED

    def workspace_tmpfs_bytes(self) -> int:
        """The size of a tmpfs workspace: the disk limit, kept below the memory limit with the
        runtime's headroom (a tmpfs is memory), and never below the smallest that works."""
        memory = size_bytes(self.memory)
        headroom = min(RUNTIME_HEADROOM, memory // 4)
        return max(SMALLEST_WORKSPACE, min(size_bytes(self.disk), memory - headroom))

    def disk_argv(self, storage_quota: bool) -> list[str]:
        """``docker create`` options that bound what the worker writes (see the module)."""
        if not self.bounded:
            return []
        if storage_quota:
            return ["--storage-opt", f"size={self.disk}"]
        return ["--mount", self.workspace_mount()]

    def workspace_mount(self) -> str:
        """The tmpfs workspace, as ``--mount`` takes it (docker create and docker service create):
        open to all and sticky like /tmp, so that the agent's user makes its own folders there."""
        return f"type=tmpfs,destination={WORKSPACE},tmpfs-size={self.workspace_tmpfs_bytes()},tmpfs-mode=1777"
