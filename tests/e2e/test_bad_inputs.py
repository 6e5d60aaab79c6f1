"""What people hand the orchestrator, end to end: a prompt of 180 KB of UTF-8 reaches the agent
whole; what cannot pass (a NUL, a task id git refuses, a refused login, a full volume) is
refused with one clear line, before any worker spends time on it."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.support.commands import sh
from tests.support.end_to_end import PREFIX, Manager, Run, run_py, start_manager
from tests.support.git_servers import GitServer
from tests.support.scripted_api import text


def test_a_prompt_of_180_kb_reaches_the_agent_whole(run: Run, manager: Manager):
    body = "".join(chr(0x4E00 + n % 20000) for n in range(60_000))  # CJK: 3 bytes each in UTF-8
    prompt = run.prompt("big", text("read it all"), words=body)
    assert len(prompt.encode()) > 180_000
    task = run.task_id("big")
    submitted = subprocess.run(
        ["docker", "exec", "-i", manager.name, "orch", "submit", "--id", task, "--file", "-", "--start"],
        input=prompt.encode(), capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    assert manager.orch("wait", task).returncode == 0
    assert body in run.api.requests_for(run.marker("big"))[0].prompt()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--prompt", "a\x01b", "--id", "fix.lock"], "git refuses it in a branch name"),
        (["--prompt", "p", "--id", "v1..2"], "git refuses it in a branch name"),
        (["--prompt", "p", "--id", "end."], "git refuses it in a branch name"),
        (["--prompt", "p", "--memory", "lots"], "memory limit 'lots'"),
    ],
)
def test_bad_input_is_refused_at_submit_in_one_line(manager: Manager, options, message):
    proc = manager.orch("submit", *options, check=False)
    assert proc.returncode == 2 and message in proc.stderr
    assert proc.stderr.startswith("orch submit: error: ") and len(proc.stderr.splitlines()) == 1


def test_a_nul_in_a_prompt_is_refused_at_submit_and_at_spawn(run: Run, manager: Manager):
    proc = subprocess.run(["docker", "exec", "-i", manager.name, "orch", "submit", "--file", "-"],
                          input=b"before\0after", capture_output=True, timeout=60, check=False)  # fmt: skip
    assert proc.returncode == 2 and "holds a NUL character (at character 6)" in proc.stderr.decode()
    # A task file written by hand: spawn-worker refuses it before any container is made.
    task = run.task_id("nul")
    run.write(f"tasks/{task}.json", json.dumps({"id": task, "prompt": "a\0b"}))
    spawned = sh("docker", "exec", manager.name, "spawn-worker", "flutter", task, check=False)
    assert spawned.returncode == 2 and "holds a NUL character" in spawned.stderr
    assert sh("docker", "ps", "-aq", "--filter", f"name=worker-{task}").stdout == ""


def test_a_refused_login_stops_run_py_and_a_new_batch_in_seconds(run: Run, git_server: GitServer, token_file, token,
                                                                 tmp_path):  # fmt: skip
    refused = tmp_path / "refused-token"
    refused.write_text("sk-ant-oat01-refused-" + run.id + "\n")
    refused.chmod(0o600)
    run.api.refuse(refused.read_text().strip())
    started = time.monotonic()
    proc = run_py(
        run, "--no-repo", "--token", str(refused), "--volume", run.volume, "--name", run.manager, "--", "true"
    )
    assert proc.returncode == 1 and proc.stderr.startswith("run.py: error: the Claude token was refused (401)")
    assert sh("docker", "ps", "-aq", "--filter", f"name={run.manager}").stdout == ""
    # A manager whose token is refused once it runs (revoked meanwhile): orch start refuses the batch.
    repo = git_server.repo(f"login-{run.id}")
    revoked = tmp_path / "revoked-token"
    revoked.write_text("sk-ant-oat01-revoked-" + run.id + "\n")
    revoked.chmod(0o600)
    manager = start_manager(run, repo, revoked)
    run.api.refuse(revoked.read_text().strip())
    try:
        manager.orch("submit", "--id", run.task_id("never"), "--prompt", run.prompt("never", text("no")))
        start = manager.orch("start", "--all", check=False)
        assert start.returncode == 1 and "the Claude token was refused (401)" in start.stderr
        assert manager.status()[run.task_id("never")]["state"] == "submitted"
    finally:
        manager.remove()
    print(f"refused login: stopped run.py and orch start within {time.monotonic() - started:.1f} s")


def test_a_full_volume_is_one_clear_line(run: Run, git_server: GitServer, token_file):
    sh("docker", "volume", "create", "--driver", "local", "--opt", "type=tmpfs", "--opt", "device=tmpfs",
       "--opt", "o=size=2m", run.volume)  # fmt: skip
    manager = start_manager(run, git_server.repo(f"full-{run.id}"), token_file)
    try:
        # The manager's one folder of the volume to write (the rest is read-only there) fills it.
        sh("docker", "exec", manager.name, "sh", "-c", "dd if=/dev/zero of=/orchestration/tasks/filler bs=64k || true")
        proc = manager.orch("submit", "--prompt", "p", check=False)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert proc.stderr.startswith("orch submit: error: cannot write") and "No space left on device" in proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1
    finally:
        manager.remove()
    assert PREFIX  # the volume carries the tests' prefix: the run fixture removes it
