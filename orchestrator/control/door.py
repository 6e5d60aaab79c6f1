"""A door between a TCP port and a Unix socket: every connection accepted on one side is joined to
a new connection to the other, and bytes pass both ways until either closes. Nothing is read or
changed on the way.

The manager has no network at all (``--network none``): nothing it runs can reach origin, the API,
the host's services or anything else. Its Claude Code needs the API at an ``http://`` address,
so the manager's entrypoint opens a door on its own loopback to ``relay.sock``, a Unix socket the
control plane serves on the volume the two share; the control plane's door leads from that
socket to its relay, on its own loopback. The relay checks every request (relay.py).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

CHUNK = 65536

Connect = Callable[[], socket.socket]


def tcp(host: str, port: int) -> Connect:
    return lambda: socket.create_connection((host, port), timeout=30)


def unix(path: Path) -> Connect:
    def connect() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(30)
        sock.connect(str(path))
        return sock

    return connect


class Door:
    """Accepts on ``listener`` and joins each connection to one ``connect`` makes."""

    def __init__(self, listener: socket.socket, connect: Connect):
        self.listener = listener
        self.connect = connect
        self._closed = threading.Event()

    def start(self) -> Door:
        threading.Thread(target=self.serve, name="door", daemon=True).start()
        return self

    def serve(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._join, args=(client,), daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(): close alone does not
        with contextlib.suppress(OSError):
            self.listener.close()

    def _join(self, client: socket.socket) -> None:
        try:
            other = self.connect()
        except OSError:
            client.close()  # the other side is not there (yet): the client sees its connection end
            return
        other.settimeout(None)
        client.settimeout(None)
        back = threading.Thread(target=_pump, args=(other, client), daemon=True)
        back.start()
        _pump(client, other)
        back.join()
        for sock in (client, other):
            sock.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Bytes from ``source`` to ``sink`` until ``source`` ends; then ``sink`` is told no more comes."""
    try:
        while data := source.recv(CHUNK):
            sink.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def listen_unix(path: Path, mode: int) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    os.chmod(path, mode)
    sock.listen(64)
    return sock


def listen_tcp(host: str, port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(64)
    return sock


def main(argv: Sequence[str] | None = None) -> int:
    """``python3 -m orchestrator.control.door --fd N --to PATH``: serve a listening TCP socket
    inherited as file descriptor N, each connection joined to the Unix socket PATH, until killed.
    The manager's entrypoint starts it for its Claude Code."""
    parser = argparse.ArgumentParser(prog="door", description=main.__doc__)
    parser.add_argument("--fd", type=int, required=True, help="the listening socket, inherited")
    parser.add_argument("--to", required=True, help="the Unix socket each connection is joined to")
    args = parser.parse_args(argv)
    listener = socket.socket(fileno=args.fd)
    Door(listener, unix(Path(args.to))).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
