"""A swarm batch's doors (``--engine swarm``): the control plane's services, on the batch's
internal overlay network.

A swarm job may run on another node, where neither the doors' volume nor the mirror's is. So the
control plane joins an overlay network of the batch's own (``VOLUME-workers``: ``--internal``,
no way out of it; attachable, so that a container may join), under the alias its jobs know
(doors.CONTROL_ALIAS), and serves there, on its address in that network alone, what it serves its
local workers as Unix sockets: the relay, the git channel (which also hands a job a copy of the
mirror) and the egress proxy. Each port is a door (door.py) to the same service, which takes the
task's tickets as it does on the sockets: a job holds no credential, and has no other way out.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path

from .. import config
from ..docker import DockerError, docker, labels, text
from ..doors import CONTROL_ALIAS, EGRESS, GIT, PORTS, RELAY, workers_network
from ..errors import UserError
from .dns import NullDns
from .door import Door, listen_tcp, tcp, unix

JOIN_TIMEOUT = 30.0  # until the control plane's address on the network shows
DNS_PORT = 53  # what --dns names: the control plane binds it (run.py lowers its unprivileged ports to 53)


def ensure_network(volume: str) -> str:
    """The batch's workers' network, made once (a swarm's manager node makes an overlay network)."""
    name = workers_network(volume)
    if docker("network", "inspect", name, check=False, timeout=60).returncode == 0:
        return name
    try:
        docker("network", "create", "--driver", "overlay", "--attachable", "--internal",
               *labels({config.LABEL_VOLUME: volume}), name, timeout=120)  # fmt: skip
    except DockerError as exc:
        if "already exists" not in exc.stderr:
            raise UserError(f"cannot make the workers' network {name}: {exc.stderr.strip()}") from None
    return name


def join(network: str, container: str) -> str:
    """The control plane on the network, under its alias; its address there."""
    proc = docker("network", "connect", "--alias", CONTROL_ALIAS, network, container, check=False, timeout=60)
    said = (proc.stderr or b"").decode(errors="replace")
    if proc.returncode and "already exists" not in said:  # a restarted control plane is still on it
        raise UserError(f"the control plane cannot join the workers' network {network}: {said.strip()}")
    deadline = time.monotonic() + JOIN_TIMEOUT
    while True:
        found = json.loads(text(docker("inspect", "--format", "{{json .NetworkSettings.Networks}}", container,
                                       timeout=60)) or "{}")  # fmt: skip
        address = ((found or {}).get(network) or {}).get("IPAddress")
        if address:
            return str(address)
        if time.monotonic() > deadline:
            raise UserError(f"the control plane has no address on {network} after {JOIN_TIMEOUT:.0f} s")
        time.sleep(0.5)


def join_network(volume: str, container: str) -> str:
    """The control plane on its jobs' network; its address there."""
    return join(ensure_network(volume), container)


def serve(address: str, relay_port: int, doors_dir: Path, say: Callable[[str], None]) -> list[Door | NullDns]:
    """The relay, the git channel and the egress proxy, on the control plane's address in the
    workers' network; and a name server there that resolves nothing (dns.py), which the jobs are
    given (``--dns``): the network's embedded DNS answers the names of its own containers (the
    control plane's alias) and forwards every other name to it, so that no name a job looks up
    leaves the machine."""
    targets = {
        RELAY: tcp("127.0.0.1", relay_port),
        GIT: unix(doors_dir / GIT),
        EGRESS: unix(doors_dir / EGRESS),
    }
    served: list[Door | NullDns] = [Door(_listen(address, PORTS[name]), connect).start()
                                    for name, connect in targets.items()]  # fmt: skip
    served.append(NullDns(address, DNS_PORT, record=lambda query: say(
        f"dns: {query.answer} to {query.client} for {query.name} ({query.qtype}): a job resolves nothing"
    )).start())  # fmt: skip
    say(f"serving swarm workers as {CONTROL_ALIAS} ({address}): relay :{PORTS[RELAY]}, git :{PORTS[GIT]}, "
        f"egress :{PORTS[EGRESS]}, a name server that resolves nothing :{DNS_PORT}")  # fmt: skip
    return served


def _listen(address: str, port: int) -> socket.socket:
    deadline = time.monotonic() + JOIN_TIMEOUT
    while True:
        try:
            return listen_tcp(address, port)
        except OSError:
            if time.monotonic() > deadline:  # the interface not there yet, or the port taken
                raise
            time.sleep(0.5)
