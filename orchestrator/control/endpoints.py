"""``endpoints.json``: what the control plane tells the manager once it serves it (in the folder
both see, ``/run/orchestrator``). The control plane writes it; the manager's entrypoint reads it.
One format for both, so that neither can look for a field the other no longer writes."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ..store import write_json

ENDPOINTS = "endpoints.json"


@dataclass(frozen=True)
class Endpoints:
    relay_socket: str  # the relay's Unix socket (the manager has no network)
    ticket: str  # what the manager's Claude Code sends the relay instead of a credential
    api_key: bool  # the ticket stands for an API key (else for an OAuth token)
    mirror: str | None  # the mirror of origin the manager's clone borrows from
    resumed: int = 0  # tasks of an earlier run the control plane's dispatcher carries on

    def write(self, folder: Path) -> None:
        write_json(folder / ENDPOINTS, asdict(self))

    @classmethod
    def read(cls, folder: Path) -> Endpoints | None:
        """The endpoints once written whole; None before (or if they make no sense)."""
        try:
            data = json.loads((folder / ENDPOINTS).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict):
            return None
        relay_socket, ticket, mirror = data.get("relay_socket"), data.get("ticket"), data.get("mirror")
        resumed = data.get("resumed")
        if not (isinstance(relay_socket, str) and relay_socket and isinstance(ticket, str) and ticket):
            return None
        return cls(
            relay_socket=relay_socket,
            ticket=ticket,
            api_key=data.get("api_key") is True,
            mirror=mirror if isinstance(mirror, str) and mirror else None,
            resumed=resumed if isinstance(resumed, int) and resumed > 0 else 0,
        )
