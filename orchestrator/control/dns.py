"""A DNS server that resolves nothing: every query is answered NXDOMAIN, and recorded.

Workers are started with ``--dns`` naming this server, so that the engine's embedded DNS
(127.0.0.11 in each container) answers the names of the network's own containers and forwards
every other name here, and nowhere else. A query never leaves the machine: a name outside the
policy cannot carry data to a resolver the agent controls (``<secret>.attacker.example``),
and the agent does not need DNS at all, since the egress proxy resolves the names it allows.

NXDOMAIN rather than REFUSED: NXDOMAIN is the answer every resolver takes as final, so a
client fails at once ("Could not resolve host"; glibc's EAI_NONAME) and the tool stops. With
REFUSED, glibc first tries each of its other servers and then reports a failure of the
resolver rather than of the name; and Docker's embedded DNS, which stands between the worker
and this server, may turn REFUSED into SERVFAIL (what it does with either has changed between
versions), which glibc reports as a temporary failure (EAI_AGAIN), the kind pip, npm and git
retry with growing pauses, spending the task's time for nothing. NXDOMAIN goes through the
embedded DNS as it is.

Only the header and the first question are read, just enough to answer and record: a packet
that is not a query with exactly one well-formed question is dropped without an answer (and
counted in ``dropped``); a query whose opcode is not QUERY gets NOTIMP. An answer is never
bigger than its query (no EDNS, no records), so the server cannot amplify a spoofed request.
"""

from __future__ import annotations

import contextlib
import json
import logging
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Literal

log = logging.getLogger(__name__)

NXDOMAIN = 3
NOTIMP = 4
_HEADER = struct.Struct("!HHHHHH")
_QR = 0x8000
_OPCODE = 0x7800
_RD = 0x0100
MAX_NAME = 255  # RFC 1035, 3.1: the whole name in wire form
MAX_PACKET = 65535
TCP_QUERIES = 32  # per TCP connection
TYPE_NAMES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV",
              64: "SVCB", 65: "HTTPS", 255: "ANY"}  # fmt: skip
_PLAIN = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


@dataclass(frozen=True)
class DnsQuery:
    """One query, as it was asked. ``name`` is escaped as dig shows names (``\\DDD`` for any
    byte but letters, digits, '-' and '_'), so that whatever bytes a label holds stay text."""

    time: float
    client: str
    transport: Literal["udp", "tcp"]
    name: str
    qtype: str
    answer: str  # NXDOMAIN or NOTIMP

    def to_json(self) -> str:
        document = asdict(self)
        document["time"] = datetime.fromtimestamp(self.time, UTC).isoformat(timespec="milliseconds")
        return json.dumps(document)


@dataclass(frozen=True)
class Question:
    id: int
    flags: int
    name: str
    qtype: int
    wire: bytes  # the question section as sent, echoed in the answer


def parse_query(packet: bytes) -> Question | None:
    """The header and the first question of a query, or None for anything else."""
    if len(packet) < _HEADER.size:
        return None
    ident, flags, qdcount, _, _, _ = _HEADER.unpack_from(packet)
    if flags & _QR or qdcount != 1:
        return None
    labels: list[str] = []
    offset, length = _HEADER.size, 0
    while True:
        if offset >= len(packet):
            return None
        size = packet[offset]
        if size & 0xC0:
            return None  # a compression pointer (or a reserved label type): not in a query's question
        length += size + 1
        if length > MAX_NAME or offset + 1 + size > len(packet):
            return None
        if size == 0:
            offset += 1
            break
        labels.append(_show_label(packet[offset + 1 : offset + 1 + size]))
        offset += 1 + size
    if offset + 4 > len(packet):
        return None
    qtype = int.from_bytes(packet[offset : offset + 2], "big")
    return Question(ident, flags, ".".join(labels) or ".", qtype, packet[_HEADER.size : offset + 4])


def _show_label(label: bytes) -> str:
    return "".join(chr(byte) if byte in _PLAIN else f"\\{byte:03d}" for byte in label)


def answer(question: Question) -> tuple[bytes, int]:
    """The answer to ``question``: NXDOMAIN, or NOTIMP for an opcode other than QUERY; the
    question echoed, no records. Returns the packet and its rcode."""
    opcode = question.flags & _OPCODE
    rcode = NXDOMAIN if opcode == 0 else NOTIMP
    flags = _QR | opcode | (question.flags & _RD) | rcode
    return _HEADER.pack(question.id, flags, 1, 0, 0, 0) + question.wire, rcode


