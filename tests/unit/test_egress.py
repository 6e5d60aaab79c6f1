"""The egress proxy, attacked and used with real clients (curl, urllib, http.client) against
servers of the tests' own on loopback. Loopback is forbidden to names, so the upstream is
reached by its address, listed literally in the task's policy."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import http.server
import json
import os
import socket
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from orchestrator.control.egress import EgressProxy, EgressRecord, ProxySettings
from orchestrator.control.egress_policy import OPEN, Policy, parse_policy
from orchestrator.control.egress_tickets import ProxyTickets, basic_credentials, proxy_environment
from tests.support.waiting import wait_until

WAIT = 30.0  # a safety bound for what must happen; never what a test measures


# --- the servers the proxy leads to ---------------------------------------------------------


@dataclass
class Upstream:
    port: int
    requests: list[dict] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    released_in_time: list[bool] = field(default_factory=list)


def _read_chunked(rfile) -> bytes:
    body = b""
    while size := int(rfile.readline().split(b";")[0], 16):
        body += rfile.read(size)
        rfile.readline()
    while rfile.readline() not in (b"\r\n", b""):
        pass
    return body


def _handler(upstream: Upstream) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            upstream.requests.append({"path": self.path, "headers": self.headers.items()})
            if self.path == "/redirect":
                self._send(302, b"moved\n", {"Location": "http://outside.example/next"})
            elif self.path == "/hop":
                self._send(200, b"hop\n", {"Connection": "X-Up", "X-Up": "1", "Keep-Alive": "timeout=5", "X-Kept": "2"})
            elif self.path == "/stream":
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.wfile.write(b"6\r\nfirst\n\r\n")
                self.wfile.flush()
                # Sent only once the client has read the first piece through the proxy: a proxy
                # that waited for the whole body would never pass the first piece on.
                upstream.released_in_time.append(upstream.release.wait(WAIT))
                self.wfile.write(b"7\r\nsecond\n\r\n0\r\n\r\n")
            else:
                body = json.dumps({"path": self.path, "headers": self.headers.items()}).encode()
                self._send(200, body, {"Content-Type": "application/json"})

        def do_POST(self) -> None:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                body = _read_chunked(self.rfile)
            else:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            upstream.requests.append({"path": self.path, "headers": self.headers.items()})
            answer = json.dumps({"length": len(body), "sha256": hashlib.sha256(body).hexdigest(),
                                 "headers": self.headers.items()})  # fmt: skip
            self._send(200, answer.encode())

    return Handler


@contextlib.contextmanager
def serve_http(host: str) -> Iterator[Upstream]:
    class Server(http.server.ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        daemon_threads = True

    server = Server((host, 0), http.server.BaseHTTPRequestHandler)
    upstream = Upstream(port=server.server_address[1])
    server.RequestHandlerClass = _handler(upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield upstream
    finally:
        upstream.release.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with serve_http("127.0.0.1") as served:
        yield served


@dataclass
class Listener:
    """A TCP server that echoes what it gets, and counts its connections."""

    port: int
    accepted: list[tuple[str, int]] = field(default_factory=list)


@pytest.fixture
def echo() -> Iterator[Listener]:
    server = socket.create_server(("127.0.0.1", 0))
    listener = Listener(port=server.getsockname()[1])

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)

    def accept() -> None:
        while True:
            try:
                conn, client = server.accept()
            except OSError:
                return
            listener.accepted.append(client)
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield listener
    server.close()


# --- the proxy -------------------------------------------------------------------------------


@dataclass
class Harness:
    proxy: EgressProxy
    tickets: ProxyTickets
    policies: dict[str, Policy]
    records: list[EgressRecord]
    ticket: dict[str, str]

    @property
    def port(self) -> int:
        return self.proxy.address[1]

    def url(self, task: str = "t1") -> str:
        return f"http://{task}:{self.ticket[task]}@127.0.0.1:{self.port}"

    def auth(self, task: str = "t1") -> str:
        return "Basic " + base64.b64encode(f"{task}:{self.ticket[task]}".encode()).decode()

    def raw(self, data: bytes, *, source: str = "127.0.0.1") -> bytes:
        """Send ``data`` and read the answer until the proxy closes the connection."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=WAIT, source_address=(source, 0)) as sock:
            sock.sendall(data)
            answer = b""
            while piece := sock.recv(65536):
                answer += piece
            return answer

    def connect(self, target: str, task: str = "t1", source: str = "127.0.0.1") -> socket.socket:
        """A tunnel to ``target`` (the 200 read); the caller closes it."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=WAIT, source_address=(source, 0))
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nProxy-Authorization: {self.auth(task)}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            piece = sock.recv(1)
            assert piece, f"the proxy closed the tunnel to {target}: {head!r}"
            head += piece
        assert head.startswith(b"HTTP/1.1 200"), head
        return sock

    def wait_records(self, count: int) -> list[EgressRecord]:
        wait_until(lambda: len(self.records) >= count, f"{count} egress records", timeout=WAIT)
        return self.records


@contextlib.contextmanager
def make_harness(policies: dict[str, Policy], settings: ProxySettings | None = None) -> Iterator[Harness]:
    tickets = ProxyTickets()
    issued = {task: tickets.issue(task) for task in policies}
    records: list[EgressRecord] = []
    proxy = EgressProxy("127.0.0.1", 0, identify=tickets, policy_for=policies.get, record=records.append,
                        settings=settings)  # fmt: skip
    with proxy:
        yield Harness(proxy, tickets, policies, records, issued)


@pytest.fixture
def harness(upstream: Upstream, echo: Listener) -> Iterator[Harness]:
    allowed = parse_policy(
        f"127.0.0.1:{upstream.port}\n127.0.0.1:{echo.port}\nlocalhost:{upstream.port}\nexample.com\n",
        name="test", source="test",
    )  # fmt: skip
    with make_harness({"t1": allowed, "t2": allowed, "t-open": OPEN}) as made:
        yield made


@pytest.fixture(autouse=True)
def no_proxy_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "no_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "--max-time", str(WAIT), *args], capture_output=True, text=True,
                          env={"PATH": os.environ["PATH"]}, check=False)  # fmt: skip


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


# --- what goes through ----------------------------------------------------------------------


def test_plain_http_goes_through_with_curl_and_urllib(harness: Harness, upstream: Upstream):
    done = curl("--proxy", harness.url(), f"http://127.0.0.1:{upstream.port}/echo?x=1")
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["path"] == "/echo?x=1"
    names = {name.lower() for name, _ in seen["headers"]}
    assert "proxy-authorization" not in names and "proxy-connection" not in names
    assert dict(seen["headers"])["Host"] == f"127.0.0.1:{upstream.port}"

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": harness.url()}))
    with opener.open(f"http://127.0.0.1:{upstream.port}/urllib", timeout=WAIT) as answer:
        assert json.loads(answer.read())["path"] == "/urllib"

    first, second = harness.wait_records(2)[:2]
    assert (first.decision, first.task, first.host, first.port, first.address) == (
        "allowed", "t1", "127.0.0.1", upstream.port, "127.0.0.1")  # fmt: skip
    assert first.reason == "policy test: answered 200"
    assert first.bytes_up > 0 and first.bytes_down > len(done.stdout)
    assert second.decision == "allowed"
    assert json.loads(first.to_json())["decision"] == "allowed"


def test_connect_goes_through_with_curl_and_http_client(harness: Harness, upstream: Upstream):
    done = curl("--proxytunnel", "--proxy", harness.url(), f"http://127.0.0.1:{upstream.port}/tunnelled")
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["path"] == "/tunnelled"
    assert "proxy-authorization" not in {name.lower() for name, _ in seen["headers"]}

    connection = http.client.HTTPConnection("127.0.0.1", harness.port, timeout=WAIT)
    connection.set_tunnel("127.0.0.1", upstream.port, headers={"Proxy-Authorization": harness.auth()})
    connection.request("GET", "/via-set-tunnel")
    answer = connection.getresponse()
    assert answer.status == 200 and json.loads(answer.read())["path"] == "/via-set-tunnel"
    connection.close()

    records = harness.wait_records(2)
    assert [(r.method, r.decision) for r in records] == [("CONNECT", "allowed"), ("CONNECT", "allowed")]
    assert records[0].reason == "policy test: both sides closed"


def test_a_tunnel_carries_bytes_both_ways_and_passes_a_half_close_on(harness: Harness, echo: Listener):
    payload = os.urandom(3 * 1024 * 1024)
    received = bytearray()
    with harness.connect(f"127.0.0.1:{echo.port}") as sock:

        def read_all() -> None:
            while piece := sock.recv(65536):
                received.extend(piece)

        reader = threading.Thread(target=read_all)
        reader.start()
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)  # the echo server answers all, then closes: the reader ends
        reader.join(WAIT)
        assert not reader.is_alive()
    assert bytes(received) == payload
    (record,) = harness.wait_records(1)
    assert (record.decision, record.bytes_up, record.bytes_down) == ("allowed", len(payload), len(payload))
    print(f"\ntunnel: {len(payload)} bytes each way in {record.duration:.2f} s")


def test_a_large_upload_and_a_chunked_one_arrive_whole(harness: Harness, upstream: Upstream):
    body = os.urandom(5 * 1024 * 1024)
    connection = http.client.HTTPConnection("127.0.0.1", harness.port, timeout=WAIT)
    target = f"http://127.0.0.1:{upstream.port}/upload"
    connection.request("POST", target, body=body, headers={"Proxy-Authorization": harness.auth()})
    answer = json.loads(connection.getresponse().read())
    assert (answer["length"], answer["sha256"]) == (len(body), hashlib.sha256(body).hexdigest())
    connection.close()

    pieces = [os.urandom(100_000) for _ in range(7)]
    connection = http.client.HTTPConnection("127.0.0.1", harness.port, timeout=WAIT)
    connection.request("POST", target, body=iter(pieces), encode_chunked=True,
                       headers={"Proxy-Authorization": harness.auth(), "Expect": "100-continue"})  # fmt: skip
    answer = json.loads(connection.getresponse().read())
    assert answer["sha256"] == hashlib.sha256(b"".join(pieces)).hexdigest()
    assert "expect" not in {name.lower() for name, _ in answer["headers"]}
    connection.close()


def test_the_answer_is_streamed_not_gathered(harness: Harness, upstream: Upstream):
    with socket.create_connection(("127.0.0.1", harness.port), timeout=WAIT) as sock:
        sock.sendall(f"GET http://127.0.0.1:{upstream.port}/stream HTTP/1.1\r\n"
                     f"Proxy-Authorization: {harness.auth()}\r\n\r\n".encode())  # fmt: skip
        got = b""
        while b"first\n" not in got:
            piece = sock.recv(65536)
            assert piece, got
            got += piece
        upstream.release.set()
        while piece := sock.recv(65536):
            got += piece
    assert upstream.released_in_time == [True]
    assert got.endswith(b"7\r\nsecond\n\r\n0\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in got


def test_hop_by_hop_headers_stay_on_their_side(harness: Harness, upstream: Upstream):
    answer = harness.raw(
        f"GET http://127.0.0.1:{upstream.port}/hop HTTP/1.1\r\nHost: 127.0.0.1:{upstream.port}\r\n"
        f"Proxy-Authorization: {harness.auth()}\r\nConnection: X-Secret, keep-alive\r\nX-Secret: s\r\n"
        f"Keep-Alive: 300\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nX-Kept: yes\r\n\r\n".encode()
    )  # fmt: skip
    sent = {name.lower(): value for name, value in upstream.requests[-1]["headers"]}
    assert "x-secret" not in sent and "keep-alive" not in sent and "te" not in sent
    assert "proxy-authorization" not in sent and "proxy-connection" not in sent
    assert sent["x-kept"] == "yes" and sent["connection"] == "close"
    head = answer.split(b"\r\n\r\n")[0].decode().lower()
    assert "x-up:" not in head and "keep-alive" not in head and "x-kept: 2" in head
    assert "connection: close" in head


def test_a_listed_ipv6_address_goes_through():
    with serve_http("::1") as upstream:
        allowed = parse_policy(f"[::1]:{upstream.port}\n", name="v6", source="test")
        with make_harness({"t1": allowed}) as harness:
            done = curl("--proxytunnel", "--proxy", harness.url(), f"http://[::1]:{upstream.port}/six")
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["path"] == "/six"
            assert harness.wait_records(1)[0].address == "::1"


# --- what does not ---------------------------------------------------------------------------


def test_hostile_requests_are_refused_and_each_recorded_once(harness: Harness, upstream: Upstream, echo: Listener):
    up, other = upstream.port, echo.port
    auth = f"Proxy-Authorization: {harness.auth()}\r\n"
    wrong_ticket = "Basic " + base64.b64encode(b"t1:egress-not-the-ticket").decode()
    other_task = "Basic " + base64.b64encode(f"t9:{harness.ticket['t1']}".encode()).decode()
    open_auth = f"Proxy-Authorization: {harness.auth('t-open')}\r\n"

    def get(target: str, headers: str = auth, method: str = "GET") -> bytes:
        return f"{method} {target} HTTP/1.1\r\n{headers}\r\n".encode()

    attempts: list[tuple[str, bytes, int, str]] = [
        ("a name outside the policy", get("http://outside.example/"), 403, "not allowed by the policy test"),
        ("CONNECT to a name outside", get("outside.example:443", method="CONNECT"), 403, "not allowed by the policy"),
        ("another address, dotted", get(f"http://127.0.0.2:{up}/"), 403, "the address 127.0.0.2 is not allowed"),
        ("another address, decimal", get(f"http://2130706434:{up}/"), 403, "the address 127.0.0.2 is not allowed"),
        ("another address, hex", get(f"http://0x7f000002:{up}/"), 403, "the address 127.0.0.2 is not allowed"),
        ("another address, octal", get(f"0177.0.0.2:{up}", method="CONNECT"), 403, "127.0.0.2 is not allowed"),
        ("another address, short", get(f"127.2:{up}", method="CONNECT"), 403, "127.0.0.2 is not allowed"),
        ("IPv6 loopback", get(f"http://[::1]:{up}/"), 403, "the address [::1] is not allowed"),
        ("IPv4-mapped IPv6", get(f"[::ffff:127.0.0.1]:{up}", method="CONNECT"), 403, "[::ffff:7f00:1] is not allowed"),
        ("IPv6 without brackets", get(f"::1:{up}", method="CONNECT"), 400, "must be HOST:PORT"),
        ("the metadata address", get("169.254.169.254:80", method="CONNECT"), 403, "169.254.169.254 is not allowed"),
        ("CONNECT to a port not allowed", get(f"127.0.0.1:{other + 1}", method="CONNECT"), 403,
         f"port {other + 1} is not allowed for 127.0.0.1"),
        ("a name on a port not allowed", get("example.com:22", method="CONNECT"), 403,
         "port 22 is not allowed for example.com"),
        ("Host differs from the URI", get(f"http://127.0.0.1:{up}/", auth + "Host: example.com\r\n"), 400,
         "the Host header names another host"),
        ("Host names the loopback name", get(f"http://127.0.0.1:{up}/", auth + f"Host: localhost:{up}\r\n"), 400,
         "the Host header names another host"),
        ("Host differs from CONNECT", get(f"127.0.0.1:{up}", auth + "Host: example.com:443\r\n", "CONNECT"), 400,
         "the Host header names another host"),
        ("two Host headers", get(f"http://127.0.0.1:{up}/", auth + f"Host: 127.0.0.1:{up}\r\nHost: x\r\n"), 400,
         "repeated"),
        ("an origin-form request", get("/echo", auth + f"Host: 127.0.0.1:{up}\r\n"), 400, "not a proxy request"),
        ("an https:// URI in the clear", get(f"https://127.0.0.1:{up}/"), 400, "only http://"),
        ("user information in the URI", get(f"http://127.0.0.1:{up}@outside.example/"), 400, "user information"),
        ("CONNECT without a port", get("example.com", method="CONNECT"), 400, "the port is missing"),
        ("CONNECT to a URI", get(f"http://127.0.0.1:{up}/", method="CONNECT"), 400, "must be HOST:PORT"),
        ("no credentials", get(f"http://127.0.0.1:{up}/", ""), 407, "no proxy credentials"),
        ("a wrong ticket", get(f"http://127.0.0.1:{up}/", f"Proxy-Authorization: {wrong_ticket}\r\n"), 407,
         "unknown proxy credentials"),
        ("another task's name", get(f"http://127.0.0.1:{up}/", f"Proxy-Authorization: {other_task}\r\n"), 407,
         "unknown proxy credentials"),
        ("credentials that are not Basic", get(f"http://127.0.0.1:{up}/", "Proxy-Authorization: Bearer x\r\n"), 407,
         "unknown proxy credentials"),
        ("a name that resolves to loopback", get(f"http://localhost:{up}/"), 403,
         "localhost resolves to 127.0.0.1, a loopback address"),
        ("loopback under the open policy", get(f"http://127.0.0.1:{up}/", open_auth), 403,
         "127.0.0.1 is a loopback address"),
        ("Content-Length and chunked", get(f"http://127.0.0.1:{up}/", auth + "Content-Length: 5\r\n"
                                           "Transfer-Encoding: chunked\r\n", "POST"), 400, "both"),
        ("a coding other than chunked", get(f"http://127.0.0.1:{up}/", auth + "Transfer-Encoding: gzip\r\n", "POST"),
         400, "chunked only"),
        ("a folded header", get(f"http://127.0.0.1:{up}/", auth + "X-A: 1\r\n  folded\r\n"), 400, "folding"),
        ("a space before the colon", get(f"http://127.0.0.1:{up}/", auth + "X-A : 1\r\n"), 400, "no space"),
        ("a request line of garbage", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", 400, "malformed"),
        ("a head too large", get(f"http://127.0.0.1:{up}/", auth + "X-Big: " + "a" * 40000 + "\r\n"), 431,
         "longer than"),
    ]  # fmt: skip
    refused = 0
    for what, request, status, reason in attempts:
        before = len(harness.records)
        answer = harness.raw(request)
        assert status_of(answer) == status, (what, answer[:300])
        records = harness.wait_records(before + 1)
        assert len(records) == before + 1, what
        record = records[-1]
        assert record.decision == "refused" and reason in record.reason, (what, record)
        assert record.bytes_up == record.bytes_down == 0, what
        assert harness.ticket["t1"] not in record.to_json() and harness.ticket["t1"].encode() not in answer
        refused += 1

    # A redirect from an allowed server to a host outside: the client gets the redirect and
    # follows it; the follow-up is refused like any other request.
    before = len(harness.records)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": harness.url()}))
    with pytest.raises(urllib.error.HTTPError) as caught:
        opener.open(f"http://127.0.0.1:{up}/redirect", timeout=WAIT)
    assert caught.value.code == 403
    assert caught.value.url == "http://outside.example/next"
    # Each is recorded as its connection ends: the refusal may come before the redirect's record.
    allowed, followed = sorted(harness.wait_records(before + 2)[before:], key=lambda record: record.decision)
    assert (allowed.decision, allowed.reason) == ("allowed", "policy test: answered 302")
    assert (followed.decision, followed.host) == ("refused", "outside.example")
    assert "not allowed by the policy test" in followed.reason
    refused += 1
    attempts_made = len(attempts) + 1

    assert [request["path"] for request in upstream.requests] == ["/redirect"]  # nothing else reached it
    assert echo.accepted == []
    print(f"\n{attempts_made} attempts: {refused} refused")
    assert refused == attempts_made


def test_a_client_that_stays_silent_is_dropped_after_the_head_timeout(upstream: Upstream):
    policies = {"t1": parse_policy(f"127.0.0.1:{upstream.port}", name="test", source="test")}
    with make_harness(policies, ProxySettings(head_timeout=0.5)) as harness:
        with socket.create_connection(("127.0.0.1", harness.port), timeout=WAIT) as sock:
            sock.sendall(b"GET http://127.0.0.1/ HTTP/1.1\r\n")  # and never the rest
            answer = b""
            while piece := sock.recv(65536):
                answer += piece
        assert status_of(answer) == 408
        (record,) = harness.wait_records(1)
        assert record.decision == "refused" and "no whole request head" in record.reason


def test_an_idle_tunnel_is_closed(echo: Listener):
    policies = {"t1": parse_policy(f"127.0.0.1:{echo.port}", name="test", source="test")}
    with make_harness(policies, ProxySettings(idle_timeout=0.5)) as harness:
        with harness.connect(f"127.0.0.1:{echo.port}") as sock:
            assert sock.recv(1) == b""  # the proxy ends it
        (record,) = harness.wait_records(1)
        assert record.decision == "allowed" and record.reason == "policy test: idle for 0.5 s"


def test_one_client_cannot_take_every_connection(echo: Listener):
    allowed = parse_policy(f"127.0.0.1:{echo.port}", name="test", source="test")
    settings = ProxySettings(max_per_client=3, max_per_address=6, max_connections=8)
    with make_harness({"t1": allowed, "t2": allowed}, settings) as harness:
        target = f"127.0.0.1:{echo.port}"
        held = [harness.connect(target) for _ in range(3)]
        refused = harness.raw(f"CONNECT {target} HTTP/1.1\r\nProxy-Authorization: {harness.auth()}\r\n\r\n".encode())
        assert status_of(refused) == 429 and b"the task has 3 connections open" in refused
        wait_until(lambda: harness.proxy.open_connections == 3, "the refused connection to end", timeout=WAIT)
        other = harness.connect(target, task="t2")  # another task still gets through
        # Connections that send nothing hold no more than their address's share.
        silent = [socket.create_connection(("127.0.0.1", harness.port)) for _ in range(2)]
        wait_until(lambda: harness.proxy.open_connections == 6, "six connections open", timeout=WAIT)
        turned_away = harness.raw(b"")  # turned away at once, before anything is read
        assert status_of(turned_away) == 429 and b"the limit per address" in turned_away
        elsewhere = harness.connect(target, task="t2", source="127.0.0.2")  # another address is served
        silent.append(socket.create_connection(("127.0.0.1", harness.port), source_address=("127.0.0.3", 0)))
        wait_until(lambda: harness.proxy.open_connections == 8, "eight connections open", timeout=WAIT)
        full = harness.raw(b"", source="127.0.0.4")
        assert status_of(full) == 503 and b"its limit" in full
        for sock in [*held, other, elsewhere, *silent]:
            sock.close()
        wait_until(lambda: harness.proxy.open_connections == 0, "every connection closed", timeout=WAIT)
        harness.connect(target).close()  # and the first task may connect again
        at_limit = [record.reason for record in harness.records if "connections open" in record.reason]
        assert len(at_limit) == 3, at_limit
        served = sum(record.decision == "allowed" for record in harness.records)
        print(f"\nlimits: {len(at_limit)} connections refused at a limit, {served} tunnels served")


def test_an_answer_the_proxy_cannot_read_two_ways_is_a_502():
    server = socket.create_server(("127.0.0.1", 0))
    answers = [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nhello",
               b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
               b"SSH-2.0-OpenSSH_9.2\r\n\r\n"]  # fmt: skip

    def serve() -> None:
        for answer in answers:
            conn, _ = server.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    port = server.getsockname()[1]
    with server, make_harness({"t1": parse_policy(f"127.0.0.1:{port}", name="test", source="test")}) as harness:
        for number in range(len(answers)):
            answer = harness.raw(f"GET http://127.0.0.1:{port}/ HTTP/1.1\r\n"
                                 f"Proxy-Authorization: {harness.auth()}\r\n\r\n".encode())  # fmt: skip
            assert status_of(answer) == 502 and b"not usable HTTP" in answer, answer
            assert b"hello" not in answer
            record = harness.wait_records(number + 1)[number]
            assert record.decision == "allowed" and "bad answer from the server" in record.reason


def test_stopping_the_proxy_ends_its_tunnels(echo: Listener):
    policies = {"t1": parse_policy(f"127.0.0.1:{echo.port}", name="test", source="test")}
    with make_harness(policies) as harness, harness.connect(f"127.0.0.1:{echo.port}") as sock:
        harness.proxy.stop()
        assert sock.recv(1) == b""
        assert harness.wait_records(1)[0].decision == "allowed"


# --- who is asking --------------------------------------------------------------------------


def test_tickets_name_their_task_only():
    tickets = ProxyTickets()
    ticket = tickets.issue("task-1")
    other = tickets.issue("task-2", networks=["172.30.0.0/24"])

    def basic(user: str, password: str) -> str:
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    assert tickets(("10.0.0.9", 1), basic("task-1", ticket)) == "task-1"
    assert tickets(("10.0.0.9", 1), basic("task-2", ticket)) is None
    assert tickets(("10.0.0.9", 1), basic("task-2", other)) is None  # not from its network
    assert tickets(("172.30.0.7", 1), basic("task-2", other)) == "task-2"
    for header in (None, "", "Basic", "Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode(),
                   "Digest x", basic("task-1", ticket + "x"), basic("task-1", "")):  # fmt: skip
        assert tickets(("10.0.0.9", 1), header) is None, header
    tickets.revoke("task-1")
    assert tickets(("10.0.0.9", 1), basic("task-1", ticket)) is None
    assert basic_credentials(basic("a", "b:c")) == ("a", "b:c")


def test_the_proxy_environment_names_the_proxy_with_the_tasks_credentials():
    env = proxy_environment("10.9.0.2:3128", "task-1", "egress-abc", no_proxy=["relay", "git"])
    assert env["HTTPS_PROXY"] == env["http_proxy"] == "http://task-1:egress-abc@10.9.0.2:3128"
    assert env["NO_PROXY"] == env["no_proxy"] == "relay,git"


def test_records_serialise_as_one_json_line():
    record = EgressRecord(time=0.0, task=None, client="127.0.0.1:5", method="GET", host="a\r\nb", port=80,
                          address=None, decision="refused", reason="r", bytes_up=0, bytes_down=0,
                          duration=0.0123456)  # fmt: skip
    text = record.to_json()
    assert "\n" not in text
    assert json.loads(text) == {"time": "1970-01-01T00:00:00.000+00:00", "task": None, "client": "127.0.0.1:5",
                                "method": "GET", "host": "a\r\nb", "port": 80, "address": None,
                                "decision": "refused", "reason": "r", "bytes_up": 0, "bytes_down": 0,
                                "duration": 0.012}  # fmt: skip
