"""Where a worker reaches its control plane: its doors, by the name of each service.

- On this engine (``--engine docker``), a folder of Unix sockets (the ``VOLUME-doors`` volume,
  mounted read-only): ``relay.sock``, ``git.sock``, ``egress.sock``. The worker has no network.
- On a swarm (``--engine swarm``), a job may run on another node, where that volume is not: the
  control plane is reached over the batch's internal overlay network (``VOLUME-workers``), by its
  alias there, on one port per service. The network has no way out; the services take only the
  task's tickets, as the sockets do.

Either way, a worker holds no credential: the control plane's services take its tickets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .control.door import Connect, tcp, unix

RELAY = "relay.sock"
GIT = "git.sock"
EGRESS = "egress.sock"
# On a swarm: the control plane's name on the workers' network, and each service's port there.
CONTROL_ALIAS = "orchestrator-control"
PORTS = {RELAY: 7701, GIT: 7702, EGRESS: 7703}


def workers_network(volume: str) -> str:
    """A swarm batch's internal overlay network: its jobs and its control plane, and no way out."""
    return f"{volume}-workers"


@dataclass(frozen=True)
class Doors:
    """A folder of Unix sockets (``folder``), or a host that serves each on its port (``host``)."""

    folder: Path | None = None
    host: str | None = None

    @classmethod
    def parse(cls, given: str) -> Doors:
        """``/run/orchestrator`` (a folder), or ``tcp://HOST`` (a swarm's control plane)."""
        if given.startswith("tcp://"):
            return cls(host=given.removeprefix("tcp://").rstrip("/"))
        return cls(folder=Path(given))

    def connector(self, name: str) -> Connect:
        if self.host is not None:
            return tcp(self.host, PORTS[name])
        assert self.folder is not None
        return unix(self.folder / name)

    def where(self, name: str) -> str:
        """For what a worker says: the socket's path, or HOST:PORT."""
        return (
            f"{self.host}:{PORTS[name]}" if self.host is not None else str(self.folder / name if self.folder else name)
        )

    @property
    def over_network(self) -> bool:
        return self.host is not None
