"""Every command the Smart Manager prompt shows runs, exactly as written, in the manager."""

from __future__ import annotations

import json
import re

import pytest

from .engine import GitServer, Run, run_py, sh
from .helpers import ROOT

PROMPT = ROOT / "orchestrator" / "system-prompt.md"


def shell_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", PROMPT.read_text(), re.DOTALL)


def test_the_prompt_shows_the_whole_cycle():
    text = "\n".join(shell_blocks())
    for command in ("cat > /orchestration/tasks/task-001.json", "spawn-worker flutter task-001", "docker ps",
                    "docker logs", "docker wait", "cat /orchestration/results/task-001.json"):  # fmt: skip
        assert command in text


@pytest.mark.docker
def test_the_prompt_s_commands_work_as_written(run: Run, git_server: GitServer, token_file):
    # The prompt's task id is fixed; it must not collide with a leftover container.
    sh("docker", "rm", "--force", "worker-task-001", check=False)
    repo = git_server.repo(f"p-{run.id}")
    script = "set -eu\n" + "\n".join(shell_blocks())
    try:
        proc = run_py("--repo", repo, "--token", str(token_file), "--volume", run.volume, "--name", run.manager,
                      "--", "bash", "-c", script)  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "worker-task-001" in proc.stdout  # docker ps
        result = run.result("task-001")
        assert result["status"] == "success"
        assert json.loads(run.read("status/task-001.json"))["state"] == "success"
        # The result was printed by the last command, after `docker wait` printed 0.
        assert proc.stdout.rstrip().endswith("}") and '"status": "success"' in proc.stdout
    finally:
        sh("docker", "rm", "--force", "worker-task-001", check=False)
