"""A filtered Docker Engine API for the manager, served by the control plane on a Unix socket.

The manager's agent runs with permissions bypassed, and the Docker socket is root on the host,
so the manager gets this instead (its ``DOCKER_HOST`` names the socket): ``docker ps``,
``inspect``, ``logs`` (``-f`` too), ``wait``, ``stop``, ``kill``, ``top`` and ``stats`` keep working
on its own workers, and everything else is a 403 whose JSON message names the rule that refused
it (the docker CLI prints it as ``Error response from daemon: <message>``). The rules are in
docker_rules.py; this module is the server.

How a request goes:
- its head is read with bounds, and refused if it could be read two ways (http_wire.py); a
  request that asks for an Upgrade (attach, exec, BuildKit's session) is refused;
- its target is accepted only in its plain spelling, and routed (or refused) by method and path;
- its body is read whole, up to 1 MiB (the allowed operations have none);
- a container named in the path (a name, an id, an id prefix) is resolved by asking the engine
  (``GET /containers/{ref}/json``) and checked against the ``WorkerPolicy``; the request then goes
  on with the container's full id in its place, so that the container checked is the one acted on;
- it is rebuilt for the engine (method, target re-encoded, a few plain headers, the body with
  its length) on a connection of its own, and the answer comes back as it arrives: a followed
  log, a stats stream or a long-polled wait is copied piece by piece, never held whole.
  ``GET /containers/json`` is the one answer read whole: it is filtered to the workers.
  ``GET /events`` goes with type=container and the policy's labels forced into its filters, and
  each event is checked again before it is passed on.

A container that exists and is not a worker is a 403 that says so; one that does not exist is
the engine's own 404. That tells the manager whether a name exists, which we accept: names and
ids are not secrets, the 403 names the rule (a 404 would send an agent looking for a worker it
believes gone, or starting another under the same name), and the engine's 404 must stay as it is
for the orchestrator's own "no such container" checks.

Nothing is ever passed on before it is checked, and nothing from the engine is passed on for a
container that is not a worker (the control plane's own container included).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import socketserver
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from . import http_wire as wire
from .docker_rules import (
    CONTAINER,
    EVENTS,
    LIST,
    Refusal,
    Route,
    Target,
    WorkerPolicy,
    container_id,
    hijack_refusal,
    not_ours_refusal,
    parse_target,
    route,
)

__all__ = ["DockerApiFilter", "FilterCounts", "WorkerPolicy"]

MAX_REQUEST_BODY = 1024 * 1024
MAX_ENGINE_DOCUMENT = 64 * 1024 * 1024  # a listing on a busy engine, read whole to be filtered
MAX_EVENT_LINE = 1024 * 1024
CLIENT_TIMEOUT = 300.0  # a client that sends nothing (or reads nothing) for this long is dropped
# What of a refused request's body is read and dropped after the refusal (see _drain).
MAX_DRAIN = 64 * 1024 * 1024
DRAIN_TIMEOUT = 10.0
DEFAULT_MAX_CONNECTIONS = 64
# The client's headers passed on to the engine; the others (credentials, hop-by-hop, Accept-Encoding,
# which would have the engine compress a listing the filter must read) stay here.
_FORWARDED_HEADERS = ("user-agent", "content-type", "accept")

RefusedCallback = Callable[[str, str, str], None]


@dataclass(frozen=True)
class FilterCounts:
    allowed: int
    refused: int


def _printable(text: str, limit: int = 200) -> str:
    """Untrusted text made safe for a log line: short, and control characters shown as escapes."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text[:limit])