class NullDns:
    """The server on (``host``, ``port``), UDP and TCP on the same port, from a thread of its own."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        record: Callable[[DnsQuery], None],
        max_tcp_connections: int = 16,
        tcp_timeout: float = 5.0,
    ):
        self._bind = (host, port)
        self._record = record
        self.tcp_timeout = tcp_timeout
        self.dropped = 0
        self._tcp_slots = threading.BoundedSemaphore(max_tcp_connections)
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def address(self) -> tuple[str, int]:
        assert self._udp is not None, "the DNS server is not started"
        host, port = self._udp.getsockname()[:2]
        return host, port

    def start(self) -> NullDns:
        host, port = self._bind
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # TCP on the port UDP got: with port 0 (any), the number UDP got may be taken for TCP,
        # and another is tried.
        for attempt in range(1, 11):
            self._udp = socket.socket(family, socket.SOCK_DGRAM)
            try:
                self._udp.bind((host, port))
                self._tcp = socket.create_server((host, self._udp.getsockname()[1]), family=family)
                break
            except OSError:
                self._udp.close()
                if port or attempt == 10:
                    raise
        self._thread = threading.Thread(target=self._loop, name="null-dns", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread is not None:
            self._thread.join(timeout=10)
        for sock in (self._udp, self._tcp, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()

    def __enter__(self) -> NullDns:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _loop(self) -> None:
        assert self._udp is not None and self._tcp is not None
        with selectors.DefaultSelector() as selector:
            for sock in (self._udp, self._tcp, self._wake_r):
                selector.register(sock, selectors.EVENT_READ)
            while True:
                for key, _ in selector.select():
                    if key.fileobj is self._wake_r:
                        return
                    try:
                        if key.fileobj is self._udp:
                            self._serve_udp()
                        else:
                            self._accept_tcp()
                    except OSError:
                        log.exception("the DNS server could not serve a query")

    def _serve_udp(self) -> None:
        assert self._udp is not None
        packet, client = self._udp.recvfrom(MAX_PACKET)
        reply = self._reply(packet, client, "udp")
        if reply is not None:
            self._udp.sendto(reply, client)

    def _accept_tcp(self) -> None:
        assert self._tcp is not None
        sock, client = self._tcp.accept()
        if not self._tcp_slots.acquire(blocking=False):
            sock.close()  # too many at once: a resolver falls back to another try
            return
        try:
            threading.Thread(target=self._serve_tcp, args=(sock, client), name="null-dns-tcp", daemon=True).start()
        except RuntimeError:
            self._tcp_slots.release()
            sock.close()

    def _serve_tcp(self, sock: socket.socket, client: tuple[str, int]) -> None:
        """Up to ``TCP_QUERIES`` queries, each a two-byte length and the message (RFC 7766)."""
        try:
            with sock:
                sock.settimeout(self.tcp_timeout)
                for _ in range(TCP_QUERIES):
                    prefix = _receive(sock, 2)
                    if prefix is None:
                        return
                    packet = _receive(sock, int.from_bytes(prefix, "big"))
                    reply = None if packet is None else self._reply(packet, client, "tcp")
                    if reply is None:
                        return
                    sock.sendall(len(reply).to_bytes(2, "big") + reply)
        except OSError:
            pass  # the client went away or stayed silent past the timeout
        finally:
            self._tcp_slots.release()

    def _reply(self, packet: bytes, client: tuple[str, int], transport: Literal["udp", "tcp"]) -> bytes | None:
        question = parse_query(packet)
        if question is None:
            with self._lock:
                self.dropped += 1
            return None
        reply, rcode = answer(question)
        query = DnsQuery(
            time=time.time(), client=f"{client[0]}:{client[1]}", transport=transport, name=question.name,
            qtype=TYPE_NAMES.get(question.qtype, f"TYPE{question.qtype}"),
            answer="NXDOMAIN" if rcode == NXDOMAIN else "NOTIMP",
        )  # fmt: skip
        try:
            self._record(query)
        except Exception:
            log.exception("the DNS query could not be recorded: %s", query.to_json())
        return reply


def _receive(sock: socket.socket, size: int) -> bytes | None:
    """Exactly ``size`` bytes, or None when the peer closes first."""
    data = bytearray()
    while len(data) < size:
        piece = sock.recv(size - len(data))
        if not piece:
            return None
        data += piece
    return bytes(data)
