"""Work comes back, end to end: workers push their task branches over SSH to a git server of
the tests' own, the manager merges them, and a push that fails keeps the work in a bundle.

The server (tests/support/git_servers.py) listens on 127.0.0.1; the manager and the workers
reach it through the host network, with the test's key and its host key pinned (--known-hosts).
Every agent is the real Claude Code of the images, its answers scripted by the tests' API: it
edits the clone with its real tools and leaves the commit and the push to its worker.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.support.commands import sh
from tests.support.end_to_end import Manager, Run, spawn_worker_py, start_manager
from tests.support.git_servers import HttpGitServer, SshGitServer, keygen
from tests.support.scripted_api import bash, read, reply, text, write

CLONE = "/workspace/repo"  # the agent's clone in a worker


@pytest.fixture
def repo_name(run: Run) -> str:
    return f"app-{run.id}"


@pytest.fixture
def ssh_manager(run: Run, ssh_git_server: SshGitServer, repo_name: str, token_file) -> Iterator[Manager]:
    """A manager on a new repository of the SSH git server, with the server's key and host key."""
    url = ssh_git_server.repo(repo_name)
    manager = start_manager(run, url, token_file, "--ssh-key", str(ssh_git_server.key),
                            "--known-hosts", str(ssh_git_server.known_hosts))  # fmt: skip
    yield manager
    manager.remove()


def manager_git(manager: Manager, *args: str) -> str:
    return sh("docker", "exec", manager.name, "git", "-C", "/workspace/repo", *args).stdout


def test_three_workers_push_three_branches_and_the_manager_merges_them(
    run: Run, ssh_manager: Manager, ssh_git_server: SshGitServer, repo_name: str
):
    ids = [run.task_id(f"n{n}") for n in (1, 2, 3)]
    prompts = {
        task_id: run.prompt(
            task_id,
            reply(text(f"Adding note {n}."), write(f"{CLONE}/notes/{n}.txt", f"note {n}\nsecond line")),
            text(f"added note {n}"),
            words=f"Add note {n}.",
        )
        for n, task_id in enumerate(ids, 1)
    }
    for task_id, prompt in prompts.items():
        ssh_manager.submit(prompt, "--id", task_id)
    ssh_manager.orch("start", "--all")
    assert ssh_manager.orch("wait", "--all").returncode == 0

    branches = ssh_git_server.branches(repo_name)
    main = branches["main"]
    for n, task_id in enumerate(ids, 1):
        done = ssh_manager.result(task_id)
        branch = f"orchestrator/{task_id}"
        assert done["status"] == "success" and done["branch"] == branch and done["pushed"] is True
        assert done["base_commit"] == main and done["head_commit"] == branches[branch] and done["commits"] == 1
        assert done["files_changed"] == [{"path": f"notes/{n}.txt", "added": 2, "deleted": 0}]
        assert ssh_git_server.show(repo_name, branch, f"notes/{n}.txt") == f"note {n}\nsecond line"
        subject = ssh_git_server.git(repo_name, "log", "-1", "--format=%s", branch).strip()
        assert subject == f"{task_id}: {prompts[task_id]}"  # the prompt's first line, marker and all
        assert done["output"] == f"added note {n}"
    assert f"orchestrator/{ids[0]}" in ssh_manager.orch("status").stdout  # the BRANCH column

    merged = ssh_manager.orch("merge", "--all", "--push")
    assert "pushed orchestrator/integration to origin" in merged.stdout
    assert merged.stdout.count("merged") == 3
    for n in (1, 2, 3):
        assert ssh_git_server.show(repo_name, "orchestrator/integration", f"notes/{n}.txt").startswith(f"note {n}")
    assert ssh_git_server.branches(repo_name)["main"] == main  # main itself is never touched
    assert manager_git(ssh_manager, "status", "--porcelain") == ""


