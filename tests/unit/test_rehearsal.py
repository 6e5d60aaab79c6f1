"""run.py --rehearsal's parts without an engine: what run.py checks and sets, the origin the control
plane makes (the sample app, or a copy of --repo that can push nowhere), the sample script served
as the model, the manager started on the script's request, and results that say "rehearsal".
tests/e2e/test_rehearsal.py runs the whole of it."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from pathlib import Path

import pytest

from orchestrator import environment, rehearsal
from orchestrator.control import rehearsal as control_rehearsal
from orchestrator.entrypoint import manager_argv
from orchestrator.errors import InvalidInput
from orchestrator.launch import build_parser, manager_settings
from orchestrator.store import OrchestrationDir
from orchestrator.tasks import State, TaskResult, utc_now


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


def parse(*argv: str):
    return build_parser({}).parse_args(list(argv))


def test_a_rehearsal_needs_no_token_and_sets_its_origin_model_and_request(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.claude-token, no ~/.git-token, no SSH key
    args = parse("--rehearsal")
    plan = rehearsal.plan(args)
    assert plan is not None and plan.request == "Add a dark mode to the app" and plan.files == []
    secrets = rehearsal.secrets(args, {})
    assert secrets.claude == rehearsal.PLACEHOLDER and secrets.git_token is None
    settings = rehearsal.settings(plan, manager_settings(args, {}))
    assert settings[environment.REPO_URL.name] == rehearsal.ORIGIN
    assert settings[environment.REHEARSAL.name] == "sample"
    assert settings[environment.FIRST_REQUEST.name] == "Add a dark mode to the app"
    assert settings[environment.LOGIN_CHECK.name] == "no"
    assert environment.REHEARSAL_SOURCE.name not in settings


def test_a_persons_script_is_checked_before_anything_starts_and_copied_to_the_control_plane(tmp_path: Path) -> None:
    script = tmp_path / "mine.json"
    script.write_text(json.dumps({"rehearsal": 1, "request": "Do my thing", "scenarios": []}))
    plan = rehearsal.plan(parse("--rehearsal", "--script", str(script), "--repo", "https://example.com/r.git"))
    assert plan is not None and plan.request == "Do my thing" and plan.source == "https://example.com/r.git"
    assert [(f.name, f.data) for f in plan.files] == [(rehearsal.SCRIPT_NAME, script.read_bytes())]
    settings = rehearsal.settings(plan, {})
    assert settings[environment.REHEARSAL.name] == "script"
    assert settings[environment.REHEARSAL_SOURCE.name] == "https://example.com/r.git"
    script.write_text('{"rehearsal": 1, "scenarios": [{"match": "x", "turns": [{"bsh": "ls"}]}]}')
    with pytest.raises(Exception, match=re.escape("mine.json: scenarios[0].turns[0]")):
        rehearsal.plan(parse("--rehearsal", "--script", str(script)))


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (("--script", "x.json"), "--script is a rehearsal's"),
        (("--rehearsal", "--manager-docker-socket"), "--manager-docker-socket"),
        (("--rehearsal", "--engine", "swarm"), "--engine swarm"),
        (("--rehearsal", "--no-repo"), "--no-repo"),
        (("--rehearsal", "--api-url", "http://127.0.0.1:9"), "--api-url"),
        (("--rehearsal", "--script", "/nonexistent/s.json"), "cannot read the script /nonexistent/s.json"),
    ],
)
def test_what_a_rehearsal_cannot_be_combined_with_is_said(argv: tuple[str, ...], named: str) -> None:
    with pytest.raises(InvalidInput, match=named):
        rehearsal.plan(parse(*argv))


def test_the_sample_origin_is_made_once_and_has_no_remote(tmp_path: Path) -> None:
    said: list[str] = []
    origin = tmp_path / "rehearsal" / "origin.git"
    control_rehearsal.prepare_origin(origin, "main", None, {}, said.append)
    assert git(origin, "ls-tree", "-r", "--name-only", "main").split() == ["README.md", "lib/main.dart",
                                                                           "pubspec.yaml"]  # fmt: skip
    assert git(origin, "remote").strip() == ""
    tip = git(origin, "rev-parse", "main")
    control_rehearsal.prepare_origin(origin, "main", None, {}, said.append)  # a restart carries on
    assert git(origin, "rev-parse", "main") == tip and "as an earlier run left it" in said[-1]


def test_a_copy_of_the_persons_repository_can_push_nowhere(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    git(source, "init", "-q", "-b", "trunk")
    (source / "a.txt").write_text("a\n")
    git(source, "add", "a.txt")
    git(source, "-c", "user.name=n", "-c", "user.email=e@x", "commit", "-qm", "a")
    git(source, "branch", "other")
    origin = tmp_path / "origin.git"
    control_rehearsal.prepare_origin(origin, "trunk", str(source), {}, lambda line: None)
    assert git(origin, "for-each-ref", "--format=%(refname)").split() == ["refs/heads/trunk"]
    assert git(origin, "remote").strip() == ""
    assert git(origin, "rev-parse", "trunk") == git(source, "rev-parse", "trunk")


def test_the_sample_script_is_served_as_the_model(tmp_path: Path) -> None:
    said: list[str] = []
    api = control_rehearsal.serve_model("sample", tmp_path, said.append)
    try:
        body = {
            "model": "m", "max_tokens": 100, "stream": False, "tools": [{"name": "Bash"}],
            "messages": [{"role": "user", "content": "Add a dark mode to the app"}],
        }  # fmt: skip
        request = urllib.request.Request(f"{api.url}/v1/messages", data=json.dumps(body).encode(),
                                         headers={"content-type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=30) as answer:
            message = json.load(answer)
    finally:
        api.stop()
    commands = [block["input"]["command"] for block in message["content"] if block["type"] == "tool_use"]
    assert len(commands) == 1 and commands[0].startswith("orch batch new 'Dark mode'")
    assert "orch start --all --max-workers 2" in commands[0]
    assert "the sample script" in said[0] and "nothing reaches the API" in said[0]


def test_a_persons_script_missing_in_the_control_plane_is_said(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="the rehearsal's script is not in"):
        control_rehearsal.serve_model("script", tmp_path, lambda line: None)


def test_the_manager_starts_on_the_request_and_never_takes_it_for_an_option() -> None:
    assert manager_argv("m", "Add a dark mode to the app")[-1] == "Add a dark mode to the app"
    assert manager_argv("m", "--help me")[-1] == "Request: --help me"
    assert manager_argv("m", None)[-2] == "--append-system-prompt"


def test_every_result_of_a_rehearsal_says_so(tmp_path: Path) -> None:
    rehearsing = OrchestrationDir(tmp_path / "a", rehearsal=True)
    real = OrchestrationDir(tmp_path / "b")
    for orch in (rehearsing, real):
        orch.ensure()
        orch.write_result(TaskResult("t1", State.SUCCESS, "ok", utc_now()))
    assert json.loads(rehearsing.result_path("t1").read_text())["rehearsal"] is True
    assert json.loads(real.result_path("t1").read_text())["rehearsal"] is False
    assert rehearsing.load_result("t1").rehearsal is True  # type: ignore[union-attr]


def test_the_readmes_script_and_the_sample_load() -> None:
    from orchestrator.scripted.script_file import load, read
    from tests.e2e.test_rehearsal import readme_script
    from tests.support.paths import ROOT

    shown = load(json.dumps(readme_script()), "README.md")
    assert shown.request == "Add a changelog and a licence" and len(shown.scenarios) == 4
    sample = read(ROOT / "orchestrator" / "rehearsal-sample.json")
    assert sample.request == rehearsal.SAMPLE_REQUEST and len(sample.scenarios) == 5


def test_a_rehearsal_takes_names_of_its_own_unless_given() -> None:
    # A real batch run later with the defaults must not find the rehearsal's clone or tasks.
    from orchestrator.launch_options import DEFAULT_NAME

    named = rehearsal.own_names(parse("--rehearsal"), {}, DEFAULT_NAME)
    assert (named.name, named.volume) == ("claude-rehearsal", "rehearsal-volume")
    given = rehearsal.own_names(parse("--rehearsal", "--name", "mine", "--volume", "v"), {}, DEFAULT_NAME)
    assert (given.name, given.volume) == ("mine", "v")
    env = {"ORCHESTRATOR_VOLUME": "orchestration-volume"}
    from_env = rehearsal.own_names(build_parser(env).parse_args(["--rehearsal"]), env, DEFAULT_NAME)
    assert from_env.volume == "orchestration-volume"  # the person's own choice, through the environment
