"""What the fake docker CLI (fakes/docker) recorded, and the containers it answers for."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .paths import SAVED


@dataclass
class FakeDocker:
    log: Path
    containers: Path

    def calls(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def argvs(self) -> list[list[str]]:
        return [call["argv"] for call in self.calls()]

    def find(self, *prefix: str) -> list[dict]:
        return [call for call in self.calls() if call["argv"][: len(prefix)] == list(prefix)]

    def add_container(self, name: str, saved: str) -> None:
        """`docker container inspect NAME` answers with a saved real inspect document."""
        (self.containers / f"{name}.json").write_text((SAVED / saved).read_text())
