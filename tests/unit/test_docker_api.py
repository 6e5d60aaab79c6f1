"""The control plane's Docker API filter, against a fake engine (no Docker needed): what it passes
on and streams, what it refuses and why, and that a refused request never reaches the engine."""

from __future__ import annotations

import contextlib
import grp
import http.client
import json
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest

from orchestrator.config import LABEL_ROLE, LABEL_VOLUME
from orchestrator.control.docker_api import MAX_REQUEST_BODY, DockerApiFilter, WorkerPolicy
from orchestrator.control.http_wire import MAX_HEADER_BYTES, MAX_REQUEST_LINE
from orchestrator.errors import InvalidInput, UserError
from tests.support.fake_docker_engine import FakeContainer, FakeDockerEngine, frame
from tests.support.waiting import wait_until

VOLUME = "orch-test-dapi-volume"
OURS = {LABEL_ROLE: "worker", LABEL_VOLUME: VOLUME}
OURS_ID = "a1" + "0" * 62
RAW_ID = "a2" + "0" * 62
OTHER_BATCH_ID = "b1" + "0" * 62
PLANE_ID = "c1" + "0" * 62
MANAGER_ID = "d1" + "0" * 62

CONTAINERS = [
    FakeContainer("worker-task-001", OURS_ID, dict(OURS)),
    FakeContainer("worker-task-raw", RAW_ID, dict(OURS), raw_logs=True),
    FakeContainer("worker-task-009", OTHER_BATCH_ID, {LABEL_ROLE: "worker", LABEL_VOLUME: "another-volume"}),
    FakeContainer("control-plane", PLANE_ID, {}),
    FakeContainer("claude-manager", MANAGER_ID, {LABEL_ROLE: "manager", LABEL_VOLUME: VOLUME}),
]
NOT_OURS = ["worker-task-009", OTHER_BATCH_ID, "b1", "control-plane", PLANE_ID, "c1", "claude-manager", "d1"]


class Refusals:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, str]] = []

    def __call__(self, method: str, path: str, reason: str) -> None:
        self.lines.append((method, path, reason))


@pytest.fixture
def fake_engine(tmp_path: Path) -> Iterator[FakeDockerEngine]:
    fake = FakeDockerEngine(tmp_path / "engine.sock", [FakeContainer(c.name, c.id, dict(c.labels), c.raw_logs)
                                                       for c in CONTAINERS]).start()  # fmt: skip
    yield fake
    fake.stop()


@pytest.fixture
def refusals() -> Refusals:
    return Refusals()


@pytest.fixture
def api_filter(tmp_path: Path, fake_engine: FakeDockerEngine, refusals: Refusals) -> Iterator[DockerApiFilter]:
    """The Docker API filter under test, in front of the fake engine."""
    with DockerApiFilter(tmp_path / "docker.sock", fake_engine.socket_path, WorkerPolicy(VOLUME),
                         on_refused=refusals) as api_filter:  # fmt: skip
        yield api_filter


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float = 30):
        super().__init__("docker", timeout=timeout)
        self.socket_path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def connect(api_filter: DockerApiFilter) -> UnixHTTPConnection:
    return UnixHTTPConnection(api_filter.socket_path)


