"""The API relay over real HTTP on loopback, with the scripted API as the endpoint: what it passes
on and what it refuses, bodies, the cost it measures, budgets, and the API's rate limits. And
the git credential helper, the other thing that hands a secret out."""

from __future__ import annotations

import http.client
import http.server
import json
import socket
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from orchestrator import prices
from orchestrator.credential import answer
from orchestrator.relay import ApiRelay, Notice, NoticeKind, RelaySettings
from orchestrator.secrets import ClaudeCredential
from orchestrator.worker_access import ApiEndpoint, NoticeReader
from tests.support.scripted_api import Reply, Request, ScriptedAPI, attempts, costing, dynamic, error, slow, text
from tests.support.waiting import wait_until

MESSAGES = "/v1/messages?beta=true"


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def error(self) -> dict:
        return json.loads(self.body)["error"]


def send(url: str, method: str, target: str, headers: dict[str, str], body: bytes = b"") -> Answer:
    """A request with ``target`` exactly as given on its request line."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
    try:
        conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", "127.0.0.1")
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return Answer(response.status, dict(response.getheaders()), response.read())
    finally:
        conn.close()


def conversation(marker: str, *, stream: bool = True, model: str = "claude-sonnet-4-5", pad: str = "") -> bytes:
    return json.dumps({
        "model": model, "stream": stream, "tools": [{"name": "Bash"}],
        "messages": [{"role": "user", "content": marker + pad}],
    }).encode()  # fmt: skip


def ask(relay: ApiRelay, marker: str, ticket: str | None = None, **options: object) -> Answer:
    auth = {"Authorization": f"Bearer {ticket or relay.ticket}", "Content-Type": "application/json"}
    return send(relay.url, "POST", MESSAGES, auth, conversation(marker, **options))  # type: ignore[arg-type]


@pytest.fixture
def make_relay(api: ScriptedAPI, token: str, notices: list[Notice]) -> Iterator[Callable[..., ApiRelay]]:
    relays: list[ApiRelay] = []

    def make(upstream: str | None = None, **settings: object) -> ApiRelay:
        options = RelaySettings(**settings)  # type: ignore[arg-type]
        relay = ApiRelay(ClaudeCredential(token), upstream or api.url, on_notice=notices.append, settings=options)
        relay.start()
        relays.append(relay)
        return relay

    yield make
    for relay in relays:
        relay.stop()


def parallel(count: int, work: Callable[[int], Answer]) -> list[Answer]:
    answers: list[Answer | None] = [None] * count

    def run(index: int) -> None:
        answers[index] = work(index)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert all(answer is not None for answer in answers), "a request got no answer"
    return [answer for answer in answers if answer is not None]


# ---- the credential, and only for Claude Code's requests ---------------------------------------------


def test_the_ticket_is_swapped_for_the_real_token_and_the_stream_comes_back(api, make_relay, token):
    api.script("RELAY-1", text("hello through the relay"))
    relay = make_relay()
    env = relay.agent_environment()
    assert env == {"ANTHROPIC_BASE_URL": relay.url, "CLAUDE_CODE_OAUTH_TOKEN": relay.ticket}
    answer = ask(relay, "RELAY-1")
    assert answer.status == 200 and answer.headers["Content-Type"].startswith("text/event-stream")
    assert b"event: message_start" in answer.body and b"hello through the relay" in answer.body
    assert answer.body.endswith(b'event: message_stop\ndata: {"type": "message_stop"}\n\n')
    assert api.authorizations() == [f"Bearer {token}"]
    assert api.requests[0].path == MESSAGES and api.requests[0].header("accept-encoding") == "identity"


def test_the_agents_own_credential_headers_never_go_on(api, make_relay, token):
    api.script("RELAY-6", text("ok"))
    relay = make_relay()
    headers = {"Authorization": f"Bearer {relay.ticket}", "x-api-key": "sk-ant-api03-agent", "X-Extra": "kept",
               "Proxy-Authorization": "Basic x", "Content-Type": "application/json"}  # fmt: skip
    assert send(relay.url, "POST", MESSAGES, headers, conversation("RELAY-6")).status == 200
    [arrived] = api.requests
    assert arrived.header("authorization") == f"Bearer {token}" and arrived.header("x-api-key") is None
    assert arrived.header("proxy-authorization") is None and arrived.header("x-extra") == "kept"


def test_an_api_key_goes_as_x_api_key(api: ScriptedAPI, notices: list[Notice]):
    key = "sk-ant-api03-" + "k" * 40
    api.script("RELAY-2", text("ok"))
    with ApiRelay(ClaudeCredential(key), api.url) as relay:
        env = relay.agent_environment()
        assert env["ANTHROPIC_API_KEY"] == relay.ticket and "CLAUDE_CODE_OAUTH_TOKEN" not in env
        headers = {"x-api-key": relay.ticket, "Content-Type": "application/json"}
        assert send(relay.url, "POST", MESSAGES, headers, conversation("RELAY-2")).status == 200
    assert api.api_keys() == [key] and api.authorizations() == []


def test_the_probe_is_answered_by_the_relay(api, make_relay):
    relay = make_relay()
    assert send(relay.url, "HEAD", "/api/hello", {}).status == 200
    assert api.requests == []


def test_without_a_valid_ticket_nothing_goes_upstream(api, make_relay, token):
    api.script("RELAY-3", text("ok"))
    relay = make_relay()
    other = make_relay()  # another relay's ticket is worth nothing here
    revoked = relay.issue_ticket("task-9")
    relay.revoke(revoked)
    guesses = [{}, {"Authorization": "Bearer a-guess"}, {"x-api-key": "relay-x"},
               {"Authorization": f"Bearer {revoked}"}, {"Authorization": f"Bearer {other.ticket}"},
               {"Authorization": f"Bearer {token}"}, {"Authorization": f"Basic {relay.ticket}"}]  # fmt: skip
    for headers in guesses:
        answer = send(relay.url, "POST", MESSAGES, headers, conversation("RELAY-3"))
        assert (answer.status, answer.error["type"]) == (401, "authentication_error")
        assert answer.headers["x-should-retry"] == "false"
    assert api.requests == []
    assert relay.stats()["unauthorized"] == len(guesses)


def test_each_ticket_spends_from_its_own_account(api, make_relay):
    api.script("RELAY-4", text("ok"))
    relay = make_relay()
    one, two = relay.issue_ticket("task-1"), relay.issue_ticket("task-2")
    assert ask(relay, "RELAY-4", two).status == 200
    assert relay.account("task-2").requests == 1 and relay.account("task-2").cost_usd > 0
    assert relay.account("task-1").requests == 0 and relay.account("task-1").cost_usd == 0
    assert one != two and relay.ticket not in (one, two)


@pytest.mark.parametrize(
    ("method", "target"),
    [("GET", "/api/oauth/profile"), ("POST", "/api/oauth/token"), ("GET", "/v1/organizations/org-1/usage"),
     ("GET", "/v1/models"), ("POST", "/v1/messages"), ("POST", "/v1/messages?beta=false"),
     ("POST", "/v1/messages/batches?beta=true"), ("POST", "/v1/complete"), ("GET", MESSAGES), ("PUT", MESSAGES),
     ("DELETE", MESSAGES), ("PATCH", MESSAGES), ("OPTIONS", MESSAGES), ("BREW", MESSAGES), ("HEAD", MESSAGES),
     ("GET", "/api/hello"), ("HEAD", "/api/hello?x=1")],
)  # fmt: skip
def test_what_claude_code_does_not_send_is_a_403_counted_and_told(api, make_relay, notices, token, method, target):
    relay = make_relay()
    answer = send(relay.url, method, target, {"Authorization": f"Bearer {relay.ticket}"}, b"{}")
    assert answer.status == 403
    if method != "HEAD":
        assert answer.error["type"] == "permission_error"
    assert api.requests == []
    assert relay.account("agent").refused == 1
    assert [n.kind for n in notices] == [NoticeKind.REFUSED] and notices[0].account == "agent"
    assert token not in notices[0].message and relay.ticket not in notices[0].message


def test_refusals_are_told_up_to_a_bound_then_only_counted(api, make_relay, notices):
    relay = make_relay()
    for _ in range(25):
        assert send(relay.url, "GET", "/v1/models", {"Authorization": f"Bearer {relay.ticket}"}).status == 403
    assert relay.account("agent").refused == 25
    assert len(notices) == 20 and notices[-1].message.endswith("from now on, such requests are only counted")


@pytest.mark.parametrize(
    "target",
    ["/v1/../v1/messages?beta=true", "/v1/./messages?beta=true", "/v1/messages/..?beta=true",
     "/v1/%2e%2e/v1/messages?beta=true", "/v1/%2E%2E/v1/messages?beta=true", "/v1/%2e/messages?beta=true",
     "/v1/%252e%252e/v1/messages?beta=true", "/v1/%25252e%25252e/messages?beta=true", "/v1%2fmessages?beta=true",
     "/v1%252fmessages?beta=true", "/v1\\messages?beta=true", "/v1%5cmessages?beta=true",
     "/v1/messages%00?beta=true", "/v1/messages%2500?beta=true", "/v1/mess%61ges?beta=true",
     ".evil.test/v1/messages", "@evil.test/v1/messages", "http://evil.test/v1/messages", ":1/v1/messages",
     "/v1/messages\\@evil.test", "*"],
)  # fmt: skip
def test_dot_segments_and_what_is_not_a_plain_path_are_refused_in_every_encoding(api, make_relay, notices, target):
    relay = make_relay()
    answer = send(relay.url, "POST", target, {"Authorization": f"Bearer {relay.ticket}"}, conversation("x"))
    assert answer.status == 403 and "does not pass this request on" in answer.error["message"]
    assert api.requests == [] and relay.account("agent").refused == 1


def test_a_redirect_is_handed_back_not_followed(make_relay, token):
    """An endpoint that redirects (a gateway, say) does not get the relay to carry the credential
    elsewhere: the agent sees the redirect."""
    seen: list[str | None] = []

    class Redirecting(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append(self.headers.get("authorization"))
            self.rfile.read(int(self.headers["content-length"]))
            self.send_response(307)
            self.send_header("Location", "http://127.0.0.1:9/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirecting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        relay = make_relay(f"http://127.0.0.1:{server.server_address[1]}")
        answer = ask(relay, "x")
    finally:
        server.shutdown()
        server.server_close()
    assert answer.status == 307 and answer.headers["Location"].endswith("/elsewhere")
    assert seen == [f"Bearer {token}"]  # the endpoint itself, once; the redirect was not followed


def test_an_endpoint_with_a_path_keeps_it(token):
    from orchestrator.relay_input import ROUTES

    relay = ApiRelay(ClaudeCredential(token), "https://gateway.example/anthropic/")
    assert relay.upstream_url(ROUTES[0]) == "https://gateway.example/anthropic/v1/messages?beta=true"
    with pytest.raises(ValueError, match="not an endpoint"):
        ApiRelay(ClaudeCredential(token), "gateway.example/anthropic")


def test_api_errors_come_back_as_they_are(api, make_relay):
    api.script("RELAY-5", error(500, "scripted failure", should_retry=False))
    answer = ask(make_relay(), "RELAY-5")
    assert answer.status == 500 and answer.headers.get("x-should-retry") == "false"
    assert answer.error["message"] == "scripted failure"


def test_an_unreachable_endpoint_is_a_502_that_names_it(make_relay, notices, token):
    relay = make_relay("http://127.0.0.1:9")
    answer = ask(relay, "x")
    assert answer.status == 502 and "cannot reach http://127.0.0.1:9" in answer.error["message"]
    assert [n.kind for n in notices] == [NoticeKind.UNREACHABLE] and token not in notices[0].message


# ---- bodies --------------------------------------------------------------------------------------------


def upload(relay: ApiRelay, total: int, *, chunked: bool, block: bytes = b"x" * 65536) -> Answer:
    """A body of ``total`` bytes sent in pieces (the same block again: the sender holds no copy),
    while the answer is read; a relay that stops reading makes the sender stop."""
    parts = urlsplit(relay.url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=60)
    head = f"POST {MESSAGES} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {relay.ticket}\r\n"
    head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {total}\r\n\r\n"

    def send_body() -> None:
        try:
            sock.sendall(head.encode())
            sent = 0
            while sent < total:
                piece = block[: total - sent]
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                sent += len(piece)
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # refused half way: the relay closed the connection

    sender = threading.Thread(target=send_body)
    sender.start()
    response = http.client.HTTPResponse(sock)
    response.begin()
    answer = Answer(response.status, dict(response.getheaders()), response.read())
    sock.close()
    sender.join(timeout=120)
    return answer


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_40_mb_body_is_refused_with_413_without_the_relay_holding_it(api, make_relay, chunked: bool):
    relay = make_relay()
    tracemalloc.start()
    try:
        answer = upload(relay, 40 * 1000 * 1000, chunked=chunked)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"\n40 MB body ({'chunked' if chunked else 'content-length'}): 413, peak memory traced {peak / 1e6:.1f} MB")
    assert (answer.status, answer.error["type"]) == (413, "request_too_large")
    assert peak < 8 * 1000 * 1000  # the spool holds 1 MiB in memory; the rest is on disk or never read
    assert api.requests == []


def test_a_3_mb_chunked_body_reaches_the_api_intact(api, make_relay):
    api.script("BIG-1", text("read it all"))
    relay = make_relay()
    body = conversation("BIG-1", pad=" " + "0123456789abcdef" * (3 * 1024 * 1024 // 16))
    parts = urlsplit(relay.url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=60)
    pieces = (body[at : at + 100_000] for at in range(0, len(body), 100_000))
    auth = {"Authorization": f"Bearer {relay.ticket}"}
    conn.request("POST", MESSAGES, body=pieces, headers=auth, encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 200 and b"read it all" in response.read()
    conn.close()
    [arrived] = api.requests
    assert json.dumps(arrived.body).encode() == body and len(body) > 3 * 1024 * 1024


# ---- cost ----------------------------------------------------------------------------------------------


def expected_cost(model_key: str, input: int, output: int, cache_creation: int = 0, cache_read: int = 0) -> float:
    rates = prices.MODELS[model_key]
    return (input * rates["input"] + output * rates["output"] + cache_creation * rates["cache_write"]
            + cache_read * rates["cache_read"]) / 1e6  # fmt: skip


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "json"])
@pytest.mark.parametrize(
    ("model", "key"),
    [("claude-sonnet-4-5", "claude-sonnet-4-5"), ("claude-opus-4-5-20251101", "claude-opus-4-5"),
     ("claude-haiku-4-5", "claude-haiku-4-5")],
)  # fmt: skip
def test_usage_is_read_from_answers_and_priced_as_the_table_says(api, make_relay, stream, model, key):
    api.script("COST-1", costing(text("one"), input=1234, output=567, cache_creation=890, cache_read=12_345))
    api.script("COST-2", costing(text("two"), input=10, output=20_000))
    relay = make_relay()
    for marker in ("COST-1", "COST-2"):
        assert ask(relay, marker, stream=stream, model=model).status == 200
    view = relay.account("agent")
    cost = expected_cost(key, 1234, 567, 890, 12_345) + expected_cost(key, 10, 20_000)
    print(f"\n{model} ({'streamed' if stream else 'json'}): ${view.cost_usd:.6f}")
    assert view.cost_usd == pytest.approx(cost)
    assert (view.requests, view.input_tokens, view.output_tokens) == (2, 1244, 20_567)
    assert (view.cache_creation_tokens, view.cache_read_tokens) == (890, 12_345)
    assert view.unknown_models == ()


def test_an_unknown_model_is_charged_the_dearest_rates_and_told(api, make_relay, notices):
    api.script("COST-3", costing(text("?"), input=1000, output=1000, model="claude-nova-9"))
    relay = make_relay()
    ask(relay, "COST-3")
    ask(relay, "COST-3")
    assert relay.account("agent").cost_usd == pytest.approx(2 * expected_cost("claude-opus-4-1", 1000, 1000))
    assert relay.account("agent").unknown_models == ("claude-nova-9",)
    assert [n.kind for n in notices] == [NoticeKind.UNKNOWN_MODEL]  # told once


def test_a_price_file_of_the_callers(api, make_relay, tmp_path: Path):
    table = tmp_path / "prices.json"
    rates = {"input": 100, "output": 0, "cache_write": 0, "cache_write_1h": 0, "cache_read": 0}
    table.write_text(json.dumps({"models": {"claude-sonnet-4-5": rates}}))
    api.script("COST-4", costing(text("ok"), input=10_000, output=1))
    relay = make_relay(prices_file=table)
    ask(relay, "COST-4")
    assert relay.account("agent").cost_usd == pytest.approx(1.0)


def test_an_agent_that_goes_away_mid_stream_is_charged_for_the_whole_answer(api, make_relay):
    arrived, gate = threading.Event(), threading.Event()

    def held(request: Request) -> Reply:
        arrived.set()
        gate.wait(60)
        return costing(text("long"), output=40_000)

    api.script("COST-5", dynamic(held))
    relay = make_relay()
    parts = urlsplit(relay.url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=60)
    body = conversation("COST-5")
    sock.sendall(f"POST {MESSAGES} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {relay.ticket}\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)  # fmt: skip
    assert arrived.wait(60), "the request never reached the API"
    sock.close()  # gone before a byte of the answer
    gate.set()
    wait_until(lambda: relay.account("agent").in_flight == 0, "the relay finished reading the answer")
    assert relay.account("agent").cost_usd == pytest.approx(expected_cost("claude-sonnet-4-5", 1000, 40_000))


# ---- budgets -------------------------------------------------------------------------------------------


def test_a_budget_crossed_mid_stream_lets_the_stream_finish_and_refuses_the_next(api, make_relay, notices):
    # $0.003 of input at message_start, then 100,000 output tokens ($1.50) at message_delta.
    api.script("BUDGET-1", costing(text("expensive"), input=1000, output=100_000), text("never sent"))
    relay = make_relay()
    ticket = relay.issue_ticket("task-001", budget_usd=1.00)
    first = ask(relay, "BUDGET-1", ticket)
    assert first.status == 200 and first.body.endswith(b'{"type": "message_stop"}\n\n')
    second = ask(relay, "BUDGET-1", ticket)
    assert (second.status, second.error["type"], second.headers["x-should-retry"]) == (402, "billing_error", "false")
    assert second.error["message"] == "the budget of task-001 is spent: $1.50 of $1.00"
    assert len(api.requests) == 1  # the scripted API's own record: the refused request never arrived
    view = relay.account("task-001")
    assert (view.state, view.over_budget, view.requests) == ("spent", 1, 1)
    assert [(n.kind, n.account) for n in notices] == [(NoticeKind.BUDGET_SPENT, "task-001")]
    relay.set_budget("task-001", 5.0)  # raised: open again
    assert ask(relay, "BUDGET-1", ticket).status == 200


def test_a_budget_of_0_refuses_the_first_request(api, make_relay, notices):
    relay = make_relay()
    ticket = relay.issue_ticket("task-002", budget_usd=0)
    answer = ask(relay, "x", ticket)
    assert answer.status == 402 and answer.error["message"] == "the budget of task-002 is spent: $0.00 of $0.00"
    assert api.requests == [] and [n.kind for n in notices] == [NoticeKind.BUDGET_SPENT]


def test_a_batch_budget_is_shared_by_its_tasks(api, make_relay, notices):
    api.script("BATCH-1", costing(text("a"), input=0, output=40_000))  # $0.60 at claude-sonnet-4-5
    relay = make_relay()
    relay.set_budget("batch-1", 1.00)
    one = relay.issue_ticket("task-1", parent="batch-1", budget_usd=10)
    two = relay.issue_ticket("task-2", parent="batch-1")
    assert ask(relay, "BATCH-1", one).status == 200
    assert ask(relay, "BATCH-1", two).status == 200  # $0.60 spent of the batch's $1.00: let through
    for ticket in (one, two):
        refused = ask(relay, "BATCH-1", ticket)
        assert refused.status == 402 and refused.error["message"] == "the budget of batch-1 is spent: $1.20 of $1.00"
    assert len(api.requests) == 2
    assert relay.account("batch-1").cost_usd == pytest.approx(1.2)
    assert relay.account("task-1").state == relay.account("task-2").state == "spent"
    assert [(n.kind, n.account) for n in notices] == [(NoticeKind.BUDGET_SPENT, "batch-1")]


def test_a_hostile_account_with_100_parallel_requests_gets_its_bound_and_no_more(api, make_relay):
    """Its requests wait in the relay, not at the API; another account's go through meanwhile."""
    release = threading.Event()
    api.script("FLOOD-1", dynamic(lambda request: (release.wait(120), text("flood"))[1]))
    api.script("CALM-1", text("calm"))
    relay = make_relay(account_in_flight=3, max_in_flight=8)
    hostile = relay.issue_ticket("hostile")
    calm = relay.issue_ticket("calm")
    answers: list[Answer] = []
    flood = threading.Thread(target=lambda: answers.extend(parallel(100, lambda i: ask(relay, "FLOOD-1", hostile))))
    flood.start()
    try:
        wait_until(
            lambda: relay.account("hostile").queued == 97 and api.max_in_flight == 3,
            "3 hostile requests at the API, 97 held in the relay",
        )
        assert relay.account("hostile").in_flight == 3
        assert ask(relay, "CALM-1", calm).status == 200  # not stuck behind the flood
        assert relay.account("hostile").queued == 97
    finally:
        release.set()
        flood.join(timeout=300)
    print(f"\n100 parallel requests of one account, bound 3: at most {api.max_in_flight} at the API at once")
    assert [a.status for a in answers] == [200] * 100
    assert api.max_in_flight <= 4  # the hostile account's 3, and the calm one's
    assert relay.account("hostile").requests == 100


