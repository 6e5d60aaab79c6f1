"""The board's HTTP rules, without a browser: who gets what, the headers, the paths, the events.

Each rule is tested by attacking it: a request without a session, with a forged cookie, without
or with a wrong CSRF token, from another origin or Host, with a path that climbs out of the
static folder or a task id that is not one.
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from urllib.parse import urlsplit

import pytest

from orchestrator.control import dashboard as dashboard_module
from orchestrator.control.board import (
    BOARD_STATES,
    BoardState,
    LogChunk,
    TaskCard,
    Totals,
    first_line,
)
from orchestrator.control.dashboard import CSP, MAX_SESSIONS, Dashboard, read_static
from orchestrator.errors import InvalidInput, UserError
from tests.support.fake_board import MERGE_WITH_A_CONFLICT, FakeBoard

SAME = object()  # the board's own Origin


@dataclass
class Answer:
    status: int
    headers: Message
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


class Client:
    """Plain HTTP to the board, with every header under the test's control."""

    def __init__(self, board: Dashboard) -> None:
        self.board = board
        parts = urlsplit(board.origin)
        self.netloc, self.port = parts.netloc, parts.port or 80

    def request(
        self,
        method: str,
        path: str,
        *,
        cookie: str | None = None,
        csrf: str | None = None,
        origin: object = SAME,
        host: str | None = None,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
    ) -> Answer:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            sent = {"Host": self.netloc if host is None else host, **(headers or {})}
            if origin is SAME and method == "POST":
                sent["Origin"] = self.board.origin
            elif isinstance(origin, str):
                sent["Origin"] = origin
            if cookie is not None:
                sent["Cookie"] = f"{self.board.cookie_name}={cookie}"
            if csrf is not None:
                sent["X-CSRF-Token"] = csrf
            if method == "POST":
                sent.setdefault("Content-Length", str(len(body)))
            for name, value in sent.items():
                if value:
                    connection.putheader(name, value)
            connection.endheaders(body or None)
            response = connection.getresponse()
            return Answer(response.status, response.headers, response.read())
        finally:
            connection.close()

    def log_in(self) -> str:
        answer = self.request("POST", "/login", body=self.board.secret.encode())
        assert answer.status == 204, answer.body
        value = answer.headers["Set-Cookie"].split(";")[0]
        name, _, cookie = value.partition("=")
        assert name == self.board.cookie_name
        return cookie

    def csrf(self, cookie: str) -> str:
        answer = self.request("GET", "/api/session", cookie=cookie)
        assert answer.status == 200
        token = answer.json()
        assert isinstance(token, dict)
        return str(token["csrf"])


@pytest.fixture
def client(board: Dashboard) -> Client:
    return Client(board)


def test_without_a_session_only_the_login_page_its_script_and_the_css_are_served(
    client: Client, backend: FakeBoard
) -> None:
    for path in ("/login", "/static/login.js", "/static/style.css"):
        assert client.request("GET", path).status == 200, path
    for path in ("/", "/tasks/task-001"):
        answer = client.request("GET", path)
        assert (answer.status, answer.headers["Location"]) == (303, "/login"), path
        assert answer.body == b""
    for path in ("/static/app.js", "/api/board", "/api/session", "/api/events", "/api/tasks/task-002",
                 "/api/tasks/task-002/log", "/api/tasks/task-001/diff"):  # fmt: skip
        assert client.request("GET", path).status == 401, path
        assert client.request("GET", path, cookie="forged-" + "A" * 43).status == 401, path
    for path in ("/api/tasks/task-002/cancel", "/api/tasks/task-004/retry", "/api/merge", "/api/logout"):
        assert client.request("POST", path, csrf="anything").status == 401, path
    assert backend.calls == []


