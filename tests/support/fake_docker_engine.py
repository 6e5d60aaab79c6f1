"""A stand-in for the Docker engine's API on a Unix socket of the test's own: it answers inspect,
list, logs, wait, stop, kill, top, stats and events as the engine does (20.10, API 1.41), and
records every request that reaches it, so that a test can tell what the filter let through.

Its streams (a followed log, a wait, a stats or event stream) send a first piece, then hold
until the test calls ``release()``: a first piece that reaches the client before then was
passed on as it came. While holding, it notices when the filter closes the connection (``gone``).
"""

from __future__ import annotations

import http.server
import json
import re
import select
import socket
import socketserver
import threading
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.config import LABEL_ROLE, LABEL_VOLUME


@dataclass
class FakeContainer:
    name: str
    id: str
    labels: dict[str, str]
    raw_logs: bool = False  # answer logs as a raw stream ended by closing (no length, no chunks)


@dataclass
class Seen:
    method: str
    path: str  # as it reached the engine, query included
    headers: dict[str, str]
    body: bytes

    @property
    def query(self) -> dict[str, list[str]]:
        return urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)


def frame(stream: int, text: str) -> bytes:
    """One frame of the engine's multiplexed log stream (a non-TTY container)."""
    data = text.encode()
    return bytes([stream, 0, 0, 0]) + len(data).to_bytes(4, "big") + data


@dataclass
class FakeDockerEngine:
    socket_path: Path
    containers: list[FakeContainer]
    seen: list[Seen] = field(default_factory=list)
    released: threading.Event = field(default_factory=threading.Event)
    gone: threading.Event = field(default_factory=threading.Event)
    _server: socketserver.UnixStreamServer | None = None

    def start(self) -> FakeDockerEngine:
        engine = self

        class Handler(_EngineHandler):
            pass

        Handler.engine = engine
        server = _Server(str(self.socket_path), Handler)
        self._server = server
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        self.released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def release(self) -> None:
        self.released.set()

    def find(self, ref: str) -> FakeContainer | None:
        for match in (lambda c: c.id == ref, lambda c: c.name == ref, lambda c: c.id.startswith(ref)):
            found = [c for c in self.containers if match(c)]
            if len(found) == 1:
                return found[0]
        return None

    def paths(self) -> list[str]:
        return [f"{s.method} {s.path}" for s in self.seen]


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


_CONTAINER_PATH = re.compile(r"/containers/([^/]+)/([a-z]+)")


class _EngineHandler(http.server.BaseHTTPRequestHandler):
    engine: FakeDockerEngine
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _record(self) -> tuple[str, dict[str, list[str]]]:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        self.engine.seen.append(Seen(self.command, self.path, dict(self.headers.items()), body))
        parts = urllib.parse.urlsplit(self.path)
        return re.sub(r"^/v[0-9.]+", "", parts.path), urllib.parse.parse_qs(parts.query)

    def do_HEAD(self) -> None:
        self._route()

    def do_GET(self) -> None:
        self._route()

    def do_POST(self) -> None:
        self._route()

    def do_PUT(self) -> None:
        self._route()

    def do_DELETE(self) -> None:
        self._route()

    def _route(self) -> None:
        path, query = self._record()
        if path == "/_ping":
            # A header the engine names in Connection is its connection's own: it must not pass.
            self._send(200, b"OK", "text/plain", [("Api-Version", "1.41"), ("Connection", "X-Engine-Hop"),
                                                  ("X-Engine-Hop", "hop-by-hop")])  # fmt: skip
        elif path == "/version":
            self._json(200, {"Version": "20.10.24", "ApiVersion": "1.41", "MinAPIVersion": "1.12"})
        elif path == "/containers/json":
            listing = [{"Id": c.id, "Names": [f"/{c.name}"], "Labels": c.labels} for c in self.engine.containers]
            self._json(200, listing)
        elif path == "/events":
            self._events()
        elif match := _CONTAINER_PATH.fullmatch(path):
            self._container(match.group(1), match.group(2), query)
        else:
            self._json(200, {"message": "the fake engine answers anything it was not taught with 200"})

    def _container(self, ref: str, action: str, query: dict[str, list[str]]) -> None:
        container = self.engine.find(ref)
        if container is None:
            self._json(404, {"message": f"No such container: {ref}"})
        elif action == "json":
            self._json(200, {"Id": container.id, "Name": f"/{container.name}", "Config": {"Labels": container.labels}})
        elif action == "logs":
            self._logs(container, query.get("follow") == ["1"])
        elif action == "wait":
            self._stream([b'{"Error":null,"StatusCode":0}\n'], first=b"")
        elif action in ("stop", "kill"):
            self._send(204, b"", None)
        elif action == "top":
            self._json(200, {"Titles": ["PID", "CMD"], "Processes": [["1", "sleep"]]})
        elif action == "stats":
            sample = json.dumps({"id": container.id, "memory_stats": {"usage": 1}}).encode() + b"\n"
            if query.get("stream") == ["0"]:
                self._send(200, sample, "application/json")
            else:
                self._stream([sample], first=sample)
        else:
            self._json(200, {})

    def _logs(self, container: FakeContainer, follow: bool) -> None:
        first, rest = frame(1, "line-1\n"), frame(2, "line-2\n") + frame(1, "the end\n")
        if not follow:
            self._send(200, first + rest, "application/vnd.docker.raw-stream")
        elif container.raw_logs:
            self.send_response(200)
            self.send_header("Content-Type", "application/vnd.docker.raw-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(first)
            self.wfile.flush()
            if self._hold():
                self.wfile.write(rest)
            self.close_connection = True
        else:
            self._stream([rest], first=first, content_type="application/vnd.docker.raw-stream")

    def _events(self) -> None:
        def event(kind: str, labels: dict[str, str]) -> bytes:
            return json.dumps({"Type": kind, "Action": "start", "Actor": {"ID": "x", "Attributes": labels}}).encode()

        ours = {c.name: c.labels for c in self.engine.containers}
        lines = [event("container", labels) + b"\n" for labels in ours.values()]
        lines.append(event("network", {LABEL_ROLE: "worker", LABEL_VOLUME: "any"}) + b"\n")
        self._stream(lines, first=b"")

    def _stream(self, rest: list[bytes], *, first: bytes, content_type: str = "application/json") -> None:
        """Chunked, as the engine streams: the head (and ``first``) now, the rest once released."""
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if first:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(first), first))
        self.wfile.flush()
        if not self._hold():
            self.close_connection = True
            return
        for piece in rest:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _hold(self) -> bool:
        """Wait for the test's release; False (and ``gone`` set) when the filter hung up first."""
        while not self.engine.released.wait(0.05):
            readable, _, _ = select.select([self.connection], [], [], 0)
            if readable and not self.connection.recv(1, socket.MSG_PEEK):
                self.engine.gone.set()
                return False
        return True

    def _json(self, status: int, document: object) -> None:
        self._send(status, json.dumps(document).encode() + b"\n", "application/json")

    def _send(self, status: int, body: bytes, content_type: str | None, extra: Sequence[tuple[str, str]] = ()) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        for name, value in extra:
            self.send_header(name, value)
        if status != 204:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