class DockerApiFilter:
    """Serve the filtered API on ``socket_path`` (mode ``mode``, group ``group`` if given),
    passing allowed requests to the engine's socket at ``upstream``."""

    def __init__(
        self,
        socket_path: str | Path,
        upstream: str | Path,
        policy: WorkerPolicy,
        *,
        mode: int = 0o660,
        group: int | None = None,
        on_refused: RefusedCallback = lambda method, path, reason: None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ):
        self.socket_path = Path(socket_path)
        self.upstream = str(upstream)
        self.policy = policy
        self.mode = mode
        self.group = group
        self.on_refused = on_refused
        self._slots = threading.BoundedSemaphore(max_connections)
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._allowed = 0
        self._refused = 0
        self._server: _Server | None = None
        self._inode: int | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def counts(self) -> FilterCounts:
        with self._lock:
            return FilterCounts(self._allowed, self._refused)

    def start(self) -> DockerApiFilter:
        self._server = _Server(self, self._bind())
        threading.Thread(target=self._server.serve_forever, args=(0.1,), name="docker-api-filter", daemon=True).start()
        return self

    def _bind(self) -> socket.socket:
        """A listening socket at ``socket_path`` that never had another mode or group: bound
        under a temporary name beside it, given its mode and group, then renamed into place
        (the process's umask, the other way, is shared by every thread of the control plane).
        The socket keeps its first name as its own address: a client's low-level errors show it."""
        path = self.socket_path
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise UserError(f"{path} exists and is not a socket; the Docker API filter will not replace it")
            with socket.socket(socket.AF_UNIX) as probe, contextlib.suppress(OSError):
                probe.connect(str(path))
                raise UserError(f"{path} is in use by another server")
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        if len(os.fsencode(temporary)) >= 108:
            raise UserError(f"the socket path {path} is too long for a Unix socket")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(temporary))
            os.chmod(temporary, self.mode)
            if self.group is not None:
                os.chown(temporary, -1, self.group)
            listener.listen(64)
            os.replace(temporary, path)
        except BaseException:
            listener.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        self._inode = path.stat().st_ino
        return listener

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # wakes the threads that wait on it
        with contextlib.suppress(OSError):
            if self.socket_path.stat().st_ino == self._inode:
                self.socket_path.unlink()

    def __enter__(self) -> DockerApiFilter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- one connection -------------------------------------------------------------------

    def _track(self, sock: socket.socket, add: bool) -> None:
        with self._lock:
            (self._open.add if add else self._open.discard)(sock)
            if add and self._server is None:  # a connection accepted as the filter stopped
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _refuse(self, client: socket.socket, method: str, target: str, status: int, message: str) -> None:
        with self._lock:
            self._refused += 1
        self.on_refused(method, _printable(target), message)
        body = json.dumps({"message": message}).encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))), ("Connection", "close")]
        with contextlib.suppress(OSError):
            client.sendall(wire.encode_head(status, _REASONS.get(status, "Refused"), headers) + body)

    def serve_connection(self, client: socket.socket) -> None:
        client.settimeout(CLIENT_TIMEOUT)
        reader = wire.SocketReader(client)
        self._track(client, True)
        try:
            while True:
                try:
                    request = wire.read_request(reader)
                except wire.WireError as exc:
                    self._refuse(client, "?", "", exc.status, exc.message)
                    return
                if request is None or not self._serve_request(client, reader, request):
                    return
        except (OSError, wire.PeerGone):
            return  # the client went away, was too slow, or the filter is stopping
        finally:
            self._track(client, False)

    def _serve_request(self, client: socket.socket, reader: wire.SocketReader, request: wire.Request) -> bool:
        """Answer one request; whether the connection may carry another."""
        try:
            if request.wants_upgrade:
                raise hijack_refusal()
            target = parse_target(request.target)
            where = route(request.method, target)
            body = wire.read_request_body(reader, request, MAX_REQUEST_BODY)
            if where.kind == CONTAINER:
                resolved = self._resolve(client, where)
                if resolved is None:
                    return False  # the engine's own answer (no such container) went back
                target = target.with_container(resolved)
            if where.kind == EVENTS:
                target = target.with_param("filters", self.policy.event_filters(target.param("filters")))
        except (Refusal, wire.WireError) as exc:
            self._refuse(client, request.method, request.target, exc.status, exc.message)
            if request.chunked or request.content_length:
                _drain(client)
            return False
        with self._lock:
            self._allowed += 1
        return self._forward(client, request, where, target, body)

    def _resolve(self, client: socket.socket, where: Route) -> str | None:
        """The full id of the worker named in the path, or None when the engine's own error
        answer (a 404 for a container that does not exist) was sent back instead."""
        assert where.container is not None
        with self._engine(client) as engine:
            engine.send("GET", f"/containers/{where.container}/json", [], b"")
            head = engine.head()
            document = b"".join(engine.body(head, "GET", MAX_ENGINE_DOCUMENT))
        if head.status != 200:
            self._send_whole(client, head, document, close=True)
            return None
        try:
            inspected: Any = json.loads(document)
        except ValueError:
            raise wire.WireError(502, "the Docker engine's inspect answer is not JSON") from None
        found = container_id(inspected)
        if found is None or not self.policy.owns_inspected(inspected):
            raise not_ours_refusal(where.container)
        return found

    @contextlib.contextmanager
    def _engine(self, client: socket.socket) -> Iterator[_EngineConnection]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._track(sock, True)
        try:
            sock.settimeout(30)
            try:
                sock.connect(self.upstream)
            except OSError:
                raise wire.WireError(502, "the control plane cannot reach the Docker engine") from None
            sock.settimeout(None)  # the answer may take hours (a wait, a followed log): the client is watched
            yield _EngineConnection(sock, client)
        finally:
            self._track(sock, False)
            sock.close()

    def _forward(self, client: socket.socket, request: wire.Request, where: Route, target: Target, body: bytes) -> bool:
        headers = [(k, v) for k, v in request.headers if k.lower() in _FORWARDED_HEADERS]
        try:
            with self._engine(client) as engine:
                engine.send(request.method, target.encode(), headers, body)
                head = engine.head()
                if head.status < 200 or head.status == 101:
                    raise wire.WireError(502, "the Docker engine answered with an interim or switching status")
                if where.kind == LIST:
                    listing = b"".join(engine.body(head, request.method, MAX_ENGINE_DOCUMENT))
                    return self._send_whole(client, head, self._only_workers(head, listing), not request.keep_alive)
                pieces = engine.body(head, request.method, None)
                if where.kind == EVENTS:
                    pieces = self._only_worker_events(pieces)
                return self._stream(client, request, head, pieces)
        except wire.WireError as exc:
            # Only a failure before the answer's head went out comes here: after it, _stream
            # can only end the connection mid-answer, which the client sees as a broken stream.
            self._refuse(client, request.method, request.target, exc.status, exc.message)
            return False

    def _only_workers(self, head: wire.ResponseHead, listing: bytes) -> bytes:
        if head.status != 200:
            return listing
        try:
            entries = json.loads(listing)
        except ValueError:
            raise wire.WireError(502, "the Docker engine's container list is not JSON") from None
        if not isinstance(entries, list):
            raise wire.WireError(502, "the Docker engine's container list is not a list")
        return json.dumps([entry for entry in entries if self.policy.owns_listed(entry)]).encode() + b"\n"

    def _only_worker_events(self, pieces: Iterator[bytes]) -> Iterator[bytes]:
        """The event stream, line by line (the engine writes one JSON event a line), without any
        event that is not a worker's: the engine's filters already drop them, this makes sure."""
        pending = bytearray()
        for piece in pieces:
            pending += piece
            while (end := pending.find(b"\n")) >= 0:
                line = bytes(pending[: end + 1])
                del pending[: end + 1]
                with contextlib.suppress(ValueError):
                    if self.policy.owns_event(json.loads(line)):
                        yield line
            if len(pending) > MAX_EVENT_LINE:
                raise wire.WireError(502, "an event of the Docker engine is too long")

    def _send_whole(self, client: socket.socket, head: wire.ResponseHead, body: bytes, close: bool) -> bool:
        headers = [*head.end_to_end(), ("Content-Length", str(len(body)))]
        if close:
            headers.append(("Connection", "close"))
        client.sendall(wire.encode_head(head.status, head.reason, headers) + body)
        return not close

    def _stream(self, client: socket.socket, request: wire.Request, head: wire.ResponseHead,
                pieces: Iterator[bytes]) -> bool:  # fmt: skip
        """Send the head at once (a wait's comes long before its body), then each piece as it
        arrives: the engine's length kept when it gave one, else chunked (or, to an HTTP/1.0
        client, ended by closing)."""
        headers = head.end_to_end()
        no_body = request.method == "HEAD" or head.status in (204, 304)
        lengths = head.values("content-length")
        chunked = False
        if lengths and (not head.values("transfer-encoding") or no_body):
            headers.append(("Content-Length", lengths[0].strip()))
        elif not no_body and request.keep_alive:
            headers.append(("Transfer-Encoding", "chunked"))
            chunked = True
        keep = request.keep_alive and (chunked or bool(lengths) or no_body)
        if not keep:
            headers.append(("Connection", "close"))
        client.sendall(wire.encode_head(head.status, head.reason, headers))
        try:
            for piece in pieces:
                client.sendall(wire.chunk(piece) if chunked else piece)
        except wire.WireError:
            return False  # the head is gone: closing mid-answer is all that can tell the client
        if chunked:
            client.sendall(wire.LAST_CHUNK)
        return keep