def test_the_secret_opens_a_session_in_a_cookie_no_script_reads(client: Client, board: Dashboard) -> None:
    assert len(board.secret) >= 43  # secrets.token_urlsafe(32)
    assert board.login_url == f"{board.origin}/login#{board.secret}"
    assert Dashboard(FakeBoard()).secret != board.secret
    wrong = client.request("POST", "/login", body=board.secret[:-1].encode() + b"x")
    assert wrong.status == 403
    assert "Set-Cookie" not in wrong.headers
    right = client.request("POST", "/login", body=board.secret.encode())
    assert right.status == 204
    attributes = [part.strip() for part in right.headers["Set-Cookie"].split(";")]
    assert attributes[0].startswith(f"{board.cookie_name}=")
    assert len(attributes[0].partition("=")[2]) >= 43
    assert set(attributes[1:]) == {"HttpOnly", "SameSite=Strict", "Path=/"}
    cookie = attributes[0].partition("=")[2]
    answer = client.request("GET", "/api/board", cookie=cookie)
    assert answer.status == 200
    data = answer.json()
    assert isinstance(data, dict)
    assert [task["id"] for task in data["tasks"]] == [f"task-{n:03}" for n in range(1, 12)]


def test_a_login_from_another_origin_or_without_one_is_refused(client: Client, board: Dashboard) -> None:
    secret = board.secret.encode()
    for origin in ("http://evil.example", "null", f"http://localhost:{client.port}", None):
        answer = client.request("POST", "/login", body=secret, origin=origin or "")
        assert answer.status == 403, origin
        assert "Set-Cookie" not in answer.headers


def test_an_action_needs_the_csrf_token_of_its_own_session(client: Client, backend: FakeBoard) -> None:
    cookie, other = client.log_in(), client.log_in()
    token, others_token = client.csrf(cookie), client.csrf(other)
    assert token != others_token
    cancel = "/api/tasks/task-002/cancel"
    for csrf in (None, "", "wrong", token[:-1], others_token, token + "x"):
        assert client.request("POST", cancel, cookie=cookie, csrf=csrf).status == 403, csrf
    for path in ("/api/merge", "/api/tasks/task-004/retry", "/api/logout"):
        assert client.request("POST", path, cookie=cookie, csrf=others_token).status == 403, path
    assert client.request("GET", cancel, cookie=cookie).status == 405
    assert backend.calls == []

    answer = client.request("POST", cancel, cookie=cookie, csrf=token)
    assert (answer.status, answer.json()) == (200, {"message": "task-002: cancelled"})
    assert backend.actions("cancel") == ["task-002"]
    assert backend.cards["task-002"].state == "cancelled"


def test_an_action_from_another_origin_or_site_is_refused(client: Client, backend: FakeBoard) -> None:
    cookie = client.log_in()
    token = client.csrf(cookie)
    cancel = "/api/tasks/task-002/cancel"
    for origin in ("http://evil.example", f"http://127.0.0.1:{client.port + 1}", "null", ""):
        assert client.request("POST", cancel, cookie=cookie, csrf=token, origin=origin).status == 403, origin
    for site in ("same-site", "cross-site", "none"):  # none: not a page; a person typed the address
        headers = {"Sec-Fetch-Site": site}
        assert client.request("POST", cancel, cookie=cookie, csrf=token, headers=headers).status == 403, site
        expected = 200 if site == "none" else 403
        assert client.request("GET", "/api/board", cookie=cookie, headers=headers).status == expected, site
    assert client.request("GET", "/api/board", cookie=cookie, origin="http://evil.example").status == 403
    assert backend.calls == []


def test_a_host_that_is_not_the_address_served_is_refused(client: Client, backend: FakeBoard) -> None:
    # DNS rebinding: evil.example resolves to 127.0.0.1, its page talks to the board as itself.
    cookie = client.log_in()
    for host in (f"evil.example:{client.port}", f"localhost:{client.port}", "127.0.0.1", f"127.0.0.1:{client.port + 1}",
                 f"127.0.0.1:{client.port}.evil.example", ""):  # fmt: skip
        for method, path in (("GET", "/login"), ("GET", "/"), ("GET", "/api/board"), ("POST", "/login")):
            answer = client.request(method, path, cookie=cookie, host=host, body=client.board.secret.encode())
            assert answer.status == 403, (host, method, path)
            assert "Set-Cookie" not in answer.headers
    assert client.request("GET", "/api/board", cookie=cookie, host=f"127.0.0.1:{client.port}").status == 200


