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
    for command in ("orch submit", "--depends-on", "orch start --all --max-workers", "orch status", "orch cancel",
                    "orch retry", "orch wait --all", "orch result", "orch logs", "orch merge --all --push",
                    "orch cleanup"):  # fmt: skip
        assert command in text


@pytest.mark.docker
def test_the_prompt_s_commands_work_as_written(run: Run, git_server: GitServer, token_file):
    # The prompt's task ids are fixed; they must not collide with leftover containers.
    workers = ["worker-task-001", "worker-task-002"]
    sh("docker", "rm", "--force", *workers, check=False)
    repo = git_server.repo(f"p-{run.id}")
    script = "set -eu\n" + "\n".join(shell_blocks())
    try:
        proc = run_py("--repo", repo, "--token", str(token_file), "--volume", run.volume, "--name", run.manager,
                      "--", "bash", "-c", script)  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        out = proc.stdout
        assert out.startswith("task-001\ntask-002\n")  # the ids orch submit printed
        assert "task-002: cancelled" in out and "task-002: attempt 2 queued" in out
        assert "2 tasks: 2 success" in out  # orch wait
        assert "task-001: success (attempt 1)" in out  # orch result
        assert "[agent] finished: success" in out  # orch logs
        assert "nothing to merge: no task that succeeded has a pushed branch" in out  # they changed nothing
        assert "removed 2 finished worker containers" in out
        for task_id in ("task-001", "task-002"):
            assert run.result(task_id)["status"] == "success"
            assert json.loads(run.read(f"status/{task_id}.json"))["state"] == "success"
        assert run.result("task-002")["attempt"] == 2
        assert json.loads(run.read("attempts/task-002/1.json"))["status"] == "cancelled"
        assert sh("docker", "ps", "-aq", "--filter", "name=worker-task-00").stdout == ""
    finally:
        sh("docker", "rm", "--force", *workers, check=False)
