"""HTTP/1.1 on the wire, strictly and with bounds, for the control plane's filters.

The client side is untrusted: a request line, its headers and its body each have a size limit,
and anything a parser could read two ways (two lengths, a length beside chunking, a folded
header line) is refused rather than guessed at, so that no request reaches the engine in a form
other than the one that was checked. The upstream side (the engine) is trusted, but read with
bounds all the same; while waiting for it, the reader watches the client's socket, so that a
client that goes away frees its connection to the engine at once instead of when the engine
next has something to say (``docker logs -f`` of a quiet worker may say nothing for hours).
"""

from __future__ import annotations

import re
import select
import socket
from collections.abc import Iterator
from dataclasses import dataclass

MAX_REQUEST_LINE = 8 * 1024
MAX_HEADER_BYTES = 32 * 1024
MAX_HEADER_COUNT = 64
MAX_CHUNK_LINE = 1024
PIECE = 64 * 1024

# Headers that belong to one connection, not to the message (RFC 9110, 7.6.1), and the framing
# headers each side sets for itself.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
                        "te", "trailer", "transfer-encoding", "upgrade", "content-length"})  # fmt: skip

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_METHOD = re.compile(r"[A-Z]{1,20}")
_STATUS_LINE = re.compile(r"HTTP/1\.[01] ([1-5][0-9][0-9])(?: (.*))?")


class WireError(Exception):
    """A message that cannot be read as it should be: ``status`` is the answer it earns."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class PeerGone(Exception):
    """The client closed its connection (or the filter is stopping) while the engine was awaited."""


class SocketReader:
    """A socket and what has been read from it but not used yet. With ``watch`` (the client's
    socket, for a reader of the engine), a wait for data ends with ``PeerGone`` when ``watch``
    is closed by its peer."""

    def __init__(self, sock: socket.socket, watch: socket.socket | None = None):
        self.sock = sock
        self.watch = watch
        self.buffer = bytearray()

    def _receive(self) -> bytes:
        while self.watch is not None:
            readable, _, _ = select.select([self.sock, self.watch], [], [])
            if self.watch in readable:
                try:
                    peeked = self.watch.recv(1, socket.MSG_PEEK)
                except (BlockingIOError, InterruptedError):
                    peeked = b"x"
                except OSError:
                    peeked = b""
                if not peeked:
                    raise PeerGone
                self.watch = None  # it sent something (a next request): stop watching, or select spins
            if self.sock in readable:
                break
        return self.sock.recv(PIECE)

    def read_line(self, limit: int, too_long: WireError) -> bytes:
        """One line with its end, at most ``limit`` bytes; b"" at the end of the stream."""
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                if end + 1 > limit:
                    raise too_long
                line = bytes(self.buffer[: end + 1])
                del self.buffer[: end + 1]
                return line
            if len(self.buffer) > limit:
                raise too_long
            data = self._receive()
            if not data:
                if self.buffer:
                    raise WireError(400, "the message ended in the middle of a line")
                return b""
            self.buffer += data

    def read_some(self, limit: int) -> bytes:
        """What is there (buffered, or the next piece that arrives), at most ``limit`` bytes."""
        if not self.buffer:
            self.buffer += self._receive()
        piece = bytes(self.buffer[:limit])
        del self.buffer[:limit]
        return piece

    def read_exact(self, size: int) -> bytes:
        out = bytearray()
        while len(out) < size:
            piece = self.read_some(size - len(out))
            if not piece:
                raise WireError(400, "the message ended before its body did")
            out += piece
        return bytes(out)


def _read_header_lines(reader: SocketReader) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    total = 0
    too_big = WireError(431, f"the request's headers are larger than {MAX_HEADER_BYTES} bytes")
    while True:
        line = reader.read_line(MAX_HEADER_BYTES - total, too_big)
        if not line:
            raise WireError(400, "the message ended in its headers")
        total += len(line)
        text = line.decode("latin-1").rstrip("\r\n")
        if not text:
            return headers
        if len(headers) >= MAX_HEADER_COUNT:
            raise WireError(431, f"the request has more than {MAX_HEADER_COUNT} headers")
        if text[0] in " \t":
            raise WireError(400, "a folded header line (obsolete, and read two ways) is not accepted")
        name, colon, value = text.partition(":")
        if not colon or not _TOKEN.fullmatch(name) or any(c in value for c in "\r\n\0"):
            raise WireError(400, "a header line is malformed")
        headers.append((name, value.strip(" \t")))


@dataclass(frozen=True)
class Request:
    """A client's request line and headers (names as sent), checked for one reading of its framing."""

    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name]

    def tokens(self, name: str) -> set[str]:
        return {t.strip().lower() for value in self.values(name) for t in value.split(",") if t.strip()}

    @property
    def keep_alive(self) -> bool:
        if self.version == "HTTP/1.0":
            return False  # a 1.0 client gets an answer that ends with the connection
        return "close" not in self.tokens("connection")

    @property
    def wants_upgrade(self) -> bool:
        """A hijack (attach, exec, BuildKit's session): the connection would stop being HTTP."""
        return bool(self.values("upgrade")) or "upgrade" in self.tokens("connection")

    @property
    def chunked(self) -> bool:
        return bool(self.values("transfer-encoding"))

    @property
    def content_length(self) -> int:
        values = self.values("content-length")
        return int(values[0]) if values else 0