def test_every_answer_carries_the_security_headers(client: Client, board: Dashboard) -> None:
    cookie = client.log_in()
    answers = {
        "login page": client.request("GET", "/login"),
        "redirect": client.request("GET", "/"),
        "401": client.request("GET", "/api/board"),
        "403": client.request("GET", "/api/board", host="evil.example"),
        "board": client.request("GET", "/api/board", cookie=cookie),
        "page": client.request("GET", "/tasks/task-001", cookie=cookie),
        "404": client.request("GET", "/api/tasks/task-999", cookie=cookie),
        "405": client.request("POST", "/api/board", cookie=cookie, csrf=client.csrf(cookie)),
        "501": client.request("PUT", "/api/board", cookie=cookie),
    }
    with socket.create_connection(("127.0.0.1", client.port), timeout=10) as raw:
        raw.sendall(b"GET / / HTTP/1.1\r\n\r\n")  # one word too many: http.server's own 400
        head = raw.makefile("rb").read().split(b"\r\n\r\n")[0].decode()
    assert head.startswith("HTTP/1.0 400")
    assert f"Content-Security-Policy: {CSP}" in head.splitlines()
    for what, answer in answers.items():
        assert answer.headers["Content-Security-Policy"] == CSP, what
        assert answer.headers["X-Content-Type-Options"] == "nosniff", what
        assert answer.headers["Referrer-Policy"] == "no-referrer", what
        assert answer.headers["Cache-Control"] == "no-store", what
        assert "Access-Control-Allow-Origin" not in answer.headers, what
        assert answer.headers["Server"] == "board", what  # no Python version for the curious
    assert answers["board"].headers["Content-Type"] == "application/json"
    assert "frame-ancestors 'none'" in CSP and "script-src 'self';" in CSP and "unsafe" not in CSP


def test_static_files_come_from_the_package_and_nowhere_else(client: Client) -> None:
    cookie = client.log_in()
    for path, name in (("/", "index.html"), ("/tasks/task-001", "task.html"), ("/static/app.js", "app.js"),
                       ("/static/style.css", "style.css"), ("/login", "login.html")):  # fmt: skip
        answer = client.request("GET", path, cookie=cookie)
        assert (answer.status, answer.body) == (200, read_static(name)), path
    climbs = ("/static/../dashboard.py", "/static/%2e%2e/dashboard.py", "/static/..%2fboard.py", "/static//etc/passwd",
              "/static/app.js/", "/static/APP.JS", "/static/", "/static/index.html", "/dashboard_static/app.js",
              "/tasks/../static/app.js", "/tasks/%2e%2e", "/tasks/..", "/tasks/task-001/", "/%2fetc%2fpasswd",
              "/static/style.css%00.js")  # fmt: skip
    for path in climbs:
        answer = client.request("GET", path, cookie=cookie)
        assert answer.status == 404, path
        assert answer.body in (b"no such page\n", b"no such task\n"), path


def test_task_ids_are_checked_before_the_backend_is_asked(client: Client, backend: FakeBoard) -> None:
    cookie = client.log_in()
    token = client.csrf(cookie)
    for bad in ("..", "..%2f..%2fetc", "-task", "a..b", "task.lock", "task%00", "t" * 64, "%74ask-001", "task%201"):
        assert client.request("GET", f"/api/tasks/{bad}/log", cookie=cookie).status == 404, bad
        assert client.request("GET", f"/api/tasks/{bad}", cookie=cookie).status == 404, bad
        assert client.request("POST", f"/api/tasks/{bad}/cancel", cookie=cookie, csrf=token).status == 404, bad
    assert backend.calls == []