# ---- rate limits ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("refusal", "told"),
    [(error(429, retry_after=1), "retry-after 1 s (429)"), (error(429), "429 without retry-after: a pause of 1 s"),
     (error(529), "529 without retry-after: a pause of 1 s")],
    ids=["429-retry-after", "429", "529"],
)  # fmt: skip
def test_a_rate_limit_is_held_and_retried_and_the_agent_sees_success(api, make_relay, notices, refusal, told):
    api.script("LIMIT-1", attempts(refusal, text("after the pause")))
    relay = make_relay()
    answer = ask(relay, "LIMIT-1")
    assert answer.status == 200 and b"after the pause" in answer.body
    assert [r.answer.split()[0] for r in api.requests_for("LIMIT-1")] == [str(refusal.status), "end_turn:"]
    view = relay.account("agent")
    assert (view.rate_limited, view.overloaded) == ((1, 0) if refusal.status == 429 else (0, 1))
    assert view.queued_seconds >= 1.0  # it waited the pause in the relay
    assert [(n.kind, n.message) for n in notices] == [(NoticeKind.BACKOFF, f"waiting on the API's rate limit: {told}")]
    assert relay.stats()["gate"]["bound"] == 4  # halved from 8


def test_a_worker_reads_the_notices_of_its_own_account_and_only_those(api, make_relay, notices):
    # A control plane's relay is not in the worker: the worker's runtime reads its task's notices
    # from the relay and says them in its log.
    api.script("LIMIT-5", attempts(error(429, retry_after=1), text("after the pause")))
    relay = make_relay()
    other = relay.issue_ticket("task-other")
    assert ask(relay, "LIMIT-5", other).status == 200
    send(relay.url, "GET", "/v1/files", {"x-api-key": relay.ticket})  # refused, told to "agent"
    said: list[Notice] = []
    mine = NoticeReader(ApiEndpoint(relay.url, relay.ticket, api_key=False), said.append)
    mine.read()
    assert [n.message for n in said] == [n.message for n in notices if n.kind == NoticeKind.REFUSED]
    assert "refused GET '/v1/files'" in said[0].message
    mine.read()  # nothing new: nothing said twice
    assert len(said) == 1
    theirs: list[Notice] = []
    NoticeReader(ApiEndpoint(relay.url, other, api_key=False), theirs.append).read()
    assert [n.message for n in theirs] == ["waiting on the API's rate limit: retry-after 1 s (429)"]
    # Without a ticket, nothing.
    assert send(relay.url, "GET", "/orchestrator/notices?after=0", {}).status == 401


