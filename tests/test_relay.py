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