def test_what_the_backend_raises_becomes_404_409_or_500(
    client: Client, backend: FakeBoard, caplog: pytest.LogCaptureFixture
) -> None:
    cookie = client.log_in()
    token = client.csrf(cookie)
    missing = client.request("GET", "/api/tasks/task-999", cookie=cookie)
    assert (missing.status, missing.json()) == (404, {"error": "no such task"})
    assert client.request("GET", "/api/tasks/task-999/log", cookie=cookie).status == 404
    refused = client.request("POST", "/api/tasks/task-001/cancel", cookie=cookie, csrf=token)
    assert (refused.status, refused.json()) == (409, {"error": "task-001 is success: there is nothing to cancel"})

    def broken() -> BoardState:
        raise RuntimeError("internal detail /var/secret/path")

    backend.board = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR):
        failed = client.request("GET", "/api/board", cookie=cookie)
    assert failed.status == 500
    assert b"internal detail" not in failed.body
    assert "internal detail" in caplog.text  # in the control plane's log, not in the answer


def test_the_log_is_read_from_a_byte_offset(client: Client, backend: FakeBoard) -> None:
    cookie = client.log_in()
    whole = backend.logs["task-002"]
    first = client.request("GET", "/api/tasks/task-002/log", cookie=cookie).json()
    assert first == {"text": whole.decode(), "offset": 0, "next_offset": len(whole), "finished": False}
    backend.add_log("task-002", "agent: half a li")
    again = client.request("GET", f"/api/tasks/task-002/log?offset={len(whole)}", cookie=cookie).json()
    assert again == {"text": "", "offset": len(whole), "next_offset": len(whole), "finished": False}
    backend.add_log("task-002", "ne\n")
    rest = client.request("GET", f"/api/tasks/task-002/log?offset={len(whole)}", cookie=cookie).json()
    assert isinstance(rest, dict)
    assert rest["text"] == "agent: half a line\n"
    for query in ("offset=-1", "offset=abc", "offset=1e3", "offset=", "offset=1&x=2", "offset=" + "9" * 16):
        assert client.request("GET", f"/api/tasks/task-002/log?{query}", cookie=cookie).status == 400, query


def test_the_merge_report_is_sent_as_the_backend_tells_it(client: Client, backend: FakeBoard) -> None:
    backend.merge_summary = MERGE_WITH_A_CONFLICT
    cookie = client.log_in()
    answer = client.request("POST", "/api/merge", cookie=cookie, csrf=client.csrf(cookie))
    assert answer.status == 200
    assert answer.json() == backend.merge_summary.to_json()
    assert backend.actions("merge") == [""]


def read_events(stream: socket.socket) -> Iterator[dict]:
    """The board events of an event stream, as they come; a read that waits too long raises."""
    reader = stream.makefile("rb")
    for line in reader:
        if line.startswith(b"data: "):
            yield json.loads(line[len(b"data: ") :])


def open_events(client: Client, cookie: str) -> socket.socket:
    stream = socket.create_connection(("127.0.0.1", client.port), timeout=10)
    cookie_header = f"Cookie: {client.board.cookie_name}={cookie}"
    stream.sendall(f"GET /api/events HTTP/1.1\r\nHost: {client.netloc}\r\n{cookie_header}\r\n\r\n".encode())
    return stream


def test_events_send_the_board_when_it_changes_and_end_with_the_session(client: Client, backend: FakeBoard) -> None:
    cookie = client.log_in()
    with open_events(client, cookie) as stream:
        events = read_events(stream)
        first = next(events)
        assert {task["id"]: task["state"] for task in first["tasks"]}["task-005"] == "starting"
        backend.change("task-005", state="running", seconds=3.0)
        second = next(events)
        assert {task["id"]: task["state"] for task in second["tasks"]}["task-005"] == "running"
        assert second["totals"]["by_state"]["running"] == 2

        logout = client.request("POST", "/api/logout", cookie=cookie, csrf=client.csrf(cookie))
        assert logout.status == 200
        assert "Max-Age=0" in logout.headers["Set-Cookie"]
        backend.change("task-005", seconds=4.0)
        assert list(events) == []  # the stream ended
    assert client.request("GET", "/api/board", cookie=cookie).status == 401