def _drain(client: socket.socket) -> None:
    """Read and drop what is left of a refused request's body, for a while. A client still
    sending (``docker build`` sends its context as it reads it) would otherwise hit a closed
    socket and report a broken pipe instead of the refusal it has not read yet."""
    deadline = time.monotonic() + DRAIN_TIMEOUT
    dropped = 0
    with contextlib.suppress(OSError):
        client.shutdown(socket.SHUT_WR)  # the refusal is complete: the client's reader sees its end
        while dropped < MAX_DRAIN and (left := deadline - time.monotonic()) > 0:
            client.settimeout(left)
            data = client.recv(wire.PIECE)
            if not data:
                return
            dropped += len(data)


class _EngineConnection:
    """One request to the engine on a connection of its own, read while watching the client."""

    def __init__(self, sock: socket.socket, client: socket.socket):
        self.sock = sock
        self.reader = wire.SocketReader(sock, watch=client)

    def send(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes) -> None:
        """The request as the filter rebuilt it, on a connection that carries no other."""
        headers = [*headers, ("Host", "docker"), ("Connection", "close")]
        if body or method in ("POST", "PUT"):
            headers.append(("Content-Length", str(len(body))))
        self.sock.sendall(wire.encode_request(method, target, headers, body))

    def head(self) -> wire.ResponseHead:
        return wire.read_response_head(self.reader)

    def body(self, head: wire.ResponseHead, method: str, limit: int | None) -> Iterator[bytes]:
        total = 0
        for piece in wire.response_body(self.reader, head, method):
            total += len(piece)
            if limit is not None and total > limit:
                raise wire.WireError(502, f"the Docker engine's answer is larger than {limit} bytes")
            yield piece


_REASONS = {400: "Bad Request", 403: "Forbidden", 413: "Content Too Large", 414: "URI Too Long",
            431: "Request Header Fields Too Large", 502: "Bad Gateway", 503: "Service Unavailable"}  # fmt: skip


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """A thread per connection, up to the filter's limit; one more is answered 503 at once."""

    daemon_threads = True

    def __init__(self, owner: DockerApiFilter, listener: socket.socket):
        super().__init__(str(owner.socket_path), _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = listener
        self.owner = owner

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.owner._slots.acquire(blocking=False):
            request.settimeout(5)
            self.owner._refuse(request, "?", "", 503, "too many connections to the control plane's Docker API filter")
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.owner._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.owner._slots.release()


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        self.server.owner.serve_connection(self.request)
