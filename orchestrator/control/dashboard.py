"""The batch board in a browser: a small HTTP server on the loopback address, for one person.

Who may talk to it. Anything on the machine can connect to a loopback port, and any web page
the person opens can make the browser send requests to it, so the board trusts neither:

- **The secret.** The board makes a random secret and prints :attr:`Dashboard.login_url`,
  ``http://127.0.0.1:PORT/login#SECRET``. The secret travels in the URL's *fragment*, which
  the browser never sends: it is not in the request line, so not in this server's log nor in
  any proxy's, and no Referer can carry it. The login page's script reads it, takes it out of
  the address bar (``history.replaceState``) and POSTs it; a person may also paste it in the
  page's form. (``/login?secret=`` would put it in the request line, in the server's log and
  in the browser's history under the redirect, and would log anyone in who follows a link.)
- **The session.** A right secret opens a session: a random cookie, HttpOnly (no script
  reads it), SameSite=Strict, Path=/. Without one, only the login page, its script and the
  CSS are served; pages redirect to the login page, the API answers 401. The server keeps a
  digest of each session's cookie, so finding a session compares digests, not the cookie.
- **CSRF.** Cookies are not bound to a port, and every ``127.0.0.1`` port is the *same site*:
  SameSite=Strict still sends the session with requests made by a page served from another
  port of the machine. So every state-changing request (cancel, retry, merge, logout) is a
  POST that must carry the session's CSRF token in a header (a page of another origin can
  neither read the token nor send a custom header without a CORS preflight, which this
  server never grants) and an ``Origin`` that is the board's own. A missing or wrong token
  is 403; so is a foreign ``Origin`` or ``Sec-Fetch-Site`` on the API.
- **DNS rebinding.** A page of ``evil.example`` whose name comes to resolve to 127.0.0.1 is
  same-origin with itself, not with the board, but its requests would reach this port: every
  request whose ``Host`` is not the address and port served is refused.
- **In a container** (the control plane's), a port published on the host's loopback reaches the
  container's own address, not its loopback: the server then listens there (``bind``) while it
  still answers only to ``http://127.0.0.1:PORT`` as above, and takes connections only from the
  peers ``peer_allowed`` lets through (the host, not the workers beside it on its network).

Every answer carries a strict Content-Security-Policy (no inline script or style, nothing
from elsewhere), ``nosniff`` and ``no-referrer``; none is cached. The pages and their files
are read once from the package and served from that table, never from a path the request
names. Task ids in paths are checked as task ids before anything is asked of the backend.

Live updates: one thread polls the backend's board every ``poll_interval`` seconds while
someone watches, and ``/api/events`` (server-sent events) sends the board when it changed.
A task's page asks for its task each second and follows its log with
``/api/tasks/ID/log?offset=N``: an event stream per tab would soon take the six connections
a browser opens to one host.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import re
import secrets
import socket
import socketserver
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from ..errors import InvalidInput, UserError
from ..tasks import validate_task_id
from .board import BoardBackend
from .board_watch import BoardWatch

log = logging.getLogger("orchestrator.control.dashboard")

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = (
    ("Content-Security-Policy", CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),  # frame-ancestors, for browsers that predate it
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Cache-Control", "no-store"),
)
CSRF_HEADER = "X-CSRF-Token"
MAX_BODY = 4096  # the only body the board reads is a login's secret
MAX_SESSIONS = 32  # the oldest session is dropped beyond this

# What the server sends, by path: (file in dashboard_static/, content type, served without a session).
STATIC_FILES = {
    "/login": ("login.html", "text/html; charset=utf-8", True),
    "/static/login.js": ("login.js", "text/javascript; charset=utf-8", True),
    "/static/style.css": ("style.css", "text/css; charset=utf-8", True),
    "/": ("index.html", "text/html; charset=utf-8", False),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8", False),
}
TASK_PAGE = ("task.html", "text/html; charset=utf-8")
TASK_PAGE_PATH = re.compile(r"/tasks/([^/]+)")
TASK_API_PATH = re.compile(r"/api/tasks/([^/]+)(?:/(log|diff|egress|cancel|retry))?")
TASK_ACTIONS = frozenset({"cancel", "retry"})
OFFSET = re.compile(r"[0-9]{1,15}")


class HttpError(Exception):
    def __init__(self, status: HTTPStatus, message: str, *headers: tuple[str, str]) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


@dataclass(frozen=True)
class Reply:
    status: HTTPStatus
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # as sent: never percent-decoded, so that no %2e%2e becomes ..
    query: str
    headers: Message

    @property
    def is_api(self) -> bool:
        return self.path.startswith("/api/")


def json_reply(data: Any, status: HTTPStatus = HTTPStatus.OK, *headers: tuple[str, str]) -> Reply:
    # ensure_ascii: the answer is ASCII, whatever an agent wrote, so no charset can be mistaken.
    body = json.dumps(data, ensure_ascii=True, default=str).encode()
    return Reply(status, body, "application/json", headers)


def error_reply(request_is_api: bool, error: HttpError) -> Reply:
    if request_is_api:
        return json_reply({"error": error.message}, error.status, *error.headers)
    return Reply(error.status, (error.message + "\n").encode(), "text/plain; charset=utf-8", error.headers)


def read_static(name: str) -> bytes:
    return (resources.files(__package__) / "dashboard_static" / name).read_bytes()


@dataclass(frozen=True)
class Session:
    csrf: str


class EventStream:
    """The answer is the board's event stream, which the handler writes as it goes."""