def test_past_its_wait_a_request_gets_the_apis_last_answer_as_it_came(api, make_relay):
    api.script("LIMIT-2", error(429, "slow down", retry_after=30))
    api.script("LIMIT-3", error(529, "busy", should_retry=False))
    relay = make_relay(max_wait=2)
    answer = ask(relay, "LIMIT-2")  # 30 s is past its 2 s: no point in waiting
    assert (answer.status, answer.error["message"], answer.headers["retry-after"]) == (429, "slow down", "30")
    stats = relay.stats()["gate"]
    assert stats["backing_off"] is True and stats["backoff_seconds_left"] > 20 and stats["bound"] == 4
    assert "retry-after 30 s" in stats["reason"]
    answer = ask(relay, "LIMIT-3")  # waits for the gate to open (it will not within 2 s), then gets the last
    assert answer.status == 429 and "held this request 2 s" in answer.error["message"]
    assert len(api.requests) == 1


def test_the_api_says_not_to_retry(api, make_relay):
    api.script("LIMIT-4", error(529, "busy", should_retry=False), text("never"))
    answer = ask(make_relay(), "LIMIT-4")
    assert (answer.status, answer.error["message"]) == (529, "busy")
    assert len(api.requests) == 1


def test_never_more_than_the_bound_in_flight_upstream(make_relay):
    with ScriptedAPI() as api:
        api.script("CAP-1", slow(0.2, text("ok")))
        relay = make_relay(upstream=api.url, max_in_flight=3, account_in_flight=100)
        answers = parallel(24, lambda i: ask(relay, "CAP-1"))
        print(f"\nbound 3, 24 at once: at most {api.max_in_flight} at the API, {api.rate_limited} refused")
        assert [a.status for a in answers] == [200] * 24
        assert api.max_in_flight <= 3 and api.answered("CAP-1") == 24


