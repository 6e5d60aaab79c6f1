"""End to end on the real engine: run.py starts the manager; from inside it, as the Manager
agent would in its shell, task files are written, workers spawned with spawn-worker, and
results read back from the shared volume. Every agent is the real Claude Code of the images,
its answers scripted by the tests' API."""

from __future__ import annotations

import json

from tests.support.commands import sh
from tests.support.end_to_end import MANAGER_IMAGE, Run, busy_for, docker_logs_show, run_py, spawn_worker_py
from tests.support.git_servers import GitServer
from tests.support.scripted_api import attempts, bash, error, reply, text, write
from tests.support.waiting import wait_until

CLONE = "/workspace/repo"  # the agent's clone in a worker


def task_file(task_id: str, prompt: str) -> str:
    return json.dumps({"id": task_id, "prompt": prompt})


def manager_script(tasks: dict[str, str]) -> str:
    """What the manager runs: write every task, spawn every worker, wait, show results."""
    lines = ["set -eu"]
    for task_id, prompt in tasks.items():
        lines.append(f"cat > /orchestration/tasks/{task_id}.json <<'EOF'\n{task_file(task_id, prompt)}\nEOF")
        lines.append(f"spawn-worker flutter {task_id}")
    lines.append("docker wait " + " ".join(f"worker-{t}" for t in tasks))
    lines.extend(f"cat /orchestration/results/{t}.json" for t in tasks)
    return "\n".join(lines)


