"""The built images, checked offline: the real Claude Code CLI and what the orchestrator
asks of it, the non-root user, the commands on PATH."""

from __future__ import annotations

import re

import pytest

from orchestrator.agent import headless_argv
from orchestrator.entrypoint import manager_argv

from .engine import MANAGER_IMAGE, WORKER_BASE_IMAGE, WORKER_IMAGE, sh

pytestmark = pytest.mark.docker


def in_image(image: str, *argv: str) -> str:
    return sh("docker", "run", "--rm", "--entrypoint", argv[0], image, *argv[1:]).stdout


@pytest.mark.parametrize("image", [MANAGER_IMAGE, WORKER_BASE_IMAGE])
def test_the_real_claude_runs_offline(test_images, image):
    assert re.fullmatch(r"\d+\.\d+\.\d+ \(Claude Code\)\n", in_image(image, "claude", "--version"))


@pytest.mark.parametrize("image", [MANAGER_IMAGE, WORKER_BASE_IMAGE])
def test_every_flag_the_orchestrator_passes_is_in_the_real_help(test_images, image):
    help_text = in_image(image, "claude", "--help")
    passed = {arg for arg in headless_argv("p", "m") + manager_argv("m") if arg.startswith("-") and arg != "--"}
    assert passed == {"--print", "--output-format", "--verbose", "--dangerously-skip-permissions", "--model",
                      "--append-system-prompt"}  # fmt: skip
    for flag in passed:
        assert re.search(rf"(^|[ ,]){re.escape(flag)}\b", help_text, re.MULTILINE), f"{flag} not in claude --help"
    assert '"stream-json"' in help_text


def test_the_real_claude_takes_max_turns_though_its_help_does_not_list_it(test_images):
    # The worker passes --max-turns for tasks that set it. An unknown option is refused before
    # anything else; without a login the CLI gets as far as "Not logged in".
    argv = headless_argv("hi", None, max_turns=2)
    assert "--max-turns" in argv and "--max-turns" not in in_image(WORKER_BASE_IMAGE, "claude", "--help")
    proc = sh("docker", "run", "--rm", "--entrypoint", "claude", WORKER_BASE_IMAGE, *argv[1:], check=False)
    assert "unknown option" not in proc.stderr and "Not logged in" in proc.stdout
    typo = sh("docker", "run", "--rm", "--entrypoint", "claude", WORKER_BASE_IMAGE, "--max-turnz", "2", "-p", "hi",
              check=False)  # fmt: skip
    assert "unknown option '--max-turnz'" in typo.stderr


def test_the_stand_in_answers_version_and_help_with_the_real_binary(test_images):
    assert in_image(WORKER_IMAGE, "claude", "--version") == in_image(WORKER_BASE_IMAGE, "claude", "--version")


@pytest.mark.parametrize("image", [MANAGER_IMAGE, WORKER_BASE_IMAGE])
def test_images_run_as_a_non_root_user_with_tini(test_images, image):
    assert in_image(image, "id", "-u") == "1000\n"
    inspect = sh("docker", "image", "inspect", "--format", "{{json .Config.Entrypoint}}", image).stdout
    assert inspect.startswith('["/usr/bin/tini","--","python3"')


def test_the_manager_has_its_commands_and_the_docker_cli(test_images):
    assert in_image(MANAGER_IMAGE, "spawn-worker", "--help").startswith("usage: spawn-worker")
    assert in_image(MANAGER_IMAGE, "orch", "--help").startswith("usage: orch")
    # The path of the original design's manual recipe still works.
    assert in_image(MANAGER_IMAGE, "/opt/orchestrator/lib/spawn-worker.sh", "--help").startswith("usage: spawn-worker")
    assert in_image(MANAGER_IMAGE, "docker", "--version").startswith("Docker version")
    assert "node" not in in_image(MANAGER_IMAGE, "sh", "-c", "command -v node nodejs || true")


def test_the_worker_without_sdk_still_has_git_and_the_runtime(test_images):
    assert in_image(WORKER_BASE_IMAGE, "git", "--version").startswith("git version")
    assert "usage: worker" in in_image(WORKER_BASE_IMAGE, "python3", "-m", "orchestrator.worker", "--help")
    assert in_image(WORKER_BASE_IMAGE, "git", "config", "--system", "--get-all", "safe.directory") == "/opt/flutter\n"
