"""What ``orch status`` says of a task's connections through the egress proxy: the counts the
control plane keeps next to its records (control/egress_service.py), in ``egress/`` on the
shared volume."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import InvalidInput
from .store import OrchestrationDir

FOLDER = "egress"  # on the shared volume: TASK.jsonl (the records) and TASK.counts.json


@dataclass(frozen=True)
class EgressCounts:
    """``egress/TASK.counts.json``: every connection of the task, allowed or refused."""

    allowed: int = 0
    refused: int = 0
    unlogged: int = 0  # past MAX_LOG_BYTES: counted, not written

    @classmethod
    def from_json(cls, data: object) -> EgressCounts:
        if not isinstance(data, dict):
            raise InvalidInput("egress counts: not an object")
        values = {name: data.get(name, 0) for name in ("allowed", "refused", "unlogged")}
        for name, value in values.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidInput(f"egress counts: field {name!r} is not a count")
        return cls(**values)

    def to_json(self) -> dict[str, int]:
        return {"allowed": self.allowed, "refused": self.refused, "unlogged": self.unlogged}


def counts_of(orch: OrchestrationDir, task_id: str) -> EgressCounts | None:
    """A task's counts, None when its worker made no connection (or the file cannot be read)."""
    try:
        data = json.loads((orch.root / FOLDER / f"{task_id}.counts.json").read_text(encoding="utf-8"))
        return EgressCounts.from_json(data)
    except (OSError, ValueError):
        return None


SHOWN_RECORDS = 500  # the latest connections a look shows (the board's task page)
_READ_BYTES = 512 * 1024
_SHOWN_FIELDS = ("time", "method", "host", "port", "decision", "reason", "bytes_up", "bytes_down")


def records_of(orch: OrchestrationDir, task_id: str, limit: int = SHOWN_RECORDS) -> list[Mapping[str, Any]]:
    """A task's latest connection records (``egress/TASK.jsonl``, written by the control plane),
    oldest first: what each was (host, port, decision, reason, bytes), never more than ``limit``
    nor read past the file's last 512 KiB. A line that cannot be read is left out."""
    path = orch.root / FOLDER / f"{task_id}.jsonl"
    try:
        with open(path, "rb") as records:
            size = records.seek(0, 2)
            records.seek(max(0, size - _READ_BYTES))
            tail = records.read(_READ_BYTES)
    except OSError:
        return []
    lines = tail.split(b"\n")
    if size > _READ_BYTES:
        lines = lines[1:]  # the first may be cut
    found: list[Mapping[str, Any]] = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            found.append({name: record.get(name) for name in _SHOWN_FIELDS})
    return found[-limit:]