def read_request(reader: SocketReader) -> Request | None:
    """The next request's head, or None when the client closed the connection between requests."""
    line = reader.read_line(
        MAX_REQUEST_LINE, WireError(414, f"the request line is longer than {MAX_REQUEST_LINE} bytes")
    )
    if not line:
        return None
    parts = line.decode("latin-1").rstrip("\r\n").split(" ")
    if len(parts) != 3 or not _METHOD.fullmatch(parts[0]) or parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
        raise WireError(400, "the request line is malformed")
    request = Request(parts[0], parts[1], parts[2], tuple(_read_header_lines(reader)))
    lengths = set(request.values("content-length"))
    encodings = request.values("transfer-encoding")
    # Two readings of where a body ends is how requests are smuggled past a filter: refuse both.
    if encodings and lengths:
        raise WireError(400, "a request may not carry both Transfer-Encoding and Content-Length")
    if encodings and [e.strip().lower() for e in encodings] != ["chunked"]:
        raise WireError(400, "the only transfer coding accepted is a single 'chunked'")
    if len(lengths) > 1 or any(not v.isdigit() or len(v) > 18 for v in lengths):
        raise WireError(400, "the request's Content-Length is malformed")
    if len(request.values("host")) > 1:
        raise WireError(400, "the request has more than one Host header")
    return request


def read_request_body(reader: SocketReader, request: Request, limit: int) -> bytes:
    """The request's body, whole; a body larger than ``limit`` is refused before it is read."""
    too_big = WireError(413, f"the request's body is larger than {limit} bytes")
    if not request.chunked:
        if request.content_length > limit:
            raise too_big
        return reader.read_exact(request.content_length)
    body = bytearray()
    for piece in _chunks(reader, WireError(400, "a chunk size line is malformed")):
        body += piece
        if len(body) > limit:
            raise too_big
    return bytes(body)


def _chunks(reader: SocketReader, malformed: WireError) -> Iterator[bytes]:
    """A chunked body's bytes, a piece at a time as they arrive; the trailers are read and dropped."""
    while True:
        line = reader.read_line(MAX_CHUNK_LINE, malformed)
        size_text = line.split(b";")[0].strip()
        if not line or not size_text or len(size_text) > 15 or not re.fullmatch(rb"[0-9A-Fa-f]+", size_text):
            raise malformed
        remaining = int(size_text, 16)
        if remaining == 0:
            while reader.read_line(MAX_HEADER_BYTES, malformed) not in (b"\r\n", b"\n"):
                pass
            return
        while remaining:
            piece = reader.read_some(min(remaining, PIECE))
            if not piece:
                raise malformed
            remaining -= len(piece)
            yield piece
        if reader.read_line(2, malformed) not in (b"\r\n", b"\n"):
            raise malformed


@dataclass(frozen=True)
class ResponseHead:
    """The engine's status line and headers (names as sent)."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name]

    def end_to_end(self) -> list[tuple[str, str]]:
        """The headers that belong to the message, for passing on: not the hop-by-hop ones, nor
        those the engine's Connection header names as its own."""
        named = {t.strip().lower() for value in self.values("connection") for t in value.split(",")}
        return [(k, v) for k, v in self.headers if k.lower() not in HOP_BY_HOP and k.lower() not in named]


def read_response_head(reader: SocketReader) -> ResponseHead:
    bad = WireError(502, "the Docker engine's answer is malformed")
    line = reader.read_line(MAX_REQUEST_LINE, bad)
    match = _STATUS_LINE.fullmatch(line.decode("latin-1").rstrip("\r\n"))
    if not match:
        raise bad
    try:
        headers = _read_header_lines(reader)
    except WireError:
        raise bad from None
    return ResponseHead(int(match.group(1)), match.group(2) or "", tuple(headers))


def response_body(reader: SocketReader, head: ResponseHead, method: str) -> Iterator[bytes]:
    """The engine's answer's body, a piece at a time as it arrives (no waiting for a whole chunk,
    nor for the end: a followed log or a long-polled wait is passed on as it comes)."""
    if method == "HEAD" or head.status in (204, 304) or head.status < 200:
        return
    if "chunked" in ",".join(head.values("transfer-encoding")).lower():
        yield from _chunks(reader, WireError(502, "the Docker engine's chunked answer is malformed"))
        return
    lengths = head.values("content-length")
    if lengths:
        if not lengths[0].strip().isdigit():
            raise WireError(502, "the Docker engine's Content-Length is malformed")
        remaining = int(lengths[0])
        while remaining:
            piece = reader.read_some(min(remaining, PIECE))
            if not piece:
                raise WireError(502, "the Docker engine's answer ended early")
            remaining -= len(piece)
            yield piece
        return
    while piece := reader.read_some(PIECE):  # a raw stream: it ends with the connection
        yield piece


def encode_head(status: int, reason: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}".rstrip(), *(f"{name}: {value}" for name, value in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def encode_request(method: str, target: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", *(f"{name}: {value}" for name, value in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""


LAST_CHUNK = b"0\r\n\r\n"
