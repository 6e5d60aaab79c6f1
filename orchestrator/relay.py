"""The API relay: the Claude API on loopback, inside a worker, for the agent.

The agent's Claude Code talks to ``http://127.0.0.1:PORT`` with a ticket instead of a
credential (a random value made for this run, as its token). The relay, run by the worker
runtime, takes each request that carries the ticket, puts the real credential in its place
and sends it on to the real endpoint (Anthropic's, or ``ANTHROPIC_BASE_URL``), streaming the
answer back as it comes. The credential never enters the agent's environment, files or
processes; the ticket is worthless outside this relay.

A request without the ticket goes on with no credential at all (Claude Code's connectivity
probe, ``HEAD /api/hello``, is one), so another process on the same loopback cannot spend it.
Every request goes to the endpoint and nowhere else: a target that is not a plain path under
it is refused, and redirects are handed back to the agent, never followed with the credential.
"""

from __future__ import annotations

import email.message
import hmac
import http.client
import http.server
import json
import secrets
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

from .secrets import ClaudeCredential

DEFAULT_UPSTREAM = "https://api.anthropic.com"
UPSTREAM_TIMEOUT = 600.0  # what Claude Code itself waits for an answer
# Headers that belong to one connection, not to the request (RFC 9110, 7.6.1), and those the
# relay sets itself.
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
               "transfer-encoding", "upgrade", "host", "content-length"}  # fmt: skip
_CREDENTIAL_HEADERS = {"authorization", "x-api-key"}


class ApiRelay:
    """Serve the API on ``127.0.0.1`` in a thread; ``url`` and ``ticket`` are what the agent gets."""

    def __init__(
        self,
        credential: ClaudeCredential,
        upstream: str | None = None,
        *,
        on_error: Callable[[str], None] = lambda message: None,
    ):
        self.credential = credential
        self.upstream = (upstream or DEFAULT_UPSTREAM).rstrip("/")
        self._upstream_parts = urllib.parse.urlsplit(self.upstream)
        self.ticket = "relay-" + secrets.token_urlsafe(32)
        self.on_error = on_error
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "the relay is not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def agent_environment(self) -> dict[str, str]:
        """What the agent's Claude Code needs to use the relay: its URL, and the ticket in the
        variable the real credential would be in (so that the headers it sends are the same)."""
        return {"ANTHROPIC_BASE_URL": self.url, self.credential.env_name: self.ticket}

    def start(self) -> ApiRelay:
        relay = self

        class Handler(_RelayHandler):
            pass

        Handler.relay = relay
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="api-relay", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> ApiRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def target(self, path: str) -> str | None:
        """The endpoint's URL for a request's target, or None when the target is not a plain
        path (an absolute URL, ``//host``, a path that would change the URL's host)."""
        if not path.startswith("/") or path.startswith("//") or any(c in path for c in "\\#\r\n\t "):
            return None
        url = self.upstream + path
        parts, own = urllib.parse.urlsplit(url), self._upstream_parts
        same = (parts.scheme, parts.netloc) == (own.scheme, own.netloc) and parts.path.startswith(own.path)
        return url if same else None

    def carries_ticket(self, headers: Mapping[str, str] | email.message.Message) -> bool:
        offered = headers.get("x-api-key") or ""
        auth = headers.get("authorization") or ""
        if auth.lower().startswith("bearer "):
            offered = auth[7:].strip()
        return hmac.compare_digest(offered.encode(), self.ticket.encode())


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect goes back to the agent as it is: following it would carry the credential to
    wherever it points."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


class _RelayHandler(http.server.BaseHTTPRequestHandler):
    relay: ApiRelay
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the worker's log shows what the agent did; one line per request would drown it

    def do_HEAD(self) -> None:
        self._forward()

    def do_GET(self) -> None:
        self._forward()

    def do_POST(self) -> None:
        self._forward()

    def do_PUT(self) -> None:
        self._forward()

    def do_PATCH(self) -> None:
        self._forward()

    def do_DELETE(self) -> None:
        self._forward()

    def _read_body(self) -> bytes | None:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else None

    def _forward(self) -> None:
        relay = self.relay
        body = self._read_body()
        headers = {
            name: value
            for name, value in self.headers.items()
            if name.lower() not in _HOP_BY_HOP and name.lower() not in _CREDENTIAL_HEADERS
        }
        url = relay.target(self.path)
        if url is None:
            message = f"the worker's API relay refused a request for {self.path[:200]!r}: not a path of the API"
            relay.on_error(message)
            self._send_error(400, message)
            return
        if relay.carries_ticket(self.headers):
            headers.update(relay.credential.headers())
        request = urllib.request.Request(url, data=body, headers=headers, method=self.command)
        try:
            upstream = _OPENER.open(request, timeout=UPSTREAM_TIMEOUT)
        except urllib.error.HTTPError as exc:
            upstream = exc  # an API error is an answer: it goes back as it is
        except (urllib.error.URLError, OSError, ssl.SSLError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            message = f"the worker's API relay cannot reach {relay.upstream}: {reason}"
            relay.on_error(message)
            self._send_error(502, message)
            return
        try:
            self._stream_back(upstream)
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the agent went away (stopped, or gave up)
        finally:
            upstream.close()

    def _stream_back(self, upstream: Any) -> None:
        self.send_response(upstream.status)
        for name, value in upstream.headers.items():
            if name.lower() not in _HOP_BY_HOP:
                self.send_header(name, value)
        if self.command == "HEAD":
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        # Server-sent events come a few bytes at a time: each piece goes on at once, as a chunk.
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        while True:
            piece = upstream.read1(65536) if hasattr(upstream, "read1") else upstream.read(65536)
            if not piece:
                break
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _send_error(self, status: int, message: str) -> None:
        body = json.dumps({"type": "error", "error": {"type": "api_error", "message": message}}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