def test_stop_ends_the_event_streams(backend: FakeBoard) -> None:
    board = Dashboard(backend, poll_interval=0.05).start()
    client = Client(board)
    with open_events(client, client.log_in()) as stream:
        events = read_events(stream)
        next(events)
        board.stop()
        assert list(events) == []
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", client.port), timeout=10).close()


def test_the_secret_never_reaches_the_log(client: Client, board: Dashboard, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="orchestrator"):
        client.request("POST", "/login", body=b"wrong")
        client.log_in()
        client.request("GET", f"/login?secret={board.secret}")  # a person who tried the query instead
        client.request("GET", f"/api/board?{board.secret}")
    assert caplog.records
    assert board.secret not in caplog.text
    assert all(board.secret not in str(record.args) for record in caplog.records)


def test_a_large_body_is_refused_unread(client: Client) -> None:
    answer = client.request("POST", "/login", headers={"Content-Length": str(1 << 20)})
    assert answer.status == 413


def test_sessions_beyond_the_limit_drop_the_oldest(client: Client) -> None:
    oldest = client.log_in()
    newer = [client.log_in() for _ in range(MAX_SESSIONS)]
    assert client.request("GET", "/api/board", cookie=oldest).status == 401
    assert client.request("GET", "/api/board", cookie=newer[0]).status == 200


def test_the_board_serves_the_loopback_address_only() -> None:
    for host in ("0.0.0.0", "192.168.1.10", "::"):
        with pytest.raises(UserError, match="loopback"):
            Dashboard(FakeBoard(), host=host)
    assert dashboard_module.loopback_origin("127.0.0.2", 8080) == "http://127.0.0.2:8080"
    assert dashboard_module.loopback_origin("::1", 8080) == "http://[::1]:8080"


def test_a_card_refuses_what_the_page_could_not_show() -> None:
    good = TaskCard("task-1", "running", "Title", seconds=1.5, turns=2, cost_usd=0.1, depends_on=("task-0",))
    assert json.loads(json.dumps(good.to_json()))["depends_on"] == ["task-0"]
    with pytest.raises(ValueError, match="not a state"):
        TaskCard("task-1", "exploded", "Title")
    with pytest.raises(InvalidInput):
        TaskCard("../etc", "running", "Title")
    with pytest.raises(InvalidInput):
        TaskCard("task-1", "running", "Title", depends_on=("javascript:alert(1)",))
    for bad in ({"turns": True}, {"turns": -1}, {"cost_usd": float("nan")}, {"seconds": -2.0}):
        with pytest.raises(ValueError):
            TaskCard("task-1", "running", "Title", **bad)
    with pytest.raises(ValueError):
        Totals(by_state={"exploded": 1})
    with pytest.raises(ValueError):
        LogChunk("", offset=10, next_offset=5, finished=False)
    assert list(Totals(by_state={"running": 2}).to_json()["by_state"]) == list(BOARD_STATES)
    assert first_line("\n\n  Fix the login  \nmore") == "Fix the login"
    assert first_line("x" * 500) == "x" * 199 + "…"


def test_the_pages_hold_no_html_sink_and_no_inline_script_or_style() -> None:
    # The browser tests show that hostile text stays text on the paths they take; this keeps the
    # sinks out of every path: the scripts never hand a string to an HTML parser or to eval.
    sinks = re.compile(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function|srcdoc")
    for name in ("app.js", "login.js"):
        assert sinks.findall(read_static(name).decode()) == [], name
    for name in ("index.html", "task.html", "login.html"):
        page = read_static(name).decode()
        assert re.findall(r"<script(?![^>]*\bsrc=\"/static/[a-z]+\.js\")[^>]*>", page) == [], name
        assert re.findall(r"\son[a-z]+=|\sstyle=|<style|javascript:", page, re.IGNORECASE) == [], name
