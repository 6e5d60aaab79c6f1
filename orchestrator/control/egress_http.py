"""The HTTP the egress proxy speaks: request and response heads read within bounds, a proxy
request's target, and message bodies copied piece by piece in their own framing.

Everything here reads what an agent (or a server the agent chose) sent, so it is strict: one
space between the parts of a request line, no folded or space-padded header lines, no request
that carries both Content-Length and Transfer-Encoding (the classic request smuggling), no
coding but chunked, ASCII only. What does not fit is refused, not repaired.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from .egress_policy import Host, parse_host, parse_port, split_host_port

MAX_HEADER_LINES = 100
MAX_CHUNK_LINE = 1024
PIECE = 65536
# Headers of one connection, not of the message (RFC 9110, 7.6.1), plus those the proxy sets
# itself: each side gets its own framing, Host and Connection from the proxy.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
    "trailer", "transfer-encoding", "upgrade", "host", "content-length", "expect",
})  # fmt: skip
_STATUS_TEXT = {400: "Bad Request", 403: "Forbidden", 407: "Proxy Authentication Required", 408: "Request Timeout",
                429: "Too Many Requests", 431: "Request Header Fields Too Large", 502: "Bad Gateway",
                503: "Service Unavailable"}  # fmt: skip
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_VALUE = re.compile(r"[\t\x20-\x7e]*")
_TARGET = re.compile(r"[\x21-\x7e]+")


class Refusal(Exception):
    """A request the proxy answers with ``status`` and does not carry out; ``reason`` is what
    the record and the client are told."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


class PeerClosed(Exception):
    """The other side closed the connection before the message was whole."""


class BadMessage(Exception):
    """A message that breaks the rules above; the text says which."""


@dataclass(frozen=True)
class Head:
    """A request or a response head: its first line's three parts and its header lines."""

    first: tuple[str, str, str]
    headers: tuple[tuple[str, str], ...]

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name]

    def single(self, name: str) -> str | None:
        """The one value of ``name``, None when absent; a repeated header is refused, since
        two parsers could each pick a different one."""
        found = self.values(name)
        if len(found) > 1:
            raise BadMessage(f"the header {name} is repeated")
        return found[0] if found else None

    def end_to_end(self) -> list[tuple[str, str]]:
        """The headers to pass on: without the hop-by-hop ones and those Connection names."""
        named = {token.strip().lower() for value in self.values("connection") for token in value.split(",")}
        return [(key, value) for key, value in self.headers if key.lower() not in HOP_BY_HOP | named]


class Stream:
    """A socket read through a buffer, so that what follows a head stays for the body."""

    def __init__(self, sock: socket.socket, initial: bytes = b""):
        self.sock = sock
        self.buffer = bytearray(initial)

    def _fill(self, deadline: float | None, timeout: float) -> None:
        wait = timeout if deadline is None else min(timeout, deadline - time.monotonic())
        if wait <= 0:
            raise TimeoutError("the time for the head is up")
        self.sock.settimeout(wait)
        data = self.sock.recv(PIECE)
        if not data:
            raise PeerClosed("closed before the message was whole")
        self.buffer += data

    def read_head(self, limit: int, *, deadline: float | None, timeout: float) -> bytes:
        """Bytes up to the blank line that ends a head (CRLF CRLF), at most ``limit`` of them,
        all of them before ``deadline``: a client that sends a byte now and then cannot hold a
        thread longer than that."""
        searched = 0
        while True:
            end = self.buffer.find(b"\r\n\r\n", max(0, searched - 3))
            if end >= 0 and end + 4 <= limit:
                head = bytes(self.buffer[: end + 4])
                del self.buffer[: end + 4]
                return head
            if len(self.buffer) >= limit or end >= 0:
                raise BadMessage(f"the head is longer than {limit} bytes")
            searched = len(self.buffer)
            self._fill(deadline, timeout)

    def read_some(self, limit: int, timeout: float) -> bytes:
        """Up to ``limit`` bytes, b"" once the peer has closed."""
        if not self.buffer:
            self.sock.settimeout(timeout)
            data = self.sock.recv(PIECE)
            if not data:
                return b""
            self.buffer += data
        piece = bytes(self.buffer[:limit])
        del self.buffer[:limit]
        return piece

    def read_line(self, limit: int, timeout: float) -> bytes:
        while (end := self.buffer.find(b"\r\n")) < 0:
            if len(self.buffer) > limit:
                raise BadMessage(f"a line of the body's framing is longer than {limit} bytes")
            self._fill(None, timeout)
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 2]
        return line


