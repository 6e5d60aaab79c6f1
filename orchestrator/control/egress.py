"""The egress proxy: a worker's only way to the internet besides the API relay and the git
channel, and only to the hosts of its task's policy (see ``egress_policy``).

Workers sit on an internal network with no route out; their environment names this proxy
(``HTTP_PROXY``, ``HTTPS_PROXY``; see ``egress_tickets.proxy_environment``), so that curl, git over HTTPS, pip,
npm and pub go through it. It takes ``CONNECT host:port`` (TLS, passed through untouched) and
plain HTTP requests with an absolute URI, checks the target against the task's policy,
resolves a name once, refuses any address that is not public, and connects to the address it
checked, never looking the name up again. Every connection ends in one ``EgressRecord``.

**Who is asking.** A client proves its task with credentials in the proxy URL
(``http://TASK:TICKET@proxy:3128``, which clients send as ``Proxy-Authorization: Basic``), and
``identify`` (the control plane's check: ``egress_tickets.ProxyTickets``) names the task or refuses.
The source address alone is not enough on a network that several tasks' workers share:
a container that keeps CAP_NET_RAW (Docker's default) can claim a neighbour's address (ARP);
an address is handed to the next container as soon as a worker ends, so a connection could be
taken for the task that had it before; and the control plane would have to learn each address
from the engine before the worker's first connection. On a network of the task's own, the
address does say which task is asking; ``identify`` receives it too, and ``ProxyTickets`` can
require both (``issue(task, networks=...)``). The ticket gives nothing but that task's policy.

**Bounds.** One thread per connection, at most ``max_connections`` of them: a connection past
that, or past ``max_per_address`` from one address, is answered at once and closed, without a
thread. An identified task has at most ``max_per_client`` connections. A request head must
come whole within ``head_timeout`` and ``max_head_bytes``; a connection with no traffic for
``idle_timeout`` is closed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Literal

from . import egress_http as http
from .egress_http import BadMessage, PeerClosed, Refusal, Stream, Target
from .egress_policy import Address, Policy, forbidden
from .egress_tunnel import pump

log = logging.getLogger(__name__)

Identify = Callable[[tuple[str, int], str | None], str | None]
PolicyFor = Callable[[str], Policy | None]
Resolve = Callable[[str, int], list[Address]]


@dataclass(frozen=True)
class EgressRecord:
    """One connection through the proxy, allowed or refused. ``decision`` is ``allowed`` when
    the proxy connected to a server (``reason`` then says how the connection ended), ``refused``
    when it did not (the policy, the address, a bad request, or a server out of reach)."""

    time: float  # when the connection was accepted (seconds since the epoch)
    task: str | None  # None: the client was not identified
    client: str  # the client's address
    method: str
    host: str  # as the request named it (normalised once parsed), for the record only
    port: int | None
    address: str | None  # the address connected to, or the one refused
    decision: Literal["allowed", "refused"]
    reason: str
    bytes_up: int  # client to server
    bytes_down: int  # server to client
    duration: float  # seconds

    def to_json(self) -> str:
        document = asdict(self)
        document["time"] = datetime.fromtimestamp(self.time, UTC).isoformat(timespec="milliseconds")
        document["duration"] = round(self.duration, 3)
        return json.dumps(document)


@dataclass(frozen=True)
class ProxySettings:
    max_head_bytes: int = 32768
    head_timeout: float = 10.0  # for the whole request head
    idle_timeout: float = 300.0  # no byte either way for this long ends a connection
    connect_timeout: float = 10.0
    max_connections: int = 256  # threads, for all clients together
    max_per_address: int = 64  # connections from one address, counted before anything is read
    max_per_client: int = 32  # connections of one identified task


def resolve_name(name: str, port: int) -> list[Address]:
    """The addresses of ``name``, in the resolver's order, each once. Raises ``OSError``."""
    found: list[Address] = []
    for *_, sockaddr in socket.getaddrinfo(name, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP):
        address = ipaddress.ip_address(sockaddr[0])
        if address not in found:
            found.append(address)
    return found


