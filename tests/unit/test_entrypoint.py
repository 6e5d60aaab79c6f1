"""The manager entrypoint's preparation of Claude Code's configuration and command line."""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.control.endpoints import Endpoints
from orchestrator.entrypoint import SYSTEM_PROMPT, manager_argv, preseed_claude_config, wait_for


def test_first_run_questions_are_answered_in_advance(tmp_path: Path):
    preseed_claude_config(tmp_path, Path("/workspace/repo"))
    state = json.loads((tmp_path / ".claude.json").read_text())
    assert state["hasCompletedOnboarding"] is True and state["theme"] == "dark"
    assert state["projects"]["/workspace/repo"]["hasTrustDialogAccepted"] is True
    settings = json.loads((tmp_path / ".claude" / "settings.json").read_text())
    assert settings["skipDangerousModePermissionPrompt"] is True


def test_existing_configuration_wins(tmp_path: Path):
    (tmp_path / ".claude.json").write_text(json.dumps({"theme": "light", "userID": "u1", "projects": {"/x": {"a": 1}}}))
    (tmp_path / ".claude").mkdir()
    (tmp_path / ".claude" / "settings.json").write_text(json.dumps({"model": "opus"}))
    preseed_claude_config(tmp_path, Path("/workspace"))
    state = json.loads((tmp_path / ".claude.json").read_text())
    assert (state["theme"], state["userID"], state["projects"]["/x"]) == ("light", "u1", {"a": 1})
    assert state["projects"]["/workspace"]["hasTrustDialogAccepted"] is True
    assert json.loads((tmp_path / ".claude" / "settings.json").read_text()) == {
        "model": "opus",
        "skipDangerousModePermissionPrompt": True,
    }


def test_a_damaged_configuration_is_replaced(tmp_path: Path):
    (tmp_path / ".claude.json").write_text("{not json")
    preseed_claude_config(tmp_path, Path("/workspace"))
    assert json.loads((tmp_path / ".claude.json").read_text())["hasCompletedOnboarding"] is True


def test_the_manager_runs_claude_with_the_smart_manager_prompt():
    argv = manager_argv("claude-x")
    assert argv[:2] == ["claude", "--dangerously-skip-permissions"]
    assert argv[argv.index("--model") + 1] == "claude-x"
    assert argv[argv.index("--append-system-prompt") + 1] == SYSTEM_PROMPT.read_text()
    assert "--model" not in manager_argv(None)


def test_the_manager_reads_the_endpoints_the_control_plane_writes(tmp_path: Path):
    # The writer (control/plane.py) and the reader (the manager's entrypoint) share one format:
    # a field renamed on one side only once left every manager waiting for ever.
    written = Endpoints(relay_socket="/run/orchestrator/relay.sock", ticket="t-1", api_key=True, mirror="/mirror",
                        resumed=3)  # fmt: skip
    written.write(tmp_path)
    assert wait_for(tmp_path) == written
    assert json.loads((tmp_path / "endpoints.json").read_text())["relay_socket"] == "/run/orchestrator/relay.sock"


def test_endpoints_half_written_or_damaged_are_not_taken(tmp_path: Path):
    assert Endpoints.read(tmp_path) is None
    (tmp_path / "endpoints.json").write_text('{"relay_socket": "/r.sock"')
    assert Endpoints.read(tmp_path) is None
    (tmp_path / "endpoints.json").write_text('{"relay_socket": "/r.sock", "ticket": ""}')
    assert Endpoints.read(tmp_path) is None
    (tmp_path / "endpoints.json").write_text('{"relay_socket": "/r.sock", "ticket": "x", "resumed": "9"}')
    assert Endpoints.read(tmp_path) == Endpoints("/r.sock", "x", api_key=False, mirror=None, resumed=0)
