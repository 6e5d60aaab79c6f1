"""The built images, checked offline: the real Claude Code CLI and what the orchestrator
asks of it, the non-root user, the commands on PATH."""

from __future__ import annotations

import json
import re

import pytest

from orchestrator.agent_claude import headless_argv
from orchestrator.entrypoint import manager_argv
from orchestrator.images import pinned_claude_code_version
from tests.support.commands import sh
from tests.support.end_to_end import MANAGER_IMAGE, WORKER_IMAGE


def in_image(image: str, *argv: str) -> str:
    return sh("docker", "run", "--rm", "--entrypoint", argv[0], image, *argv[1:]).stdout


@pytest.mark.parametrize("image", [MANAGER_IMAGE, WORKER_IMAGE])
def test_the_images_carry_the_pinned_claude_code(test_images, image):
    assert in_image(image, "claude", "--version") == f"{pinned_claude_code_version()} (Claude Code)\n"


@pytest.mark.parametrize("image", [MANAGER_IMAGE, WORKER_IMAGE])
def test_every_flag_the_orchestrator_passes_is_in_the_real_help(test_images, image):
    help_text = in_image(image, "claude", "--help")
    passed = {arg for arg in headless_argv("m") + manager_argv("m") if arg.startswith("-") and arg != "--"}
    assert passed == {"--print", "--output-format", "--verbose", "--dangerously-skip-permissions", "--model",
                      "--append-system-prompt"}  # fmt: skip
    for flag in passed:
        assert re.search(rf"(^|[ ,]){re.escape(flag)}\b", help_text, re.MULTILINE), f"{flag} not in claude --help"
    assert '"stream-json"' in help_text


def test_the_real_claude_takes_max_turns_though_its_help_does_not_list_it(test_images):
    # The worker passes --max-turns for tasks that set it. An unknown option is refused before
    # anything else; without a login the CLI gets as far as "Not logged in".
    argv = headless_argv(None, max_turns=2)
    assert "--max-turns" in argv and "--max-turns" not in in_image(WORKER_IMAGE, "claude", "--help")
    proc = sh("docker", "run", "--rm", "-i", "--user", "agent", "--entrypoint", "claude", WORKER_IMAGE, *argv[1:],
              input="hi", check=False)  # fmt: skip
    assert "unknown option" not in proc.stderr and "Not logged in" in proc.stdout
    typo = sh("docker", "run", "--rm", "--entrypoint", "claude", WORKER_IMAGE, "--max-turnz", "2", "-p", "hi",
              check=False)  # fmt: skip
    assert "unknown option '--max-turnz'" in typo.stderr


def test_the_manager_runs_as_claude_and_the_worker_runtime_as_root_with_tini(test_images):
    assert in_image(MANAGER_IMAGE, "id", "-u") == "1000\n"
    # The runtime is root so that it can run the agent as agent (spawn-worker drops every other capability).
    assert in_image(WORKER_IMAGE, "id", "-u") == "0\n"
    assert in_image(WORKER_IMAGE, "id", "agent") == "uid=1001(agent) gid=1001(agent) groups=1001(agent)\n"
    assert in_image(WORKER_IMAGE, "id", "-Gn", "root") == "root claude\n"
    for image in (MANAGER_IMAGE, WORKER_IMAGE):
        inspect = sh("docker", "image", "inspect", "--format", "{{json .Config.Entrypoint}}", image).stdout
        assert inspect.startswith('["/usr/bin/tini","--","') and '"-P","-m","orchestrator.' in inspect
        # A new volume takes these folders: the group of the orchestrator's user only.
        assert in_image(image, "stat", "-c", "%a %U %G", "/orchestration") == "2770 claude claude\n"
    assert in_image(WORKER_IMAGE, "stat", "-c", "%a %U", "/workspace") == "1777 root\n"
    assert in_image(WORKER_IMAGE, "getent", "passwd", "agent").split(":")[5] == "/workspace/home"


def test_the_agent_can_write_nowhere_in_the_worker_image_but_the_workspace(test_images):
    """Everything the agent may write is in /workspace, which spawn-worker bounds (a tmpfs, or a
    storage quota): /tmp and /var/tmp lead there, and no other file or folder is open to it."""
    writable = in_image(
        WORKER_IMAGE, "sh", "-c",
        "setpriv --reuid=agent --regid=agent --clear-groups find / -xdev -path /proc -prune -o -writable -print "
        "2>/dev/null; readlink /tmp /var/tmp",
    ).split()  # fmt: skip
    # /tmp and /var/tmp are found writable through their links, which lead into the workspace.
    *found, tmp_target, var_tmp_target = writable
    assert sorted(found) == ["/tmp", "/var/tmp", "/workspace", "/workspace/tmp"], writable
    assert tmp_target == var_tmp_target == "/workspace/tmp"


def test_the_manager_has_its_commands_and_the_docker_cli(test_images):
    assert in_image(MANAGER_IMAGE, "spawn-worker", "--help").startswith("usage: spawn-worker")
    assert in_image(MANAGER_IMAGE, "orch", "--help").startswith("usage: orch")
    # The path of the original design's manual recipe still works.
    assert in_image(MANAGER_IMAGE, "/opt/orchestrator/lib/spawn-worker.sh", "--help").startswith("usage: spawn-worker")
    assert in_image(MANAGER_IMAGE, "docker", "--version").startswith("Docker version")
    assert "node" not in in_image(MANAGER_IMAGE, "sh", "-c", "command -v node nodejs || true")


def test_the_worker_without_sdk_still_has_git_and_the_runtime(test_images):
    assert in_image(WORKER_IMAGE, "git", "--version").startswith("git version")
    assert "usage: worker" in in_image(WORKER_IMAGE, "python3", "-m", "orchestrator.worker", "--help")
    assert in_image(WORKER_IMAGE, "git", "config", "--system", "--get-all", "safe.directory") == "/opt/flutter\n"


def test_the_worker_runtime_runs_nothing_the_agent_could_have_replaced(test_images):
    """Every folder of the runtime's PATH, and its package, belong to root and are writable by
    root alone; the entrypoint names its interpreter by its full path."""
    from orchestrator.sandbox import RUNTIME_PATH

    folders = [*RUNTIME_PATH.split(":"), "/opt/orchestrator", "/opt/orchestrator/orchestrator"]
    script = (
        'for d in "$@"; do [ -e "$d" ] || continue; stat -L -c "%n %U" "$d"; '
        'setpriv --reuid=agent --regid=agent --init-groups test -w "$d" && echo "$d writable by agent"; done; exit 0'
    )
    listing = in_image(WORKER_IMAGE, "sh", "-c", script, "sh", *folders).splitlines()
    assert len(listing) >= 5 and all(line.endswith(" root") for line in listing), listing
    entrypoint = sh("docker", "image", "inspect", "--format", "{{json .Config.Entrypoint}}", WORKER_IMAGE).stdout
    assert json.loads(entrypoint)[2] == "/usr/bin/python3"
