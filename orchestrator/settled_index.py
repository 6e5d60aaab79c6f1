"""The settled index's format: one entry per task whose attempt is over (``index/settled-*.json``
on the volume, which store.py reads and writes), so that ``orch status`` and ``orch wait`` read a
finished task's files once."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from .errors import InvalidInput
from .tasks import _STATES, FORMAT_VERSION, State, _field, _require_object


@dataclass(frozen=True, slots=True)
class SettledTask:
    """What ``orch status`` and ``orch wait`` show of a task whose attempt is over: one entry of
    the settled index, taken from its task, status and result files when the result exists."""

    id: str
    state: State
    worker_type: str
    attempt: int
    depends_on: tuple[str, ...] = ()
    started_at: str | None = None
    duration_seconds: float | None = None
    cost_usd: float | None = None
    error: str | None = None
    branch: str | None = None
    pushed: bool | None = None
    batch: str | None = None

    # The JSON types of each field, checked by exact type rather than with _field: an index holds
    # every task the volume ran, and is read by every orch status.
    TYPES: ClassVar[Mapping[str, frozenset[type]]] = {
        "id": frozenset({str}), "state": frozenset({str}), "worker_type": frozenset({str}),
        "attempt": frozenset({int}), "depends_on": frozenset({list}), "started_at": frozenset({str}),
        "duration_seconds": frozenset({int, float}), "cost_usd": frozenset({int, float}),
        "error": frozenset({str}), "branch": frozenset({str}), "pushed": frozenset({bool}),
        "batch": frozenset({str}),
    }  # fmt: skip
    REQUIRED: ClassVar[tuple[str, ...]] = ("id", "state", "worker_type", "attempt")

    @classmethod
    def from_json(cls, data: Any) -> SettledTask:
        if type(data) is not dict:
            raise InvalidInput(f"settled index: an entry is a {type(data).__name__}, not an object")
        for name, value in data.items():
            kinds = cls.TYPES.get(name)
            if kinds is None:
                raise InvalidInput(f"settled index: an entry has the unknown field {name!r}")
            if type(value) not in kinds:
                raise InvalidInput(f"settled index: field {name!r} of an entry has the wrong type")
        for name in cls.REQUIRED:
            if name not in data:
                raise InvalidInput(f"settled index: an entry has no field {name!r}")
        state = _STATES.get(data["state"])
        if state is None:
            raise InvalidInput(f"settled index: field 'state' is {data['state']!r}, not a known state")
        get = data.get
        return cls(
            data["id"], state, data["worker_type"], data["attempt"], tuple(get("depends_on", ())), get("started_at"),
            get("duration_seconds"), get("cost_usd"), get("error"), get("branch"), get("pushed"), get("batch"),
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        """Unset fields are left out: the index holds every task the volume ever ran."""
        data = {name: getattr(self, name) for name in self.TYPES}
        data["state"] = self.state.value
        data["depends_on"] = list(self.depends_on)
        return {name: value for name, value in data.items() if value is not None and value != []}


@dataclass(frozen=True)
class SettledIndex:
    """``index/settled-G.json``, and ``index/settled-G-A.json`` on top of it: every task that has a
    result, as orch shows it, so that orch reads the files of a finished task once.

    A result is written once and changes only through ``orch retry``, which takes the task out of
    the index first. Tasks found settled are added in an additions file over base G, rewritten
    whole as A+1 each time (small); every ADDITIONS_LIMIT of them, or to take tasks out, a new base
    G+1 holds them all. Each change is a new file linked into place, the older ones removed: a
    reader that knows (G, A) knows by listing the folder whether it has the latest, with no room
    for a change it cannot see, and reads the additions alone while the base stays. A damaged
    index is taken for none, and rebuilt from the files."""

    generation: int  # G of a base; A of an additions file
    tasks: Mapping[str, SettledTask]
    base: int | None = None  # the G an additions file adds to

    NAME: ClassVar[re.Pattern[str]] = re.compile(r"settled-(\d+)(?:-(\d+))?\.json")
    ADDITIONS_LIMIT: ClassVar[int] = 256

    @classmethod
    def from_json(cls, data: Any) -> SettledIndex:
        data = _require_object(data, "settled index")
        generation = _field(data, "generation", int, "settled index", required=True)
        base = _field(data, "base", int, "settled index")
        entries = _field(data, "tasks", list, "settled index", required=True)
        tasks = {}
        for entry in entries:
            task = SettledTask.from_json(entry)
            tasks[task.id] = task
        return cls(generation, tasks, base)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"generation": self.generation}
        if self.base is not None:
            data["base"] = self.base
        return {**data, "tasks": [task.to_json() for task in self.tasks.values()], "format_version": FORMAT_VERSION}
