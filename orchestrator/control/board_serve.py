"""The board as the control plane serves it, on a port run.py publishes on the host's loopback
(``run.py --dashboard-port``), and its login secret.

Where it listens. On a Docker network, ``-p 127.0.0.1:PORT:PORT`` forwards the host's loopback
port to the container's own address (a connection to the container's loopback would never come
from the host): the board listens on every address of the container, and takes connections from
the host alone, which reaches it from the network's gateway (Docker's proxy, or its NAT, both
connect from there). The workers sit on the same network at other addresses, and are refused
before a byte is read. On the host's network (``--network host``) it listens on 127.0.0.1 itself.
Either way the browser's ``Host`` and ``Origin`` must be ``127.0.0.1:PORT`` (dashboard.py).

The secret. Made here once and kept in the control plane's home (a file only its user reads, in
the container's own filesystem, which no agent mounts): a control plane the engine restarts
keeps it, so the link run.py printed still logs in. It is printed by ``orch dashboard --login``
run on the host (``docker exec NAME-control orch dashboard --login``, which run.py does once the
control plane serves) and never by the control plane itself, nor to the manager: the manager's
``orch`` runs in the control plane too, and the control plane's policy refuses it ``--login``.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import environment
from ..context import Context
from ..engine_events import EngineEvents
from ..errors import EXIT_OK, UserError
from ..store import write_atomic
from .board_backend import BatchBoard
from .dashboard import Dashboard

SECRET_FILE = ".board-secret"  # in the control plane's home
ROUTES = Path("/proc/net/route")
ANY_ADDRESS = "0.0.0.0"


def board_address(port: int) -> str:
    return f"http://127.0.0.1:{port}/"


def login_url(port: int, secret: str) -> str:
    """The link that logs in: the secret in the fragment, which the browser never sends."""
    return f"http://127.0.0.1:{port}/login#{secret}"


def read_secret(home: Path) -> str | None:
    try:
        found = (home / SECRET_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return found or None


def board_secret(home: Path) -> str:
    """The board's secret, made on first use and kept (readable by the control plane's user alone)."""
    found = read_secret(home)
    if found is None:
        found = secrets.token_urlsafe(32)
        write_atomic(home / SECRET_FILE, found + "\n", mode=0o600)
    return found


def gateways(routes: str) -> frozenset[str]:
    """The gateways of ``/proc/net/route`` (where the host reaches a container from)."""
    found = set()
    for line in routes.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3 and fields[2] != "00000000":
            try:
                found.add(socket.inet_ntoa(int(fields[2], 16).to_bytes(4, "little")))
            except (ValueError, OverflowError):
                continue
    return frozenset(found)


def host_only(gateways: frozenset[str]) -> Callable[[str], bool]:
    """The peers the board takes: the gateways of the container's network (the host), and its
    own loopback (`docker exec` in it)."""

    def allowed(peer: str) -> bool:
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return address.is_loopback or str(address) in gateways

    return allowed


@dataclass(frozen=True)
class ServedBoard:
    dashboard: Dashboard
    events: EngineEvents  # what the board's looks at the engine follow

    def stop(self) -> None:
        self.dashboard.stop()
        self.events.close()


def serve_board(
    ctx: Context, port: int, home: Path, repos: Sequence[Path], clone: Path | None, *, host_network: bool
) -> ServedBoard:
    """Start the board of ``ctx``'s batch on ``port``."""
    events = ctx.engine.events().start()
    backend = BatchBoard(ctx, repos, clone, events=events)
    secret = board_secret(home)
    try:
        if host_network:
            board = Dashboard(backend, "127.0.0.1", port, secret)
        else:
            try:
                routes = ROUTES.read_text(encoding="ascii")
            except OSError:
                routes = ""
            found = gateways(routes)
            if not found:
                raise UserError("the control plane cannot tell its network's gateway (/proc/net/route): no board")
            board = Dashboard(backend, "127.0.0.1", port, secret, bind=ANY_ADDRESS, peer_allowed=host_only(found))
    except BaseException:
        events.close()
        raise
    return ServedBoard(board.start(), events)


def show_board(ctx: Context, *, login: bool) -> int:
    """``orch dashboard``: where the board is; with ``login``, its login link (the secret's)."""
    if not environment.DASHBOARD_PORT.get(ctx.env):
        raise UserError(
            "no board here: the control plane serves it, on the port run.py publishes (run.py --dashboard-port; "
            "the original layout, --manager-docker-socket, has none)"
        )
    port = environment.DASHBOARD_PORT.whole_number(ctx.env)
    if not login:
        print(board_address(port))
        name = environment.CONTROL_NAME.get(ctx.env) or "NAME-control"
        print(f"its login link holds its secret, which is the person's: run.py printed it; on the host, "
              f"`docker exec {name} orch dashboard --login` prints it again", file=sys.stderr)  # fmt: skip
        return EXIT_OK
    secret = read_secret(Path(ctx.env.get("HOME") or Path.home()))
    if secret is None:
        raise UserError("the board has not started (yet): it has no secret")
    print(login_url(port, secret))
    return EXIT_OK
