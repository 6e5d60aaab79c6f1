"""The login check before a batch: a refused token or an API out of reach stops run.py and
orch start with one line, in seconds; anything else lets them go on."""

from __future__ import annotations

import socket
import struct
import threading
from pathlib import Path

import pytest

from orchestrator import launch, login
from orchestrator.errors import UserError
from orchestrator.login import LoginRefused, check_login
from orchestrator.secrets import ClaudeCredential
from tests.support.fake_docker import FakeDocker
from tests.support.ports import free_port
from tests.support.scripted_api import ScriptedAPI


def test_an_accepted_token_passes_and_is_sent_as_claude_code_sends_it(api: ScriptedAPI, token: str):
    check_login(ClaudeCredential(token), api.url)  # the scripted API has no model list: a 404
    request = api.requests[-1]
    assert request.path.startswith("/v1/models") and request.header("authorization") == f"Bearer {token}"
    assert "oauth-2025-04-20" in (request.header("anthropic-beta") or "")


def test_a_refused_token_is_one_clear_error(api: ScriptedAPI, token: str):
    api.refuse(token)
    with pytest.raises(LoginRefused, match=r"^the Claude token was refused \(401\): invalid authentication"):
        check_login(ClaudeCredential(token), api.url)


def test_a_refused_api_key_says_so(api: ScriptedAPI):
    key = "sk-ant-api03-" + "k" * 40
    api.refuse(key)
    with pytest.raises(LoginRefused, match=r"^the API key was refused \(401\)"):
        check_login(ClaudeCredential(key), api.url)
    assert api.requests[-1].header("x-api-key") == key


def test_no_api_at_all_is_one_clear_error(token: str):
    port = free_port()
    with pytest.raises(UserError, match=rf"^cannot reach the API at http://127.0.0.1:{port}: "):
        check_login(ClaudeCredential(token), f"http://127.0.0.1:{port}")


def test_a_dropped_connection_is_asked_again_and_then_said(
    api: ScriptedAPI, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A server that drops the first two connections without an answer (a busy gateway), then is the API.
    monkeypatch.setattr(login, "RESET_PAUSES", (0.01, 0.01))
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    dropped: list[int] = []

    def serve(drops: int) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # the test closed it
            if len(dropped) < drops:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset
                conn.close()
                dropped.append(1)
                continue
            with conn, socket.create_connection(("127.0.0.1", int(api.url.rsplit(":", 1)[1]))) as upstream:
                upstream.sendall(conn.recv(65536))
                conn.sendall(upstream.recv(65536))
            return

    threading.Thread(target=serve, args=(2,), daemon=True).start()
    check_login(ClaudeCredential(token), f"http://127.0.0.1:{port}")
    assert len(dropped) == 2 and api.requests[-1].path.startswith("/v1/models")
    listener.close()
    # Dropped every time: one clear error.
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    dropped.clear()
    threading.Thread(target=serve, args=(99,), daemon=True).start()
    with pytest.raises(UserError, match=rf"^cannot reach the API at http://127.0.0.1:{port}: .*reset"):
        check_login(ClaudeCredential(token), f"http://127.0.0.1:{port}")
    assert len(dropped) == 3
    listener.close()


def test_run_py_stops_before_anything_is_started(
    api: ScriptedAPI, token: str, token_file: Path, fake_docker: FakeDocker, docker_socket: Path, capsys, tmp_path
):
    api.refuse(token)
    assert launch.main(["--no-repo", "--token", str(token_file), "--api-url", api.url]) == 1
    err = capsys.readouterr().err
    assert err.startswith("run.py: error: the Claude token was refused (401)") and len(err.splitlines()) == 1
    assert token not in err
    assert not fake_docker.find("create") and not fake_docker.find("build")
    # --no-login-check goes on regardless.
    argv = ["--no-repo", "--token", str(token_file), "--api-url", api.url, "--network", "host", "--no-login-check"]
    assert launch.main(argv) == 0
    assert fake_docker.find("create")


def test_orch_start_stops_a_new_batch_and_leaves_its_tasks_submitted(
    api: ScriptedAPI, token: str, tmp_path: Path, monkeypatch, capsys, fake_docker: FakeDocker
):
    from orchestrator.orch import main
    from orchestrator.store import OrchestrationDir

    orch = OrchestrationDir(tmp_path / "orchestration")
    orch.ensure()
    where = ["--orchestration-dir", str(orch.root)]
    monkeypatch.setenv("CLAUDE_CODE_OAUTH_TOKEN", token)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", api.url)
    assert main(["submit", "--prompt", "p", *where]) == 0
    api.refuse(token)
    assert main(["start", "--all", *where]) == 1
    assert "orch start: error: the Claude token was refused (401)" in capsys.readouterr().err
    assert main(["status", "--json", *where]) == 0
    assert '"state": "submitted"' in capsys.readouterr().out
    # run.py told --no-login-check: that holds for the batch's orch start (in the manager, or its
    # control plane), which goes on to queue the tasks.
    monkeypatch.setenv("ORCHESTRATOR_LOGIN_CHECK", "no")
    monkeypatch.setattr("orchestrator.orch_commands.ensure_dispatcher", lambda ctx: True)
    assert main(["start", "--all", *where]) == 0
    assert main(["status", "--json", *where]) == 0
    assert '"state": "queued"' in capsys.readouterr().out