def test_two_workers_on_the_same_line_give_one_merge_and_a_conflict_report(
    run: Run, ssh_manager: Manager, ssh_git_server: SshGitServer, repo_name: str
):
    first, second = run.task_id("title-a"), run.task_id("title-b")
    for task_id, who in ((first, "A"), (second, "B")):
        # The Write tool replaces a file only once the agent has read it.
        prompt = run.prompt(
            task_id, read(f"{CLONE}/README.md"), write(f"{CLONE}/README.md", f"# App by {who}"), words="Retitle."
        )
        ssh_manager.submit(prompt, "--id", task_id)
    ssh_manager.orch("start", "--all")
    assert ssh_manager.orch("wait", "--all").returncode == 0
    before = ssh_git_server.branches(repo_name)

    merged = ssh_manager.orch("merge", "--all", "--push", check=False)
    assert merged.returncode == 1, merged.stdout + merged.stderr
    assert f"{first}  merged" in merged.stdout
    assert f"{second}  conflict" in merged.stdout and f"{second} conflicts with what was merged before it, in: " \
        "README.md" in merged.stdout  # fmt: skip
    report = json.loads(ssh_manager.orch("merge", second, "--json", check=False).stdout)
    assert report["tasks"] == [{
        "task_id": second, "state": "conflict", "branch": f"orchestrator/{second}", "commit": None,
        "files": ["README.md"], "message": f"{second} conflicts with what was merged before it, in: README.md",
    }]  # fmt: skip

    after = ssh_git_server.branches(repo_name)
    for task_id in (first, second):  # both branches intact on the server
        assert after[f"orchestrator/{task_id}"] == before[f"orchestrator/{task_id}"]
    assert ssh_git_server.show(repo_name, f"orchestrator/{second}", "README.md") == "# App by B"
    assert ssh_git_server.show(repo_name, "orchestrator/integration", "README.md") == "# App by A"
    # The manager's clone is left clean: no merge under way, no leftover worktree.
    assert manager_git(ssh_manager, "status", "--porcelain") == ""
    assert manager_git(ssh_manager, "worktree", "list").count("\n") == 1


def test_a_rejected_key_fails_the_task_naming_the_error_and_keeps_the_work_in_a_bundle(
    run: Run, ssh_manager: Manager, ssh_git_server: SshGitServer, repo_name: str, token_file, tmp_path
):
    # A key of its own, accepted for the clone and taken off the server before the push.
    key = keygen(tmp_path / "id_revoked")
    ssh_git_server.authorize(key)
    task_id = run.task_id("revoked")
    prompt = run.prompt(
        task_id, write(f"{CLONE}/notes/precious.txt", "precious work"), bash("sleep 4"), text("done"),
        words="Write the precious file.",
    )  # fmt: skip
    ssh_manager.submit(prompt, "--id", task_id)
    spawn = spawn_worker_py(run, task_id, "--repo", ssh_git_server.url(repo_name), "--token", str(token_file),
                            "--ssh-key", str(key), "--known-hosts", str(ssh_git_server.known_hosts))  # fmt: skip
    assert spawn.returncode == 0, spawn.stderr
    ssh_manager.wait_for_log(task_id, "-> Bash sleep 4")  # cloned with the key, and at work
    ssh_git_server.revoke(key)

    assert ssh_manager.orch("wait", task_id, check=False).returncode == 1
    failed = ssh_manager.result(task_id)
    assert failed["status"] == "failed" and failed["pushed"] is False
    assert f"the push of orchestrator/{task_id} failed" in failed["error"]
    assert "Permission denied (publickey)" in failed["error"]
    bundle = f"/orchestration/bundles/{task_id}-attempt-1.bundle"
    assert failed["bundle"] == bundle and bundle in failed["error"]
    assert f"orchestrator/{task_id}" not in ssh_git_server.branches(repo_name)
    # The work is in the bundle: fetch it into the manager's clone and read the file.
    sh("docker", "exec", ssh_manager.name, "git", "-C", "/workspace/repo", "fetch", "--quiet", bundle,
       f"orchestrator/{task_id}:recovered")  # fmt: skip
    assert manager_git(ssh_manager, "show", "recovered:notes/precious.txt") == "precious work"
    assert failed["output"] == "done"  # the agent itself finished
    assert "(not pushed)" in ssh_manager.orch("status", task_id).stdout
    assert (
        "its branch was not pushed; its work is in " + bundle in ssh_manager.orch("merge", task_id, check=False).stdout
    )