def test_three_workers_run_in_parallel_and_a_failing_agent_fails(
    run: Run, git_server: GitServer, token_file, token, ssh_key
):
    repo = git_server.repo(f"app-{run.id}")
    good = [run.task_id(f"{n:03d}") for n in (1, 2, 3)]
    bad = run.task_id("fails")
    tasks = {
        t: run.prompt(
            t,
            reply(text(f"Adding the note for {t}."), write(f"{CLONE}/notes/{t}.txt", f"note of {t}\n")),
            bash("git status --short"),
            text(f"Added notes/{t}.txt"),
            words=f"Add a note for {t}.",
        )
        for t in good
    }
    # Overloaded twice (the worker's relay waits it out and asks again), then an error not to retry.
    tasks[bad] = run.prompt(
        bad, attempts(error(529), error(529), error(529, "Overloaded", should_retry=False)), words="Try something."
    )

    proc = run_py(
        run, "--repo", repo, "--token", str(token_file), "--ssh-key", str(ssh_key),
        "--volume", run.volume, "--name", run.manager,
        "--", "bash", "-c", manager_script(tasks),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # docker wait printed each worker's exit code, in order.
    assert proc.stdout.split("\n").count("0") >= 3 and "\n1\n" in proc.stdout

    for t in good:
        result = run.result(t)
        assert result["status"] == "success", result
        assert result["output"] == f"Added notes/{t}.txt"
        assert result["task_id"] == t and result["completed_at"] and result["session_id"]
        assert result["cost_usd"] > 0 and result["num_turns"] >= 3 and result["exit_code"] == 0
        assert result["branch"] == f"orchestrator/{t}" and result["pushed"] is True
        assert json.loads(run.read(f"status/{t}.json"))["state"] == "success"
        # The real Write tool edited the agent's clone; the real Bash tool saw it there; the work is
        # on its branch (the clone itself was on a tmpfs, gone with the container).
        shown = sh("git", "--git-dir", str(git_server.base / f"app-{run.id}.git"), "show",
                   f"orchestrator/{t}:notes/{t}.txt").stdout  # fmt: skip
        assert shown == f"note of {t}\n"
        assert run.tool_results(t)[1] == "?? notes/"
        logs = sh("docker", "logs", f"worker-{t}").stdout
        assert f"cloning {repo}" in logs
        assert f"[agent] -> Write {CLONE}/notes/{t}.txt" in logs
        assert "[agent] -> Bash git status --short" in logs and "[agent] <- ?? notes/" in logs
        assert "[agent] finished: success" in logs

    failed = run.result(bad)
    assert failed["status"] == "failed" and "API Error: 529" in failed["error"] and "Overloaded" in failed["error"]
    assert failed["exit_code"] == 1
    assert len(run.api.requests_for(run.marker(bad))) == 3  # the relay's retries: the CLI saw the last answer
    assert "waiting on the API's rate limit" in sh("docker", "logs", f"worker-{bad}").stdout
    assert json.loads(run.read(f"status/{bad}.json"))["state"] == "failed"
    inspect = json.loads(sh("docker", "inspect", f"worker-{bad}").stdout)[0]
    assert inspect["State"]["ExitCode"] == 1

    # Found by name and by label, as the README shows.
    by_name = sh("docker", "ps", "-a", "--filter", f"name=worker-{run.id}-", "--format", "{{.Names}}").stdout.split()
    assert sorted(by_name) == sorted(f"worker-{t}" for t in tasks)
    by_label = sh("docker", "ps", "-a", "--filter", f"label=orchestrator.task-id={good[0]}", "--format", "{{.Names}}")
    assert by_label.stdout.split() == [f"worker-{good[0]}"]

    # The API saw the real token; it is on no command line, in no file on the volume, in no log,
    # and in no container's configuration.
    assert f"Bearer {token}" in run.api.authorizations()
    assert token not in proc.stdout + proc.stderr
    assert run.volume_contains(token) == []
    for name in [*(f"worker-{t}" for t in tasks), run.manager]:
        if name == run.manager:
            continue  # removed with --rm when its command ended
        assert token not in sh("docker", "logs", name).stdout
        assert token not in sh("docker", "inspect", name).stdout


def test_the_manager_prepares_its_container(run: Run, git_server: GitServer, token_file, token, ssh_key):
    repo = git_server.repo(f"m-{run.id}")
    script = (
        "set -eu; id -u; pwd; git log --oneline | wc -l; git config --global user.name; "
        "ls ~/.ssh/id_ed25519 ~/.claude-token ~/.git-token 2>&1 | grep -c 'No such file'; "
        "ls /orchestration | tr '\\n' ' '; echo; stat -c '%a %G' /orchestration; "
        'python3 -c \'import json,os; s=json.load(open(os.path.expanduser("~/.claude.json")));'
        ' print(s["hasCompletedOnboarding"], s["projects"]["/workspace/repo"]["hasTrustDialogAccepted"])\'; '
        "cat ~/.claude/settings.json; docker version --format '{{.Server.Version}}' >/dev/null && echo docker-ok; "
        "command -v spawn-worker orch; "
        # Its Claude Code gets the relay and a ticket of it in place of the token, in its environment.
        'case "$CLAUDE_CODE_OAUTH_TOKEN" in relay-*) echo ticket-in-env;; esac; echo "$ANTHROPIC_BASE_URL"; '
        "tr '\\0' '\\n' < /proc/1/environ | grep -c CLAUDE_CODE_OAUTH_TOKEN || true"
    )
    proc = run_py(
        run, "--repo", repo, "--token", str(token_file), "--ssh-key", str(ssh_key), "--volume", run.volume,
        "--name", run.manager, "--", "bash", "-c", script,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout.splitlines()
    assert out[:3] == ["1000", "/workspace/repo", "1"]
    assert out[4] == "3"  # no token, key or git token of the user's: the control plane holds them
    assert {"tasks", "results", "status", "logs", "attempts", "bundles", "batches"} <= set(out[5].split())
    assert out[6] == "2770 claude"
    assert "True True" in out
    assert '"skipDangerousModePermissionPrompt": true' in proc.stdout
    assert "docker-ok" in out and "/usr/local/bin/spawn-worker" in out and "/usr/local/bin/orch" in out
    assert out[-3] == "ticket-in-env" and out[-2].startswith("http://127.0.0.1:") and out[-1] == "0"
    assert token not in proc.stdout + proc.stderr


def test_the_manager_docker_socket_layout_gives_the_manager_the_socket_and_the_token(
    run: Run, git_server: GitServer, token_file, token, ssh_key
):
    repo = git_server.repo(f"o-{run.id}")
    script = (
        "set -eu; stat -c '%a %U' ~/.ssh/id_ed25519 ~/.claude-token; "
        f"docker run --rm --entrypoint true {MANAGER_IMAGE} && echo ran; "
        'test "$CLAUDE_CODE_OAUTH_TOKEN" = "$(cat ~/.claude-token)" && echo token-in-env; '
        "tr '\\0' '\\n' < /proc/1/environ | grep -c CLAUDE_CODE_OAUTH_TOKEN || true"
    )
    proc = run_py(
        run, "--repo", repo, "--token", str(token_file), "--ssh-key", str(ssh_key), "--volume", run.volume,
        "--name", run.manager, "--manager-docker-socket", "--", "bash", "-c", script,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == ["600 claude", "600 claude", "ran", "token-in-env", "0"]
    assert sh("docker", "ps", "-aq", "--filter", f"name={run.manager}-control").stdout == ""
    assert token not in proc.stdout + proc.stderr


def test_the_manager_command_exit_code_comes_back(run: Run, token_file):
    proc = run_py(
        run,
        "--no-repo",
        "--token",
        str(token_file),
        "--volume",
        run.volume,
        "--name",
        run.manager,
        "--",
        "sh",
        "-c",
        "exit 7",
    )
    assert proc.returncode == 7, proc.stderr


def test_spawn_worker_from_the_host(run: Run, git_server: GitServer, token_file):
    """The host has no /orchestration: spawn-worker reaches the volume through the engine's folder
    of it (the tests run as root), or else through a helper container."""
    repo = git_server.repo(f"h-{run.id}")
    task = run.task_id("host")
    sh("docker", "volume", "create", run.volume)
    prompt = run.prompt("host", reply(text("Working on it."), bash(busy_for(120))))
    run.write(f"tasks/{task}.json", task_file(task, prompt))
    options = ("--repo", repo, "--token", str(token_file), "--orchestration-dir", "/nonexistent")
    first = spawn_worker_py(run, task, *options)
    assert first.returncode == 0, first.stderr
    assert f"started worker-{task}" in first.stdout

    second = spawn_worker_py(run, task, *options)
    assert second.returncode == 1
    assert second.stderr.strip() == f"spawn-worker: error: task {task} already has a running worker (worker-{task})"

    # docker stop by hand: the worker stops its agent and still records how the task ended,
    # interrupted (not the task's fault: a batch would run it again).
    wait_until(lambda: docker_logs_show(f"worker-{task}", "-> Bash python3 -c"), "the agent at work", timeout=120)
    sh("docker", "stop", f"worker-{task}")
    assert sh("docker", "wait", f"worker-{task}").stdout.strip() == "1"
    result = run.result(task)
    assert result["status"] == "interrupted" and "stopped" in result["error"]

    bad = run.task_id("bad")
    run.write(f"tasks/{bad}.json", json.dumps({"id": bad, "prompt": ""}))
    refused = spawn_worker_py(run, bad, *options)
    assert refused.returncode == 2 and "field 'prompt' must be a non-empty string" in refused.stderr  # bad input
    assert "Traceback" not in refused.stderr
    assert sh("docker", "ps", "-aq", "--filter", f"name=worker-{bad}").stdout.strip() == ""


def test_the_debugging_recipes_work(run: Run, git_server: GitServer, token_file):
    repo = git_server.repo(f"d-{run.id}")
    task = run.task_id("dbg")
    prompt = run.prompt("dbg", text("hi"))
    script = (
        f"cat > /orchestration/tasks/{task}.json <<'EOF'\n{task_file(task, prompt)}\nEOF\n"
        f"spawn-worker flutter {task} && docker wait worker-{task}"
    )
    proc = run_py(
        run, "--repo", repo, "--token", str(token_file), "--volume", run.volume, "--name", run.manager,
        "--", "bash", "-c", script,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"worker-{task}" in sh("docker", "ps", "-a", "--filter", "name=worker-").stdout
    assert "[agent] finished: success" in sh("docker", "logs", f"worker-{task}").stdout
    # The original recipe uses alpine; any small image shows the same.
    listing = sh(
        "docker", "run", "--rm", "-v", f"{run.volume}:/data", "debian:bookworm-slim", "ls", "-la", "/data/"
    ).stdout
    assert all(name in listing for name in ("tasks", "results", "status", "logs"))


def test_the_manager_s_clone_outlives_its_container(run: Run, git_server: GitServer, token_file):
    repo = git_server.repo(f"ws-{run.id}")
    first = run_py(run, "--repo", repo, "--token", str(token_file), "--volume", run.volume, "--name", run.manager,
                   "--", "sh", "-c", "echo unpushed > notes.txt && git add notes.txt")  # fmt: skip
    assert first.returncode == 0, first.stderr
    # A new manager (the old one is gone with --rm) carries on in the same clone, with its work in it.
    second = run_py(run, "--repo", repo, "--token", str(token_file), "--volume", run.volume, "--name", run.manager,
                    "--", "sh", "-c", "git status --short; cat notes.txt")  # fmt: skip
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines() == ["A  notes.txt", "unpushed"]
    assert "cloning" not in second.stderr