class EgressProxy:
    """The proxy on (``host``, ``port``), served from a thread of its own once started."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        identify: Identify,
        policy_for: PolicyFor,
        record: Callable[[EgressRecord], None],
        settings: ProxySettings | None = None,
        resolve: Resolve = resolve_name,
    ):
        self.identify = identify
        self.policy_for = policy_for
        self._record = record
        self.settings = settings or ProxySettings()
        self.resolve = resolve
        self._bind = (host, port)
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._open = 0
        self._per_address: Counter[str] = Counter()
        self._per_task: Counter[str] = Counter()
        self._sockets: set[socket.socket] = set()

    @property
    def address(self) -> tuple[str, int]:
        assert self._listener is not None, "the proxy is not started"
        host, port = self._listener.getsockname()[:2]
        return host, port

    @property
    def open_connections(self) -> int:
        with self._lock:
            return self._open

    def start(self) -> EgressProxy:
        host, port = self._bind
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.create_server((host, port), family=family, backlog=128)
        self._thread = threading.Thread(target=self._accept_loop, name="egress-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, and end every open connection."""
        self._stopping.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
            self._listener.close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> EgressProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def record(self, entry: EgressRecord) -> None:
        try:
            self._record(entry)
        except Exception:
            log.exception("the egress record could not be kept: %s", entry.to_json())

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                sock, client = self._listener.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                log.exception("the egress proxy cannot accept a connection")
                self._stopping.wait(0.1)  # out of file descriptors: let connections end first
                continue
            self._admit(sock, client[:2])

    def _admit(self, sock: socket.socket, client: tuple[str, int]) -> None:
        """Give the connection a thread, or refuse it at once when the proxy or its address
        has all the connections it may have."""
        settings, ip = self.settings, client[0]
        with self._lock:
            if self._open >= settings.max_connections:
                status, reason = 503, f"the proxy has {settings.max_connections} connections open, its limit"
            elif self._per_address[ip] >= settings.max_per_address:
                status, reason = 429, f"{ip} has {settings.max_per_address} connections open, the limit per address"
            else:
                status, reason = 0, ""
                self._open += 1
                self._per_address[ip] += 1
                self._sockets.add(sock)
        if status:
            # No thread for this one: the answer fits in the socket's buffer, and only what
            # has already come is read, so that a client that sends and reads nothing costs
            # no wait.
            sock.setblocking(False)
            _Connection(self, sock, client).refuse(Refusal(status, reason), linger=0)
            sock.close()
            return
        try:
            threading.Thread(target=self._serve, args=(sock, client), name="egress-connection", daemon=True).start()
        except RuntimeError:
            log.exception("the egress proxy cannot start a thread")
            self._release(sock, client)
            sock.close()

    def _release(self, sock: socket.socket, client: tuple[str, int]) -> None:
        with self._lock:
            self._open -= 1
            self._per_address[client[0]] -= 1
            if not self._per_address[client[0]]:
                del self._per_address[client[0]]
            self._sockets.discard(sock)

    def _serve(self, sock: socket.socket, client: tuple[str, int]) -> None:
        connection = _Connection(self, sock, client)
        try:
            connection.run()
        finally:
            self._release(sock, client)
            connection.close()

    @contextlib.contextmanager
    def task_slot(self, task: str) -> Iterator[None]:
        limit = self.settings.max_per_client
        with self._lock:
            if self._per_task[task] >= limit:
                raise Refusal(429, f"the task has {limit} connections open, its limit")
            self._per_task[task] += 1
        try:
            yield
        finally:
            with self._lock:
                self._per_task[task] -= 1
                if not self._per_task[task]:
                    del self._per_task[task]

    def track(self, sock: socket.socket, add: bool) -> None:
        with self._lock:
            if add and not self._stopping.is_set():
                self._sockets.add(sock)
            elif add:
                raise OSError("the proxy is stopping")
            else:
                self._sockets.discard(sock)