def test_over_https_the_token_reaches_git_only_through_the_credential_helper(
    run: Run, http_git_server: HttpGitServer, token_file, tmp_path
):
    git_token = tmp_path / "git-token"
    git_token.write_text(http_git_server.token + "\n")
    url = http_git_server.repo(f"web-{run.id}")
    manager = start_manager(run, url, token_file, "--git-token", str(git_token))
    try:
        task_id = run.task_id("web")
        prompt = run.prompt(
            task_id,
            write(f"{CLONE}/web/index.html", "<h1>hi</h1>"),
            bash("env | grep -c GIT_TOKEN || true"),
            text("Added the page."),
            words="Add a page.",
        )
        manager.submit(prompt, "--id", task_id)
        manager.orch("start", task_id)
        assert manager.orch("wait", task_id).returncode == 0
        done = manager.result(task_id)
        assert done["pushed"] is True and done["branch"] == f"orchestrator/{task_id}"
        assert http_git_server.show(f"web-{run.id}", done["branch"], "web/index.html") == "<h1>hi</h1>"
        logs = manager.orch("logs", task_id).stdout
        # The agent's environment has no GIT_TOKEN: its command counted none.
        assert run.tool_results(task_id)[1] == "0"
        assert "[agent] -> Bash env | grep -c GIT_TOKEN || true" in logs and "[agent] <- 0" in logs
        # The token is in no URL, no file of the volume, no log, no git configuration.
        secret = http_git_server.token
        assert run.volume_contains(secret) == []
        assert secret not in logs and secret not in sh("docker", "logs", f"worker-{task_id}").stdout
        # The manager's clone borrows from the control plane's mirror; the control plane's clone and
        # mirror name the repository, and the token is in neither's configuration.
        config = sh("docker", "exec", manager.name, "sh", "-c", "cat ~/.gitconfig; git -C /workspace/repo remote -v")
        assert secret not in config.stdout and "origin\t/mirror/repo.git (push)" in config.stdout
        control = sh("docker", "exec", f"{manager.name}-control", "sh", "-c", "cat ~/.gitconfig; "
                     "git -C /workspace/repo remote -v; git -C /mirror/repo.git config --list")  # fmt: skip
        assert secret not in control.stdout and f"origin\t{url} (push)" in control.stdout
        args = sh("docker", "inspect", "--format", "{{json .Args}} {{json .Config.Cmd}}", f"worker-{task_id}").stdout
        assert secret not in args
    finally:
        manager.remove()


def spawn_from_host(run: Run, task_id: str, url: str, token_file, *options: str) -> dict:
    """spawn-worker on the host for a task written on the volume; its result once the worker exits."""
    prompt = run.prompt(task_id, text("hi"), words="Say hi.")
    run.write(f"tasks/{task_id}.json", json.dumps({"id": task_id, "prompt": prompt}))
    spawn = spawn_worker_py(run, task_id, "--repo", url, "--token", str(token_file), *options)
    assert spawn.returncode == 0, spawn.stderr
    assert sh("docker", "wait", f"worker-{task_id}").stdout.strip() == "1"
    return run.result(task_id)


def test_a_pinned_host_key_that_does_not_match_refuses_the_server(
    run: Run, ssh_git_server: SshGitServer, repo_name: str, token_file, tmp_path
):
    url = ssh_git_server.repo(repo_name)
    # Another key in the server's place: whatever answers there is not trusted.
    impostor = ssh_git_server.wrong_key.with_suffix(".pub").read_text().split()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{ssh_git_server.port} {impostor[0]} {impostor[1]}\n")
    failed = spawn_from_host(run, run.task_id("pinned"), url, token_file,
                             "--ssh-key", str(ssh_git_server.key), "--known-hosts", str(known_hosts))  # fmt: skip
    assert failed["status"] == "failed" and "Host key verification failed" in failed["error"]
    assert failed["exit_code"] is None  # the agent never ran
    assert run.api.requests_for(run.marker(run.task_id("pinned"))) == []


def test_a_key_the_server_never_knew_fails_at_the_clone_naming_the_error(
    run: Run, ssh_git_server: SshGitServer, repo_name: str, token_file
):
    url = ssh_git_server.repo(repo_name)
    options = ("--ssh-key", str(ssh_git_server.wrong_key), "--known-hosts", str(ssh_git_server.known_hosts))
    failed = spawn_from_host(run, run.task_id("stranger"), url, token_file, *options)
    assert failed["status"] == "failed" and "Permission denied (publickey)" in failed["error"]
    assert failed["exit_code"] is None and failed["branch"] is None  # no clone, so no work to keep
    assert run.api.requests_for(run.marker(run.task_id("stranger"))) == []  # the agent never ran