def test_a_capacity_below_the_bound_is_absorbed(make_relay, notices):
    with ScriptedAPI(capacity=2, retry_after=0.5) as api:
        api.script("CAP-2", slow(0.2, text("ok")))
        relay = make_relay(upstream=api.url, max_in_flight=8, account_in_flight=100)
        accounts = [relay.issue_ticket(f"task-{i}") for i in range(4)]
        answers = parallel(16, lambda i: ask(relay, "CAP-2", accounts[i % 4]))
        gate = relay.stats()["gate"]
        print(f"\ncapacity 2, bound 8, 16 at once: {api.rate_limited} refused by the API and retried by the relay,"
              f" bound now {gate['bound']}, at most {api.max_in_flight} at the API")  # fmt: skip
        assert [a.status for a in answers] == [200] * 16  # no agent saw a 429
        assert api.answered("CAP-2") == 16 and api.rate_limited >= 1
        assert sum(relay.account(f"task-{i}").rate_limited for i in range(4)) == api.rate_limited
        assert gate["bound"] < 8
        assert {n.kind for n in notices} == {NoticeKind.BACKOFF}


# ---- the git credential helper -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "answered"),
    [
        ({"protocol": "https", "host": "git.example", "path": "team/app.git"}, True),
        ({"protocol": "https", "host": "git.example", "path": "team/app"}, True),
        ({"protocol": "https", "host": "git.example", "path": "team/other.git"}, False),
        ({"protocol": "https", "host": "evil.example", "path": "team/app.git"}, False),
        ({"protocol": "http", "host": "git.example", "path": "team/app.git"}, False),
        ({"protocol": "https", "host": "git.example"}, False),
    ],
)
def test_the_git_credential_helper_answers_for_the_repository_only(request_, answered):
    env = {"GIT_TOKEN": "ghp_secret", "REPO_URL": "https://git.example/team/app.git"}
    expected = {"username": "x-access-token", "password": "ghp_secret"} if answered else None
    assert answer(request_, env) == expected
    assert answer(request_, {**env, "GIT_TOKEN": ""}) is None
