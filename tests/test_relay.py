"""The worker's API relay and the git credential helper, on this machine: what they pass on,
and what they never do."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import pytest

from orchestrator.credential import answer
from orchestrator.relay import ApiRelay
from orchestrator.secrets import ClaudeCredential

from .scripted_api import ScriptedAPI, error, text


def post(url: str, headers: dict[str, str], body: dict) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    conn.request("POST", "/v1/messages?beta=true", body=json.dumps(body), headers=headers)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, dict(response.getheaders()), data


def conversation(marker: str) -> dict:
    return {
        "model": "m",
        "stream": True,
        "tools": [{"name": "Bash"}],
        "messages": [{"role": "user", "content": marker}],
    }


@pytest.fixture
def api():
    with ScriptedAPI() as api:
        yield api


def test_the_ticket_is_swapped_for_the_real_token_and_the_stream_comes_back(api: ScriptedAPI, token: str):
    api.script("RELAY-1", text("hello through the relay"))
    with ApiRelay(ClaudeCredential(token), api.url) as relay:
        env = relay.agent_environment()
        assert env["CLAUDE_CODE_OAUTH_TOKEN"] == relay.ticket and token not in json.dumps(env)
        status, headers, body = post(
            env["ANTHROPIC_BASE_URL"], {"Authorization": f"Bearer {relay.ticket}"}, conversation("RELAY-1")
        )
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    assert b"event: message_start" in body and b"hello through the relay" in body
    assert api.authorizations() == [f"Bearer {token}"]


def test_an_api_key_goes_as_x_api_key(api: ScriptedAPI):
    key = "sk-ant-api03-" + "k" * 40
    api.script("RELAY-2", text("ok"))
    with ApiRelay(ClaudeCredential(key), api.url) as relay:
        env = relay.agent_environment()
        assert env["ANTHROPIC_API_KEY"] == relay.ticket and "CLAUDE_CODE_OAUTH_TOKEN" not in env
        status, _, _ = post(relay.url, {"x-api-key": relay.ticket}, conversation("RELAY-2"))
    assert status == 200
    assert api.api_keys() == [key] and api.authorizations() == []


def test_without_the_ticket_no_credential_is_added(api: ScriptedAPI, token: str):
    api.script("RELAY-3", text("ok"))
    with ApiRelay(ClaudeCredential(token), api.url) as relay:
        post(relay.url, {"Authorization": "Bearer a-guess"}, conversation("RELAY-3"))
        post(relay.url, {}, conversation("RELAY-3"))
    assert api.authorizations() == [] and token not in api.log()


def test_api_errors_come_back_as_they_are(api: ScriptedAPI, token: str):
    api.script("RELAY-4", error(529, "scripted overload", should_retry=False))
    with ApiRelay(ClaudeCredential(token), api.url) as relay:
        status, headers, body = post(relay.url, {"Authorization": f"Bearer {relay.ticket}"}, conversation("RELAY-4"))
    assert status == 529 and headers.get("x-should-retry") == "false"
    assert json.loads(body)["error"]["message"] == "scripted overload"


def test_an_unreachable_endpoint_is_a_502_that_names_it(token: str):
    said: list[str] = []
    with ApiRelay(ClaudeCredential(token), "http://127.0.0.1:9", on_error=said.append) as relay:
        status, _, body = post(relay.url, {"Authorization": f"Bearer {relay.ticket}"}, conversation("x"))
    assert status == 502
    assert "cannot reach http://127.0.0.1:9" in json.loads(body)["error"]["message"]
    assert said and token not in said[0]


def send(url: str, method: str, target: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    """A request with ``target`` exactly as given on its request line."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
    conn.putheader("Host", "127.0.0.1")
    for name, value in headers.items():
        conn.putheader(name, value)
    conn.putheader("Content-Length", "0")
    conn.endheaders()
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, dict(response.getheaders()), data


@pytest.mark.parametrize(
    "target",
    [".evil.test/v1/messages", "@evil.test/v1/messages", "http://evil.test/v1/messages",
     ":1/v1/messages", "/v1/messages\\@evil.test"],
)  # fmt: skip
def test_a_target_that_is_not_a_path_of_the_api_is_refused(api: ScriptedAPI, token: str, target: str):
    """Appended to the endpoint's URL, each of these would name another host (or port).
    (``//host/...`` is not among them: the server folds it into ``/host/...``, a path.)"""
    said: list[str] = []
    with ApiRelay(ClaudeCredential(token), api.url, on_error=said.append) as relay:
        status, _, body = send(relay.url, "POST", target, {"Authorization": f"Bearer {relay.ticket}"})
    assert status == 400 and "not a path of the API" in json.loads(body)["error"]["message"]
    assert api.log() == "" and said and token not in said[0]


def test_a_redirect_is_handed_back_not_followed(token: str):
    """An endpoint that redirects (a gateway, say) does not get the relay to carry the credential
    elsewhere: the agent sees the redirect."""
    import http.server
    import threading

    seen: list[str | None] = []

    class Redirecting(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append(self.headers.get("authorization"))
            self.send_response(307)
            self.send_header("Location", "http://127.0.0.1:9/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirecting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        upstream = f"http://127.0.0.1:{server.server_address[1]}"
        with ApiRelay(ClaudeCredential(token), upstream) as relay:
            status, headers, _ = post(relay.url, {"Authorization": f"Bearer {relay.ticket}"}, conversation("x"))
    finally:
        server.shutdown()
        server.server_close()
    assert status == 307 and headers["Location"].endswith("/elsewhere")
    assert seen == [f"Bearer {token}"]  # the endpoint itself, once; the redirect was not followed


def test_an_endpoint_with_a_path_keeps_it(token: str):
    with ApiRelay(ClaudeCredential(token), "https://gateway.example/anthropic/") as relay:
        assert relay.target("/v1/messages?beta=true") == "https://gateway.example/anthropic/v1/messages?beta=true"
        assert relay.target("x/v1/messages") is None


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