def parse_head(data: bytes, *, request: bool) -> Head:
    """A head read by ``Stream.read_head``. Raises ``BadMessage``."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise BadMessage("the head is not ASCII") from None
    first, *lines = text[:-4].split("\r\n")
    if len(lines) > MAX_HEADER_LINES:
        raise BadMessage(f"more than {MAX_HEADER_LINES} header lines")
    parts = first.split(" ", 2)
    if not request and len(parts) == 2:
        parts.append("")  # a status line without a reason phrase
    if len(parts) != 3:
        raise BadMessage("the first line is not three parts")
    if request:
        method, target, version = parts
        if not _TOKEN.fullmatch(method) or not _TARGET.fullmatch(target) or version not in ("HTTP/1.1", "HTTP/1.0"):
            raise BadMessage("the request line is not METHOD TARGET HTTP/1.x")
    else:
        version, status, phrase = parts
        if not version.startswith("HTTP/1.") or not (status.isdigit() and len(status) == 3):
            raise BadMessage("the status line is not HTTP/1.x NNN")
        if not _VALUE.fullmatch(phrase):
            raise BadMessage("the status line is not HTTP/1.x NNN")
    headers = []
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name) or not _VALUE.fullmatch(value):
            raise BadMessage("a header line is not NAME: VALUE (no space before the colon, no folding)")
        headers.append((name, value.strip(" \t")))
    return Head(first=(parts[0], parts[1], parts[2]), headers=tuple(headers))


@dataclass(frozen=True)
class Target:
    """Where a proxy request goes: the host as parsed, its port, and for plain HTTP the path
    (with the query) to ask the server for."""

    host: Host
    port: int
    path: str = ""

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in str(self.host) else str(self.host)
        return f"{host}:{self.port}"


def parse_authority(text: str, default_port: int | None) -> tuple[Host, int]:
    """``host[:port]`` of a CONNECT target, a URI or a Host header. Raises ``ValueError``."""
    host_text, port_text = split_host_port(text)
    if port_text is None and default_port is None:
        raise ValueError("the port is missing")
    if host_text.count(":") > 1 and not host_text.startswith("["):
        raise ValueError("an IPv6 address must be in brackets")
    port = parse_port(port_text) if port_text is not None else default_port
    assert port is not None
    return parse_host(host_text), port


def parse_connect_target(target: str) -> Target:
    try:
        host, port = parse_authority(target, None)
    except ValueError as exc:
        raise Refusal(400, f"the CONNECT target must be HOST:PORT: {exc}") from None
    return Target(host, port)


def parse_absolute_target(target: str) -> Target:
    """``http://host[:port]/path?query`` of a plain HTTP proxy request."""
    scheme, sep, rest = target.partition("://")
    if not sep:
        raise Refusal(400, "not a proxy request: the target must be an absolute http:// URI")
    if scheme.lower() != "http":
        raise Refusal(400, f"only http:// is proxied as a plain request ({scheme[:20]!r}); use CONNECT for TLS")
    cut = min((index for index in (rest.find("/"), rest.find("?")) if index >= 0), default=len(rest))
    authority, path = rest[:cut], rest[cut:]
    if "@" in authority:
        raise Refusal(400, "a URI with user information is refused (it is how a host is disguised)")
    if "#" in path or "\\" in target:
        raise Refusal(400, "a URI with a fragment or a backslash is refused")
    try:
        host, port = parse_authority(authority, 80)
    except ValueError as exc:
        raise Refusal(400, f"the URI's host: {exc}") from None
    return Target(host, port, path if path.startswith("/") else "/" + path)


