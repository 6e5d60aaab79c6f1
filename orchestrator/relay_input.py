"""What the relay reads from an agent before anything goes on: the request target, checked
against the few requests Claude Code makes, and the body, bounded and spooled.

A target is refused unless it is a plain path: no dot segments (``.``, ``..``), whether written
as such, percent-encoded (``%2e``, ``%2E``) or encoded twice (``%252e``); no encoded slash,
no backslash, no NUL or other control character in any of those forms; no percent sign at all
(the API's paths have none); nothing that is not a character of a path. Then it must be one of
``ROUTES`` exactly, query string included, and the upstream URL is built from the route, not
from what the agent sent.

A body is read into a ``SpooledTemporaryFile`` (memory up to ``in_memory``, a file beyond), so
that a 3 GB upload costs disk, not the relay's memory, and the body can be sent again after a
rate limit. One over ``limit`` (the API's own, 32 MB) is refused as soon as that is known: from
Content-Length before a byte of it is read, or while a chunked body is read.
"""

from __future__ import annotations

import email.message
import string
import tempfile
import urllib.parse
from dataclasses import dataclass
from typing import IO, Protocol

# "Request too large (max 32MB)", as the API and the CLI say; counted in MiB, so that the relay
# refuses nothing the API would take.
API_BODY_LIMIT = 32 << 20
SPOOL_IN_MEMORY = 1 << 20
_BLOCK = 64 << 10
_PATH_CHARS = frozenset(string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@/")
_QUERY_CHARS = _PATH_CHARS | {"?"}


@dataclass(frozen=True)
class Route:
    """A request Claude Code makes, as it makes it."""

    method: str
    path: str
    query: str

    @property
    def target(self) -> str:
        return self.path + ("?" + self.query if self.query else "")


# What Claude Code 2.1.332 sends to ANTHROPIC_BASE_URL with a credential, headless and
# interactive (see relay.py). HEAD /api/hello, its probe, carries none: the relay answers it.
ROUTES = (
    Route("POST", "/v1/messages", "beta=true"),
    Route("POST", "/v1/messages/count_tokens", "beta=true"),  # the interactive /context
)
PROBE = Route("HEAD", "/api/hello", "")


class Refused(Exception):
    """The request is not one the relay passes on; the message says why, for the log."""


def route(method: str, target: str) -> Route:
    """The route a request is for, or Refused."""
    path, query = plain_target(target)
    for known in ROUTES:
        if (known.method, known.path, known.query) == (method, path, query):
            return known
    raise Refused("not a request Claude Code makes")


def plain_target(target: str) -> tuple[str, str]:
    """The path and query of a target that is a plain path, or Refused."""
    if not target.startswith("/") or target.startswith("//"):
        raise Refused("not a path")
    if "#" in target:
        raise Refused("a fragment")
    path, _, query = target.partition("?")
    try:
        once = urllib.parse.unquote(path, errors="strict")
        twice = urllib.parse.unquote(once, errors="strict")
    except UnicodeDecodeError:
        raise Refused("percent-encoded bytes that are not UTF-8") from None
    for form in (path, once, twice):
        if any(c in form for c in "\\\x00") or any(ord(c) < 0x20 or ord(c) == 0x7F for c in form):
            raise Refused("a backslash or a control character")
        if any(segment in (".", "..") for segment in form.split("/")):
            raise Refused("a dot segment")
        if form.count("/") != path.count("/"):
            raise Refused("an encoded slash")
    if "%" in path or "%" in query:
        raise Refused("percent-encoded characters")
    if not set(path) <= _PATH_CHARS or not set(query) <= _QUERY_CHARS:
        raise Refused("characters that are not those of a path")
    return path, query


class Reader(Protocol):
    def read(self, size: int, /) -> bytes: ...
    def readline(self, size: int, /) -> bytes: ...


class BodyRefused(Exception):
    """A body the relay will not take: the status and error type of the API's answer, and why."""

    def __init__(self, status: int, error_type: str, message: str):
        super().__init__(message)
        self.status = status
        self.error_type = error_type


def too_large(limit: int) -> BodyRefused:
    return BodyRefused(413, "request_too_large", f"Request exceeds the maximum allowed number of bytes ({limit})")


def declared_length(headers: email.message.Message, limit: int) -> int | None:
    """The body's length from Content-Length (None: chunked, or no body); over ``limit``: refused."""
    lengths = headers.get_all("content-length") or []
    encodings = headers.get_all("transfer-encoding") or []
    if lengths and encodings:
        # Both: one server reads one and the next the other (request smuggling).
        raise BodyRefused(400, "invalid_request_error", "both Content-Length and Transfer-Encoding")
    if encodings:
        if [part.strip().lower() for part in ",".join(encodings).split(",")] != ["chunked"]:
            raise BodyRefused(400, "invalid_request_error", "a transfer encoding other than chunked")
        return None
    if not lengths:
        return 0
    if len(set(lengths)) != 1 or not lengths[0].strip().isdigit() or not lengths[0].strip().isascii():
        raise BodyRefused(400, "invalid_request_error", "a Content-Length that is not one number")
    length = int(lengths[0])
    if length > limit:
        raise too_large(limit)
    return length


def spool_body(
    rfile: Reader, length: int | None, limit: int, in_memory: int = SPOOL_IN_MEMORY
) -> tempfile.SpooledTemporaryFile[bytes]:
    """Read a body (``length`` from ``declared_length``; None: chunked) into a spool, rewound."""
    spool: tempfile.SpooledTemporaryFile[bytes] = tempfile.SpooledTemporaryFile(max_size=in_memory)  # noqa: SIM115 (the caller's)
    try:
        if length is None:
            _read_chunked(rfile, spool, limit)
        else:
            _copy(rfile, spool, length)
        spool.seek(0)
        return spool
    except BaseException:
        spool.close()
        raise


def _copy(rfile: Reader, spool: IO[bytes], length: int) -> None:
    left = length
    while left:
        block = rfile.read(min(_BLOCK, left))
        if not block:
            raise BodyRefused(400, "invalid_request_error", "the body ended before its Content-Length")
        spool.write(block)
        left -= len(block)


def _read_chunked(rfile: Reader, spool: IO[bytes], limit: int) -> None:
    total = 0
    while True:
        line = rfile.readline(1024)
        size_text = line.split(b";")[0].strip()
        if not line.endswith(b"\n") or not size_text or not all(c in b"0123456789abcdefABCDEF" for c in size_text):
            raise BodyRefused(400, "invalid_request_error", "a chunked body that is not well formed")
        size = int(size_text, 16)
        if size == 0:
            break
        total += size
        if total > limit:
            raise too_large(limit)
        _copy(rfile, spool, size)
        if rfile.readline(3) not in (b"\r\n", b"\n"):
            raise BodyRefused(400, "invalid_request_error", "a chunk that does not end where its size says")
    for _ in range(100):  # trailers, which the relay drops
        if rfile.readline(8192) in (b"\r\n", b"\n", b""):
            return
    raise BodyRefused(400, "invalid_request_error", "too many trailers")