EVENT_STREAM = EventStream()


class Sessions:
    """The open sessions, by the SHA-256 digest of their cookie."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[bytes, Session] = {}

    @staticmethod
    def _key(cookie: str) -> bytes:
        return hashlib.sha256(cookie.encode("utf-8", "surrogateescape")).digest()

    def open(self) -> tuple[str, Session]:
        cookie, session = secrets.token_urlsafe(32), Session(csrf=secrets.token_urlsafe(32))
        with self._lock:
            self._sessions[self._key(cookie)] = session
            while len(self._sessions) > MAX_SESSIONS:
                del self._sessions[next(iter(self._sessions))]
        return cookie, session

    def find(self, cookie: str | None) -> Session | None:
        if not cookie:
            return None
        with self._lock:
            return self._sessions.get(self._key(cookie))

    def close(self, cookie: str) -> None:
        with self._lock:
            self._sessions.pop(self._key(cookie), None)


def loopback_origin(host: str, port: int) -> str:
    address = ipaddress.ip_address(host)
    if not address.is_loopback:
        raise UserError(f"the board serves a loopback address only (127.0.0.1 or ::1), not {host}")
    return f"http://[{host}]:{port}" if address.version == 6 else f"http://{host}:{port}"


class Dashboard:
    """The board's server. ``with Dashboard(backend) as board: print(board.login_url)``."""

    def __init__(
        self,
        backend: BoardBackend,
        host: str = "127.0.0.1",
        port: int = 0,
        secret: str | None = None,
        *,
        poll_interval: float = 1.0,
        bind: str | None = None,
        peer_allowed: Callable[[str], bool] | None = None,
    ) -> None:
        """``host`` and ``port``: where the browser reaches the board (a loopback address). ``bind``:
        the address to listen on when it is not that one (a container's, where the host's loopback
        port is published), with that same port."""
        loopback_origin(host, port)  # refuse a host that is not loopback before binding it
        if bind is not None and not port:
            raise UserError("a board that listens elsewhere than where it is reached needs its port")
        self.peer_allowed = peer_allowed
        self.backend = backend
        self.secret = secret or secrets.token_urlsafe(32)
        self.sessions = Sessions()
        self.watch = BoardWatch(backend, poll_interval)
        self.static = {path: (read_static(name), kind, public) for path, (name, kind, public) in STATIC_FILES.items()}
        self.task_page = read_static(TASK_PAGE[0])
        self._server = BoardServer((bind or host, port), self)
        self.origin = loopback_origin(host, self._server.server_address[1])
        self.cookie_name = f"board_session_{self._server.server_address[1]}"  # cookies ignore ports
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        return self.origin + "/"

    @property
    def login_url(self) -> str:
        return f"{self.origin}/login#{self.secret}"

    def start(self) -> Dashboard:
        self._threads = [
            # A short poll of the shutdown flag, so that stop() is quick.
            threading.Thread(target=self._server.serve_forever, args=(0.1,), name="board-server", daemon=True),
            threading.Thread(target=self.watch.run, name="board-watch", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self.watch.stop()  # ends the event streams too
        if self._threads:
            self._server.shutdown()
        self._server.server_close()
        for thread in self._threads:
            thread.join()
        self._threads = []

    def __enter__(self) -> Dashboard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # The rules, in the order they apply.

    def check_address(self, request: Request) -> None:
        netloc = urlsplit(self.origin).netloc
        if not hmac.compare_digest(request.headers.get("Host", "").lower().encode(), netloc.encode()):
            raise HttpError(HTTPStatus.FORBIDDEN, f"this board answers only at {self.origin}")
        origin = request.headers.get("Origin")
        if origin is not None and origin != self.origin:
            raise HttpError(HTTPStatus.FORBIDDEN, "a request from another origin")
        if request.method == "POST" and origin is None:
            raise HttpError(HTTPStatus.FORBIDDEN, "a POST without an Origin")
        # The browser's own word on who asks: the board's pages, or (a GET only) the person, by
        # typing the address. Another port of 127.0.0.1 is "same-site", and refused.
        fetch_site = request.headers.get("Sec-Fetch-Site")
        allowed = ("same-origin", "none") if request.method == "GET" else ("same-origin",)
        if request.is_api and fetch_site is not None and fetch_site not in allowed:
            raise HttpError(HTTPStatus.FORBIDDEN, "a request from another site")

    def session_of(self, request: Request) -> tuple[str, Session] | None:
        cookie = cookie_value(request.headers.get_all("Cookie") or [], self.cookie_name)
        session = self.sessions.find(cookie)
        return None if cookie is None or session is None else (cookie, session)

    def check_csrf(self, request: Request, session: Session) -> None:
        token = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(token.encode("utf-8", "surrogateescape"), session.csrf.encode()):
            raise HttpError(HTTPStatus.FORBIDDEN, "a missing or wrong CSRF token")

    def log_in(self, body: bytes) -> Reply:
        if not hmac.compare_digest(body.strip(), self.secret.encode()):
            log.info("the board refused a login with a wrong secret")
            raise HttpError(HTTPStatus.FORBIDDEN, "that is not the board's secret")
        cookie, _ = self.sessions.open()
        set_cookie = ("Set-Cookie", f"{self.cookie_name}={cookie}; HttpOnly; SameSite=Strict; Path=/")
        return Reply(HTTPStatus.NO_CONTENT, b"", "text/plain", (set_cookie,))

    def log_out(self, cookie: str) -> Reply:
        self.sessions.close(cookie)
        expired = f"{self.cookie_name}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"
        return json_reply({"message": "logged out"}, HTTPStatus.OK, ("Set-Cookie", expired))

    def route(self, request: Request, body: bytes) -> Reply | EventStream:
        """The answer to a request."""
        self.check_address(request)
        if request.path == "/login" and request.method == "POST":
            return self.log_in(body)
        static = self.static.get(request.path)
        if static is not None and static[2]:
            return self.serve_file(request, static[0], static[1])
        opened = self.session_of(request)
        if opened is None:
            if request.is_api or request.path.startswith("/static/"):
                raise HttpError(HTTPStatus.UNAUTHORIZED, "log in first")
            return Reply(HTTPStatus.SEE_OTHER, b"", "text/plain", (("Location", "/login"),))
        cookie, session = opened
        if request.method == "POST":
            self.check_csrf(request, session)
        if static is not None:
            return self.serve_file(request, static[0], static[1])
        if match := TASK_PAGE_PATH.fullmatch(request.path):
            task_id(match[1])
            return self.serve_file(request, self.task_page, TASK_PAGE[1])
        if request.path == "/api/session":
            only(request, "GET")
            return json_reply({"csrf": session.csrf})
        if request.path == "/api/events":
            only(request, "GET")
            return EVENT_STREAM
        if request.path == "/api/board":
            only(request, "GET")
            return json_reply(self.backend.board().to_json())
        if request.path == "/api/merge":
            only(request, "POST")
            return json_reply(self.backend.merge().to_json())
        if request.path == "/api/logout":
            only(request, "POST")
            return self.log_out(cookie)
        if match := TASK_API_PATH.fullmatch(request.path):
            return self.task_api(request, task_id(match[1]), match[2])
        raise HttpError(HTTPStatus.NOT_FOUND, "no such page")

    def serve_file(self, request: Request, content: bytes, kind: str) -> Reply:
        only(request, "GET")
        return Reply(HTTPStatus.OK, content, kind)

    def task_api(self, request: Request, task: str, part: str | None) -> Reply:
        only(request, "POST" if part in TASK_ACTIONS else "GET")
        if part is None:
            detail = self.backend.task(task)
            if detail is None:
                raise KeyError(task)
            return json_reply(detail.to_json())
        if part == "log":
            return json_reply(self.backend.log(task, log_offset(request.query)).to_json())
        if part == "diff":
            diff = self.backend.diff(task)
            return json_reply(None if diff is None else diff.to_json())
        if part == "egress":
            return json_reply([dict(record) for record in self.backend.egress(task)])
        outcome = self.backend.cancel(task) if part == "cancel" else self.backend.retry(task)
        return json_reply({"message": outcome})


def only(request: Request, method: str) -> None:
    if request.method != method:
        raise HttpError(HTTPStatus.METHOD_NOT_ALLOWED, f"use {method} here", ("Allow", method))


def task_id(segment: str) -> str:
    try:
        return validate_task_id(segment)
    except InvalidInput:
        raise HttpError(HTTPStatus.NOT_FOUND, "no such task") from None


def log_offset(query: str) -> int:
    fields = dict(part.partition("=")[::2] for part in query.split("&") if part)
    value = fields.get("offset", "0")
    if set(fields) - {"offset"} or not OFFSET.fullmatch(value):
        raise HttpError(HTTPStatus.BAD_REQUEST, "offset must be a byte offset: ?offset=N")
    return int(value)


def cookie_value(headers: list[str], name: str) -> str | None:
    for header in headers:
        for pair in header.split(";"):
            key, _, value = pair.strip().partition("=")
            if key == name:
                return value
    return None


class BoardServer(ThreadingHTTPServer):
    def __init__(self, address: tuple[str, int], dashboard: Dashboard) -> None:
        self.dashboard = dashboard
        self.address_family = socket.AF_INET6 if ipaddress.ip_address(address[0]).version == 6 else socket.AF_INET
        super().__init__(address, BoardHandler)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        allowed = self.dashboard.peer_allowed
        if allowed is None or allowed(str(client_address[0])):
            return True
        log.warning("the board refused a connection from %s: only the host reaches it", client_address[0])
        return False

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver's own prints a traceback on stderr; a browser that left mid-answer is no error.
        if isinstance(sys.exc_info()[1], ConnectionError):
            log.debug("a browser went away before its answer was sent")
        else:
            log.exception("the board failed to answer a request")

    def server_bind(self) -> None:
        # HTTPServer's own asks the resolver for the address's name, which can hang; the name is known.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])


class BoardHandler(BaseHTTPRequestHandler):
    server: BoardServer
    timeout = 30  # a connection that sends no request is closed after this

    def do_GET(self) -> None:
        self.answer()

    def do_POST(self) -> None:
        self.answer()

    def answer(self) -> None:
        dashboard = self.server.dashboard
        parts = urlsplit(self.path)
        request = Request(self.command, parts.path, parts.query, self.headers)
        try:
            answer = dashboard.route(request, self.read_body())
        except HttpError as error:
            answer = error_reply(request.is_api, error)
        except KeyError:
            answer = error_reply(request.is_api, HttpError(HTTPStatus.NOT_FOUND, "no such task"))
        except UserError as refused:
            answer = error_reply(request.is_api, HttpError(HTTPStatus.CONFLICT, str(refused)))
        except Exception:
            log.exception("the board failed to answer %s %s", self.command, parts.path)
            failed = HttpError(HTTPStatus.INTERNAL_SERVER_ERROR, "the board failed; its log tells why")
            answer = error_reply(request.is_api, failed)
        if isinstance(answer, EventStream):
            self.stream_events(request)
        else:
            self.send(answer)

    def read_body(self) -> bytes:
        if self.command != "POST":
            return b""
        length = self.headers.get("Content-Length", "0")
        if not length.isdigit() or int(length) > MAX_BODY:
            raise HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "the body is too large")
        return self.rfile.read(int(length))

    def send(self, reply: Reply) -> None:
        self.send_response(reply.status)
        for name, value in (*SECURITY_HEADERS, *reply.headers):
            self.send_header(name, value)
        self.send_header("Content-Type", reply.content_type or "text/plain")
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    def stream_events(self, request: Request) -> None:
        self.send_response(HTTPStatus.OK)
        for name, value in SECURITY_HEADERS:
            self.send_header(name, value)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        dashboard = self.server.dashboard
        try:
            self.wfile.write(b"retry: 2000\n\n")
            for payload in dashboard.watch.follow():
                if dashboard.session_of(request) is None:
                    return  # logged out: the stream ends with the session
                # The board is one line of JSON (json.dumps escapes newlines), so one data field.
                event = b": keep-alive\n\n" if payload is None else b"event: board\ndata: " + payload + b"\n\n"
                self.wfile.write(event)
                self.wfile.flush()
        except OSError:
            return  # the browser went away

    def version_string(self) -> str:
        return "board"  # not Python's version

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # http.server's own answers (a malformed request, an unknown method) get the same headers.
        self.close_connection = True
        self.send(Reply(HTTPStatus(code), f"{message or HTTPStatus(code).phrase}\n".encode(), "text/plain"))

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # Not the request line: its query is the request's own text.
        # (No path yet when http.server refuses a malformed request line.)
        log.debug("%s %s %s", self.command, urlsplit(getattr(self, "path", "")).path, code)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("board: " + format, *args)