def call(api_filter: DockerApiFilter, method: str, target: str, headers: dict[str, str] | None = None,
         body: bytes | None = None) -> tuple[int, bytes, http.client.HTTPResponse]:  # fmt: skip
    conn = connect(api_filter)
    conn.request(method, target, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, data, response


def message(data: bytes) -> str:
    return json.loads(data)["message"]


def read_until(response: http.client.HTTPResponse, needle: bytes) -> bytes:
    """Read what arrives until ``needle`` has (the connection's timeout ends a wait that would hang)."""
    got = b""
    while needle not in got:
        piece = response.read1(65536)
        assert piece, f"the stream ended before {needle!r}: {got!r}"
        got += piece
    return got


def raw(api_filter: DockerApiFilter, data: bytes) -> tuple[int, bytes]:
    """Send bytes as they are; the status and body of the answer (the filter closes after a refusal)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(api_filter.socket_path))
        with contextlib.suppress(BrokenPipeError):  # it answered and closed before taking all of it
            sock.sendall(data)
        answer = b""
        # A socket closed with some of the request unread resets its peer after the answer.
        with contextlib.suppress(ConnectionResetError):
            while piece := sock.recv(65536):
                answer += piece
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


# -- what passes -------------------------------------------------------------------------------


def test_ping_and_version_pass_for_the_cli_to_negotiate(api_filter: DockerApiFilter, fake_engine: FakeDockerEngine):
    status, data, response = call(api_filter, "HEAD", "/_ping")
    assert status == 200 and data == b"" and response.getheader("Api-Version") == "1.41"
    status, data, response = call(api_filter, "GET", "/_ping")
    assert (status, data) == (200, b"OK")
    assert response.getheader("X-Engine-Hop") is None, "a header the engine named in Connection went on"
    status, data, _ = call(api_filter, "GET", "/v1.41/version")
    assert status == 200 and json.loads(data)["ApiVersion"] == "1.41"
    assert fake_engine.paths() == ["HEAD /_ping", "GET /_ping", "GET /v1.41/version"]


@pytest.mark.parametrize("prefix", ["", "/v1.41"])
@pytest.mark.parametrize("ref", ["worker-task-001", OURS_ID, "a1"])
def test_a_worker_named_by_name_id_or_prefix_is_acted_on_by_its_full_id(
    api_filter: DockerApiFilter, fake_engine: FakeDockerEngine, prefix: str, ref: str
):
    for method, action, expected in [("GET", "json", 200), ("GET", "top?ps_args=aux", 200),
                                     ("GET", "stats?stream=0", 200), ("POST", "stop?t=1", 204),
                                     ("POST", "kill?signal=KILL", 204)]:  # fmt: skip
        fake_engine.seen.clear()
        status, data, _ = call(api_filter, method, f"{prefix}/containers/{ref}/{action}")
        assert status == expected, data
        # Resolved first, then acted on by the id the policy was checked on (never by the name).
        assert fake_engine.paths() == [
            f"GET /containers/{ref}/json",
            f"{method} {prefix}/containers/{OURS_ID}/{action}",
        ]
    assert api_filter.counts.refused == 0


def test_the_list_is_filtered_to_the_workers_and_keeps_the_cli_query(
    api_filter: DockerApiFilter, fake_engine: FakeDockerEngine
):
    filters = json.dumps({"label": {f"{LABEL_ROLE}=worker": True}, "name": {"worker-": True}})
    status, data, _ = call(api_filter, "GET", "/v1.41/containers/json?" + urlencode({"all": "1", "filters": filters}))
    assert status == 200
    assert sorted(entry["Id"] for entry in json.loads(data)) == [OURS_ID, RAW_ID]
    assert fake_engine.seen[0].query == {"all": ["1"], "filters": [filters]}


@pytest.mark.parametrize("ref", ["worker-task-001", "worker-task-raw"])
def test_a_followed_log_streams_as_it_comes_chunked_or_raw(
    api_filter: DockerApiFilter, fake_engine: FakeDockerEngine, ref: str
):
    conn = connect(api_filter)
    conn.request("GET", f"/v1.41/containers/{ref}/logs?follow=1&stdout=1&stderr=1")
    response = conn.getresponse()
    assert response.status == 200
    first = read_until(response, b"line-1")
    assert not fake_engine.released.is_set(), "the first line came only after the engine ended its answer"
    fake_engine.release()
    rest = response.read()
    assert first + rest == frame(1, "line-1\n") + frame(2, "line-2\n") + frame(1, "the end\n")
    conn.close()


def test_a_wait_answers_its_head_at_once_and_its_status_when_the_engine_does(
    api_filter: DockerApiFilter, fake_engine: FakeDockerEngine
):
    conn = connect(api_filter)
    conn.request("POST", "/v1.41/containers/worker-task-001/wait?condition=next-exit")
    response = conn.getresponse()  # the head, while the engine still holds the answer
    assert response.status == 200 and not fake_engine.released.is_set()
    fake_engine.release()
    assert json.loads(response.read()) == {"Error": None, "StatusCode": 0}


def test_a_stats_stream_comes_piece_by_piece(api_filter: DockerApiFilter, fake_engine: FakeDockerEngine):
    conn = connect(api_filter)
    conn.request("GET", "/containers/a1/stats?stream=1")
    response = conn.getresponse()
    first = read_until(response, b"\n")
    assert json.loads(first)["id"] == OURS_ID and not fake_engine.released.is_set()
    fake_engine.release()
    assert json.loads(response.read())["id"] == OURS_ID


def test_events_are_forced_to_the_workers_and_checked_again(api_filter: DockerApiFilter, fake_engine: FakeDockerEngine):
    given = json.dumps({"event": {"start": True}, "type": {"image": True}})
    conn = connect(api_filter)
    conn.request("GET", "/v1.41/events?" + urlencode({"filters": given}))
    response = conn.getresponse()
    fake_engine.release()
    events = [json.loads(line) for line in response.read().splitlines()]
    forced = json.loads(fake_engine.seen[0].query["filters"][0])
    assert forced["type"] == {"container": True} and forced["event"] == {"start": True}
    assert forced["label"] == {f"{LABEL_ROLE}=worker": True, f"{LABEL_VOLUME}={VOLUME}": True}
    # The fake engine ignores filters and sends every event: only the workers' came through.
    assert len(events) == 2 and all(e["Type"] == "container" and e["Actor"]["Attributes"] == OURS for e in events)


def test_an_http_1_0_client_gets_a_stream_that_ends_with_the_connection(
    api_filter: DockerApiFilter, fake_engine: FakeDockerEngine
):
    fake_engine.release()
    status, body = raw(api_filter, b"GET /containers/worker-task-001/stats?stream=1 HTTP/1.0\r\n\r\n")
    assert status == 200 and [json.loads(line)["id"] for line in body.splitlines()] == [OURS_ID, OURS_ID]


def test_one_connection_carries_several_requests(api_filter: DockerApiFilter):
    conn = connect(api_filter)
    for target in ("/_ping", "/containers/worker-task-001/json", "/containers/json"):
        conn.request("GET", target)
        response = conn.getresponse()
        assert response.status == 200
        response.read()
    conn.close()


def test_only_plain_headers_reach_the_engine(api_filter: DockerApiFilter, fake_engine: FakeDockerEngine):
    call(api_filter, "GET", "/version", {"User-Agent": "Docker-Client/28", "Authorization": "Bearer x",
                                  "X-Registry-Auth": "e30=", "Proxy-Authorization": "Basic eA==",
                                  "Accept-Encoding": "gzip", "Connection": "keep-alive, X-Extra",
                                  "X-Extra": "1"})  # fmt: skip
    sent = {name.lower() for name in fake_engine.seen[0].headers}
    assert sent == {"user-agent", "host", "connection"}, sent


# -- what is refused ---------------------------------------------------------------------------


OPERATIONS = [("GET", "json"), ("GET", "logs?follow=1"), ("POST", "wait"), ("POST", "stop"), ("POST", "kill"),
              ("GET", "top"), ("GET", "stats")]  # fmt: skip


@pytest.mark.parametrize("ref", NOT_OURS)
@pytest.mark.parametrize("method,action", OPERATIONS)
def test_a_container_that_is_not_a_worker_of_ours_is_refused(
    api_filter: DockerApiFilter, fake_engine: FakeDockerEngine, refusals: Refusals, ref: str, method: str, action: str
):
    status, data, _ = call(api_filter, method, f"/v1.41/containers/{ref}/{action}")
    assert status == 403
    assert f"container {ref!r} is not a worker of this orchestration" in message(data)
    assert "refused by the control plane's Docker API filter" in message(data)
    assert fake_engine.paths() == [f"GET /containers/{ref}/json"], "more than the inspect reached the engine"
    assert refusals.lines == [(method, f"/v1.41/containers/{ref}/{action}", message(data))]


def test_a_container_that_does_not_exist_is_the_engines_404(api_filter: DockerApiFilter, fake_engine: FakeDockerEngine):
    status, data, _ = call(api_filter, "POST", "/v1.41/containers/worker-task-404/stop")
    assert status == 404 and message(data) == "No such container: worker-task-404"
    assert fake_engine.paths() == ["GET /containers/worker-task-404/json"]


REFUSED = [
    ("POST", "/v1.41/containers/create?name=x", b'{"Image":"debian","HostConfig":{"Binds":["/:/host"]}}',
     "the manager may not create containers: workers are started with spawn-worker or orch"),
    ("POST", "/containers/create", b'{"HostConfig":{"Privileged":true}}', "may not create containers"),
    ("POST", "/v1.41/containers/worker-task-001/exec", b'{"Cmd":["sh"]}', "may not exec in containers"),
    ("POST", "/v1.41/exec/0123/start", b"{}", "may not exec in containers"),
    ("POST", "/v1.41/containers/worker-task-001/attach?stream=1", None, "may not attach"),
    ("GET", "/v1.41/containers/worker-task-001/attach/ws", None, "may not attach"),
    ("POST", "/v1.41/containers/worker-task-001/start", None, "may not POST start on containers"),
    ("POST", "/v1.41/containers/worker-task-001/rename?name=x", None, "may not POST rename on containers"),
    ("PUT", "/v1.41/containers/worker-task-001/archive?path=/", b"tar", "may not PUT archive on containers"),
    ("GET", "/v1.41/containers/worker-task-001/export", None, "may not GET export on containers"),
    ("DELETE", "/v1.41/containers/worker-task-001?force=1", None, "may not remove containers"),
    ("POST", "/v1.41/containers/prune", None, "may not prune containers"),
    ("POST", "/v1.41/build?t=x", b"tar", "may not build images"),
    ("POST", "/session", None, "may not open BuildKit sessions"),
    ("GET", "/v1.41/images/json", None, "may not use images"),
    ("POST", "/v1.41/images/create?fromImage=x", None, "may not use images"),
    ("POST", "/v1.41/commit?container=x", None, "may not commit containers"),
    ("GET", "/v1.41/volumes", None, "may not use volumes"),
    ("GET", "/v1.41/networks", None, "may not use networks"),
    ("POST", "/v1.41/swarm/init", b"{}", "may not use swarm"),
    ("GET", "/v1.41/services", None, "may not use swarm services"),
    ("GET", "/v1.41/secrets", None, "may not use secrets"),
    ("GET", "/v1.41/plugins", None, "may not use plugins"),
    ("GET", "/v1.41/info", None, "may not read the engine's system information"),
    ("GET", "/v1.41/system/df", None, "may not read or prune the engine's system"),
    ("POST", "/v1.41/auth", b"{}", "may not log in to registries"),
    ("GET", "/v1.41/containers/worker-task-001", None, "may not GET (none) on containers"),
    ("HEAD", "/v1.41/version", None, "is not an operation the manager may use"),
    ("GET", "/v1.41/anything-new", None, "GET /anything-new is not an operation the manager may use"),
]  # fmt: skip


@pytest.mark.parametrize("method,target,body,rule", REFUSED, ids=[f"{m} {t}" for m, t, _, _ in REFUSED])
def test_everything_else_is_refused_with_the_rule_and_never_reaches_the_engine(
    api_filter: DockerApiFilter, fake_engine: FakeDockerEngine, refusals: Refusals, method: str, target: str,
    body: bytes | None, rule: str,
):  # fmt: skip
    status, data, _ = call(api_filter, method, target, {"Content-Type": "application/json"} if body else {}, body)
    assert status == 403
    if method != "HEAD":
        assert rule in message(data) and message(data).endswith("(refused by the control plane's Docker API filter)")
    assert fake_engine.seen == []
    assert len(refusals.lines) == 1 and refusals.lines[0][:2] == (method, target) and rule in refusals.lines[0][2]


@pytest.mark.parametrize("target", [
    "/containers/..%2f..%2fimages/json", "/v1.41/../build", "/v1.41/containers/../images/json",
    "/containers/./worker-task-001/json", "/containers/%77orker-task-001/json", "/v1.41/containers/a1%2fjson",
    "/containers//json", "/containers/json/", "//containers/json", "/containers/worker-task-001/json;x",
    "http://docker/containers/json", "*",
])  # fmt: skip
def test_dot_segments_and_encoded_forms_are_refused(
    api_filter: DockerApiFilter, fake_engine: FakeDockerEngine, target: str
):
    status, data = raw(api_filter, f"GET {target} HTTP/1.1\r\nHost: docker\r\n\r\n".encode())
    assert status in (400, 403)
    assert "the path is not plain" in message(data) or "the target is not a path" in message(data)
    assert fake_engine.seen == []


@pytest.mark.parametrize("filters", ["not json", "[1]", '{"label": "x"}', '{"label": [1]}'])
def test_a_malformed_events_filter_is_refused(api_filter: DockerApiFilter, fake_engine: FakeDockerEngine, filters: str):
    status, data, _ = call(api_filter, "GET", "/events?" + urlencode({"filters": filters}))
    assert status == 400 and "the events filter" in message(data)
    assert fake_engine.seen == []


def test_a_connection_upgrade_is_refused(api_filter: DockerApiFilter, fake_engine: FakeDockerEngine):
    status, data, _ = call(api_filter, "GET", "/v1.41/containers/worker-task-001/logs",
                           {"Connection": "Upgrade", "Upgrade": "tcp"})  # fmt: skip
    assert status == 403 and "may not attach to containers or upgrade connections" in message(data)
    assert fake_engine.seen == []


def test_oversize_request_line_headers_and_bodies_are_refused(
    api_filter: DockerApiFilter, fake_engine: FakeDockerEngine
):
    long_target = "/containers/json?all=" + "1" * MAX_REQUEST_LINE
    assert raw(api_filter, f"GET {long_target} HTTP/1.1\r\n\r\n".encode())[0] == 414
    big_header = f"GET /_ping HTTP/1.1\r\nX-Big: {'x' * MAX_HEADER_BYTES}\r\n\r\n"
    assert raw(api_filter, big_header.encode())[0] == 431
    many = "".join(f"X-{i}: 1\r\n" for i in range(100))
    assert raw(api_filter, f"GET /_ping HTTP/1.1\r\n{many}\r\n".encode())[0] == 431
    body = b"x" * (MAX_REQUEST_BODY + 1)
    stop = b"POST /containers/worker-task-001/stop HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body)
    assert raw(api_filter, stop + body)[0] == 413
    chunked = b"POST /containers/worker-task-001/stop HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunks = b"".join(b"%x\r\n%s\r\n" % (65536, b"y" * 65536) for _ in range(17)) + b"0\r\n\r\n"
    assert raw(api_filter, chunked + chunks)[0] == 413
    assert fake_engine.seen == [], "an oversize request reached the engine"
    assert api_filter.counts.refused == 5


@pytest.mark.parametrize("head", [
    "POST /containers/a1/stop HTTP/1.1\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n",
    "POST /containers/a1/stop HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 5\r\n",
    "POST /containers/a1/stop HTTP/1.1\r\nContent-Length: -1\r\n",
    "POST /containers/a1/stop HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n",
    "GET /_ping HTTP/1.1\r\nX-A: 1\r\n folded\r\n",
    "GET /_ping HTTP/1.1\r\nHost: a\r\nHost: b\r\n",
    "GET /_ping HTTP/2.0\r\n",
    "get /_ping HTTP/1.1\r\n",
    "GET /_ping\r\n",
])  # fmt: skip
def test_a_request_that_could_be_read_two_ways_is_refused(
    api_filter: DockerApiFilter, fake_engine: FakeDockerEngine, head: str
):
    status, _ = raw(api_filter, (head + "\r\n").encode())
    assert status == 400
    assert fake_engine.seen == []


def test_a_refusal_logs_untrusted_text_as_text(api_filter: DockerApiFilter, refusals: Refusals):
    raw(api_filter, b"GET /v1.41/images/\x1b[31mred HTTP/1.1\r\n\r\n")
    assert refusals.lines[0][1] == "/v1.41/images/\\x1b[31mred"


# -- connections -------------------------------------------------------------------------------


def test_a_client_that_hangs_up_frees_the_engine_connection(api_filter: DockerApiFilter, fake_engine: FakeDockerEngine):
    conn = connect(api_filter)
    conn.request("GET", "/containers/worker-task-001/logs?follow=1")
    read_until(conn.getresponse(), b"line-1")
    conn.close()
    assert fake_engine.gone.wait(30), "the engine's stream was still held after the client went away"


def test_stop_ends_the_streams_in_flight(tmp_path: Path, fake_engine: FakeDockerEngine):
    api_filter = DockerApiFilter(tmp_path / "docker.sock", fake_engine.socket_path, WorkerPolicy(VOLUME)).start()
    conn = connect(api_filter)
    conn.request("GET", "/containers/worker-task-001/logs?follow=1")
    response = conn.getresponse()
    read_until(response, b"line-1")
    api_filter.stop()
    with pytest.raises(http.client.IncompleteRead):
        response.read()
    assert fake_engine.gone.wait(30)
    assert not (tmp_path / "docker.sock").exists()


def test_connections_beyond_the_limit_are_answered_503(tmp_path: Path, fake_engine: FakeDockerEngine):
    with DockerApiFilter(tmp_path / "docker.sock", fake_engine.socket_path, WorkerPolicy(VOLUME),
                         max_connections=2) as api_filter:  # fmt: skip
        held = [connect(api_filter), connect(api_filter)]
        for conn in held:
            conn.request("GET", "/_ping")
            conn.getresponse().read()  # both are being served (and stay open: keep-alive)
        status, data = raw(api_filter, b"GET /_ping HTTP/1.1\r\n\r\n")
        assert status == 503 and "too many connections" in message(data)
        held[0].close()
        wait_until(
            lambda: raw(api_filter, b"GET /_ping HTTP/1.1\r\nConnection: close\r\n\r\n")[0] == 200,
            "the slot of the closed connection to be free",
            timeout=30,
        )
        held[1].close()


# -- the socket and the policy ----------------------------------------------------------------


def test_the_socket_has_the_mode_and_group_asked_for(tmp_path: Path, fake_engine: FakeDockerEngine):
    group = grp.getgrall()[-1].gr_gid
    with DockerApiFilter(tmp_path / "docker.sock", fake_engine.socket_path, WorkerPolicy(VOLUME), mode=0o660,
                         group=group) as api_filter:  # fmt: skip
        info = os.stat(api_filter.socket_path)
        assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o660 and info.st_gid == group
        assert api_filter.url == f"unix://{tmp_path / 'docker.sock'}"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["docker.sock", "engine.sock"]


def test_the_socket_path_is_not_taken_from_a_file_or_a_live_server(tmp_path: Path, fake_engine: FakeDockerEngine):
    (tmp_path / "file").write_text("mine")
    with pytest.raises(UserError, match="is not a socket"):
        DockerApiFilter(tmp_path / "file", fake_engine.socket_path, WorkerPolicy(VOLUME)).start()
    with pytest.raises(UserError, match="in use"):
        DockerApiFilter(fake_engine.socket_path, fake_engine.socket_path, WorkerPolicy(VOLUME)).start()
    assert (tmp_path / "file").read_text() == "mine"


def test_the_policy_owns_only_workers_of_its_volume():
    policy = WorkerPolicy(VOLUME)
    assert policy.owns(OURS)
    assert not policy.owns({LABEL_ROLE: "worker", LABEL_VOLUME: "another"})
    assert not policy.owns({LABEL_ROLE: "manager", LABEL_VOLUME: VOLUME})
    assert not policy.owns({LABEL_VOLUME: VOLUME}) and not policy.owns(None) and not policy.owns(["x"])
    assert policy.owns_inspected({"Config": {"Labels": OURS}}) and not policy.owns_inspected({"Labels": OURS})
    for bad in ("", "a b", "../x", "x\n"):
        with pytest.raises(InvalidInput):
            WorkerPolicy(bad)