@dataclass
class _Connection:
    """One client connection: what it asked, what was decided, and what went through."""

    proxy: EgressProxy
    sock: socket.socket
    client: tuple[str, int]
    started: float = field(default_factory=time.monotonic)
    when: float = field(default_factory=time.time)
    task: str | None = None
    method: str = ""
    host: str = ""
    port: int | None = None
    address: str | None = None
    up: int = 0
    down: int = 0
    upstream: socket.socket | None = None

    def run(self) -> None:
        try:
            ending = self._handle()
        except Refusal as refusal:
            self.refuse(refusal)
            return
        except PeerClosed:
            ending = "the client closed before its request was whole"
        except (BadMessage, OSError) as exc:
            ending = f"{type(exc).__name__}: {exc}"
        except Exception as exc:
            log.exception("the egress proxy failed on a connection")
            ending = f"the proxy failed: {type(exc).__name__}"
        decision: Literal["allowed", "refused"] = "allowed" if self.upstream is not None else "refused"
        self._record(decision, ending)

    def _record(self, decision: Literal["allowed", "refused"], reason: str) -> None:
        self.proxy.record(EgressRecord(
            time=self.when, task=self.task, client=_show_address(self.client), method=self.method[:20],
            host=self.host, port=self.port, address=self.address, decision=decision, reason=reason,
            bytes_up=self.up, bytes_down=self.down, duration=time.monotonic() - self.started,
        ))  # fmt: skip

    def refuse(self, refusal: Refusal, *, linger: float = 2.0) -> None:
        """Record the refusal, then tell the client (if it still listens)."""
        self._record("refused", refusal.reason)
        challenge = [("Proxy-Authenticate", 'Basic realm="egress"')] if refusal.status == 407 else []
        with contextlib.suppress(OSError):
            self.sock.sendall(http.error_answer(refusal.status, refusal.reason, challenge))
            self.sock.shutdown(socket.SHUT_WR)
            _drain(self.sock, linger)

    def close(self) -> None:
        for sock in (self.sock, self.upstream):
            if sock is not None:
                self.proxy.track(sock, add=False)
                sock.close()

    def _handle(self) -> str:
        settings = self.proxy.settings
        stream = Stream(self.sock)
        try:
            raw = stream.read_head(settings.max_head_bytes, deadline=self.started + settings.head_timeout,
                                   timeout=settings.head_timeout)  # fmt: skip
            head = http.parse_head(raw, request=True)
        except TimeoutError:
            raise Refusal(408, f"no whole request head within {settings.head_timeout:g} s") from None
        except BadMessage as exc:
            status = 431 if "longer" in str(exc) else 400
            raise Refusal(status, f"a malformed request: {exc}") from None
        self.method, target_text, _ = head.first
        self.host = target_text[:255]
        # The target is read before the client is identified, so that the record of an unknown
        # client says what it wanted; the client hears nothing of it before it is identified.
        target: Target | Refusal
        try:
            if self.method == "CONNECT":
                target = http.parse_connect_target(target_text)
            else:
                target = http.parse_absolute_target(target_text)
            self.host, self.port = str(target.host), target.port
        except Refusal as refusal:
            target = refusal
        try:
            credentials = head.single("proxy-authorization")
        except BadMessage as exc:
            raise Refusal(400, str(exc)) from None
        self.task = self.proxy.identify(self.client, credentials)
        if self.task is None:
            what = "no" if credentials is None else "unknown"
            raise Refusal(407, f"{what} proxy credentials: the proxy URL names the task and its ticket")
        if isinstance(target, Refusal):
            raise target
        with self.proxy.task_slot(self.task):
            return self._go(head, target, stream)

    def _go(self, head: http.Head, target: Target, stream: Stream) -> str:
        try:
            if not http.same_host(head, target):
                raise Refusal(400, f"the Host header names another host than the target {target.authority}")
            framing = ("length", 0) if self.method == "CONNECT" else http.body_framing(head, request=True)
            expect_continue = "100-continue" in (head.single("expect") or "").lower()
        except BadMessage as exc:
            raise Refusal(400, f"a malformed request: {exc}") from None
        policy = self.proxy.policy_for(self.task or "")
        if policy is None:
            raise Refusal(403, "the task has no egress policy")
        if reason := policy.refusal(target.host, target.port):
            raise Refusal(403, reason)
        addresses = self._addresses(target)
        self.upstream = self._connect(addresses, target.port)
        settings = self.proxy.settings
        if self.method == "CONNECT":
            self.sock.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self.up, self.down, ending = pump(self.sock, self.upstream, bytes(stream.buffer), settings.idle_timeout)
        else:
            ending = self._forward(head, target, framing, stream, expect_continue)
        return f"policy {policy.name}: {ending}"

    def _addresses(self, target: Target) -> list[Address]:
        """The addresses to connect to, each checked; a name is resolved here, once."""
        if not isinstance(target.host, str):
            self.address = str(target.host)
            return [target.host]  # the policy matched this address as listed, or as public under 'open'
        try:
            addresses = self.proxy.resolve(target.host, target.port)
        except OSError as exc:
            raise Refusal(502, f"cannot resolve {target.host}: {exc.strerror or exc}") from None
        if not addresses:
            raise Refusal(502, f"{target.host} has no address")
        for address in addresses:
            if kind := forbidden(address):
                self.address = str(address)
                raise Refusal(403, f"{target.host} resolves to {address}, {kind}")
        return addresses

    def _connect(self, addresses: Sequence[Address], port: int) -> socket.socket:
        """A connection to the first of ``addresses`` that answers (addresses, never a name:
        no second lookup)."""
        failure = ""
        for address in addresses:
            self.address = str(address)
            family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                self.proxy.track(sock, add=True)
                sock.settimeout(self.proxy.settings.connect_timeout)
                sock.connect((str(address), port))
                return sock
            except OSError as exc:
                failure = exc.strerror or str(exc)
                self.proxy.track(sock, add=False)
                sock.close()
        raise Refusal(502, f"cannot connect to {self.address} port {port}: {failure}")

    def _forward(
        self, head: http.Head, target: Target, framing: tuple[str, int], stream: Stream, expect_continue: bool
    ) -> str:
        """One plain HTTP request to the server and its answer back, each streamed; then the
        connection closes. A redirect goes back to the client like any answer: its next request
        is checked like any other."""
        assert self.upstream is not None
        timeout = self.proxy.settings.idle_timeout
        headers = [("Host", _host_header(target)), *head.end_to_end(), ("Connection", "close")]
        if framing[0] == "chunked":
            headers.append(("Transfer-Encoding", "chunked"))
        elif framing[1] or self.method in ("POST", "PUT", "PATCH"):
            headers.append(("Content-Length", str(framing[1])))
        request_head = http.encode_head(f"{self.method} {target.path} HTTP/1.1", headers)
        self.upstream.settimeout(timeout)
        self.sock.settimeout(timeout)
        self.upstream.sendall(request_head)
        self.up = len(request_head)
        if expect_continue:
            self.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")  # the proxy lets the body come; the server is not asked
        self.up += http.copy_body(stream, framing, self.upstream.sendall, timeout=timeout)

        answer = Stream(self.upstream)
        try:
            while True:
                response = http.parse_head(
                    answer.read_head(self.proxy.settings.max_head_bytes * 2, deadline=None, timeout=timeout),
                    request=False,
                )
                status = int(response.first[1])
                if status == 101:
                    raise BadMessage("the server switched protocols, which the proxy does not carry")
                if status >= 200:
                    break  # interim answers (1xx) are not passed on: the proxy answered 100 itself
            bodiless = self.method == "HEAD" or status in (204, 304)
            reply_framing = ("length", 0) if bodiless else http.body_framing(response, request=False)
        except (BadMessage, PeerClosed) as exc:
            self._answer_bad_gateway(f"the server's answer is not usable HTTP: {exc}")
            return f"bad answer from the server: {exc}"
        out = [*response.end_to_end(), ("Connection", "close")]
        if bodiless:
            out += [("Content-Length", value) for value in response.values("content-length")[:1]]
        elif reply_framing[0] == "chunked":
            out.append(("Transfer-Encoding", "chunked"))
        elif reply_framing[0] == "length":
            out.append(("Content-Length", str(reply_framing[1])))
        reply_head = http.encode_head(f"HTTP/1.1 {status} {response.first[2]}".rstrip(), out)
        self.sock.sendall(reply_head)
        self.down = len(reply_head)
        self.down += http.copy_body(answer, reply_framing, self.sock.sendall, timeout=timeout)
        return f"answered {status}"

    def _answer_bad_gateway(self, reason: str) -> None:
        answer = http.error_answer(502, reason)
        with contextlib.suppress(OSError):
            self.sock.sendall(answer)
            self.down += len(answer)


def _drain(sock: socket.socket, linger: float) -> None:
    """Read what the client sent beyond what the proxy read, for up to ``linger`` seconds (or
    its end): a socket closed with unread data sends a reset, and a reset can destroy the
    answer before the client has read it."""
    deadline = time.monotonic() + linger
    for _ in range(16):  # at most 1 MiB
        remaining = deadline - time.monotonic()
        if linger:
            sock.settimeout(max(remaining, 0.001))
        try:
            if not sock.recv(http.PIECE) or remaining <= 0:
                return
        except (BlockingIOError, TimeoutError):
            return


def _host_header(target: Target) -> str:
    return target.authority.removesuffix(":80")


def _show_address(address: tuple[str, int]) -> str:
    host, port = address[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