def same_host(head: Head, target: Target) -> bool:
    """Whether the Host header, when there is one, names the target's host (and its port,
    when it names one): a proxy that let Host differ would let a request claim one server to
    the policy and another to the server that answers it."""
    value = head.single("host")
    if value is None:
        return True
    try:
        host_text, port_text = split_host_port(value)
        host = parse_host(host_text)
        port = parse_port(port_text) if port_text is not None else target.port
    except ValueError:
        return False
    return (host, port) == (target.host, target.port)


def body_framing(head: Head, *, request: bool) -> tuple[str, int]:
    """How a body is delimited: ("length", N), ("chunked", 0) or, for a response only,
    ("close", 0). Raises ``BadMessage`` for what two parsers could read two ways."""
    codings = [token.strip().lower() for value in head.values("transfer-encoding") for token in value.split(",")]
    length = head.values("content-length")
    if codings and length:
        raise BadMessage("both Transfer-Encoding and Content-Length")
    if codings:
        if codings == ["chunked"]:
            return ("chunked", 0)
        if request:
            raise BadMessage(f"the transfer coding {', '.join(codings)[:80]!r} is not supported (chunked only)")
        return ("close", 0)  # a response's other codings end with the connection (RFC 9112, 6.3)
    if length:
        if len(set(length)) != 1 or not (length[0].isascii() and length[0].isdigit()) or len(length[0]) > 18:
            raise BadMessage("a Content-Length that is not one number")
        return ("length", int(length[0]))
    return ("length", 0) if request else ("close", 0)


def copy_body(source: Stream, framing: tuple[str, int], send: Callable[[bytes], None], *, timeout: float) -> int:
    """Copy one body from ``source`` to ``send`` as it comes, never holding more than a piece
    of it; a chunked body is checked chunk by chunk and passed on chunked (without trailers).
    Returns the bytes sent."""
    kind, remaining = framing
    sent = 0
    if kind == "length":
        while remaining:
            piece = source.read_some(min(remaining, PIECE), timeout)
            if not piece:
                raise PeerClosed("closed before the body was whole")
            send(piece)
            sent += len(piece)
            remaining -= len(piece)
        return sent
    if kind == "close":
        while piece := source.read_some(PIECE, timeout):
            send(piece)
            sent += len(piece)
        return sent
    while True:
        line = source.read_line(MAX_CHUNK_LINE, timeout)
        size_text = line.split(b";", 1)[0].strip()
        if not size_text or len(size_text) > 16 or not all(c in b"0123456789abcdefABCDEF" for c in size_text):
            raise BadMessage("a chunk size that is not a hexadecimal number")
        size = int(size_text, 16)
        if size == 0:
            while source.read_line(MAX_CHUNK_LINE, timeout):
                pass  # trailers: not passed on
            send(b"0\r\n\r\n")
            return sent + 5
        prefix = b"%x\r\n" % size
        send(prefix)
        sent += len(prefix)
        sent += copy_body(source, ("length", size), send, timeout=timeout)
        if source.read_line(2, timeout):
            raise BadMessage("a chunk is longer than its size says")
        send(b"\r\n")
        sent += 2


def encode_head(first: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [first, *(f"{name}: {value}" for name, value in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def error_answer(status: int, reason: str, extra: list[tuple[str, str]] | None = None) -> bytes:
    """A whole answer of the proxy's own: the status, and the reason as a line of text."""
    body = (reason + "\n").encode("ascii", "replace")
    headers = [("Content-Type", "text/plain; charset=us-ascii"), ("Content-Length", str(len(body))),
               ("Connection", "close"), *(extra or [])]  # fmt: skip
    return encode_head(f"HTTP/1.1 {status} {_STATUS_TEXT.get(status, 'Refused')}", headers) + body
