"""The worker runtime, run as a process on this machine (as root, the agent as a user of the
tests' own) with a stand-in agent that follows directives in its prompt.

Why a stand-in here: these tests check the runtime's own logic (results, signals, timeouts,
hand-back, secrets) in seconds, without Docker and without the 250 MB Claude Code binary.
The same runtime runs in the worker image with the real Claude Code against a scripted API in
the end-to-end tests (tests/e2e/).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support.git_servers import seed_repo, start_git_daemon
from tests.support.paths import ROOT, STANDIN
from tests.support.ports import free_port
from tests.support.waiting import wait_until

AGENT_USER = "orch-test-agent"


def ensure_agent_user() -> None:
    """A user of the tests' own for the agent: the runtime ends every process of the agent's
    user, which must not be anybody else's."""
    if os.geteuid() != 0:
        pytest.fail("the worker runtime starts the agent as another user: these tests need root (CI runs as root)")
    if subprocess.run(["id", "-u", AGENT_USER], capture_output=True, check=False).returncode:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/bin/sh", AGENT_USER], check=True)


@pytest.fixture
def box(token: str):
    """A worker's world, laid out as in the image: the runtime's home with the secrets, the
    agent's clone folder in a folder of root's, the shared folder, a repository, and the
    stand-in on the agent's PATH. It lives outside pytest's private temporary folder, which
    the agent's user could not enter."""
    ensure_agent_user()
    root = Path(tempfile.mkdtemp(prefix="worker-box-", dir="/tmp"))
    root.chmod(0o755)
    bin_dir = root / "bin"
    bin_dir.mkdir()
    # A copy, not a link: the checkout may sit in a folder the agent's user cannot enter (a
    # clone into `mktemp -d`, mode 0700).
    shutil.copy2(STANDIN / "claude", bin_dir / "claude")
    repo = seed_repo(root / "remote")
    orch = root / "orchestration"
    for sub in ("tasks", "results", "status", "logs"):
        (orch / sub).mkdir(parents=True)
    home = root / "home"
    home.mkdir(mode=0o700)
    (home / ".claude-token").write_text(token + "\n")
    # As in the image (or its tmpfs): open to all and sticky; the agent's user makes its folders.
    workspace = root / "workspace"
    workspace.mkdir()
    workspace.chmod(0o1777)
    (root / "runtime").mkdir(mode=0o755)
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "HOME": str(home),
        "WORKSPACE": str(workspace),
        "ORCHESTRATION_DIR": str(orch),
        "ORCHESTRATOR_RUNTIME_DIR": str(root / "runtime"),
        "ORCHESTRATOR_AGENT_USER": AGENT_USER,
        "TASK_ID": "task-001",
        "REPO_URL": repo.as_uri(),
        "REPO_BRANCH": "main",
        "ANTHROPIC_MODEL": "claude-test-model",
        "GIT_USER_NAME": "Worker Test",
        "GIT_USER_EMAIL": "worker@test",
    }
    yield Box(root, orch, env)
    shutil.rmtree(root, ignore_errors=True)


class Box:
    def __init__(self, root: Path, orch: Path, env: dict[str, str]):
        self.root, self.orch, self.env = root, orch, env

    def task(self, prompt: str, task_id: str = "task-001", **fields) -> None:
        (self.orch / "tasks" / f"{task_id}.json").write_text(json.dumps({"id": task_id, "prompt": prompt, **fields}))

    def start(self, **env: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "orchestrator.worker"],
            env={**self.env, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def start_until_the_agent_sleeps(self, **env: str) -> subprocess.Popen[str]:
        """Start the worker; return once its agent is in its `@sleep 60`."""
        proc = self.start(**env)
        wait_until(lambda: "sleep 60" in self.read("logs/task-001.jsonl"), "the agent at its @sleep 60")
        return proc

    def read(self, path: str) -> str:
        """A file of the shared folder, or "" while there is none."""
        file = self.orch / path
        return file.read_text() if file.exists() else ""

    def run(self, **env: str) -> tuple[int, str]:
        proc = self.start(**env)
        out, _ = proc.communicate(timeout=120)
        return proc.returncode, out

    def result(self, task_id: str = "task-001") -> dict:
        return json.loads((self.orch / "results" / f"{task_id}.json").read_text())

    def status(self, task_id: str = "task-001") -> dict:
        return json.loads((self.orch / "status" / f"{task_id}.json").read_text())

    def everything_written(self) -> str:
        """Every file the worker could have written to, as one text."""
        texts = []
        for folder in (self.orch, self.root / "home", self.root / "workspace", self.root / "runtime"):
            for path in folder.rglob("*"):
                if path.is_file() and ".git/" not in str(path):
                    texts.append(path.read_text(errors="replace"))
        return "\n".join(texts)


def test_success_edits_the_clone_and_writes_a_full_result(box: Box):
    box.task("Write a note.\n@write notes/hello.txt hello world\n@run cat notes/hello.txt\n@say The note is written.")
    code, out = box.run()
    assert code == 0, out
    result = box.result()
    assert result["status"] == "success"
    assert result["output"] == "The note is written."
    assert result["task_id"] == "task-001" and result["completed_at"].endswith("Z")
    assert result["exit_code"] == 0 and result["error"] is None
    assert result["num_turns"] == 3 and result["cost_usd"] == pytest.approx(0.0375)
    assert result["session_id"] and result["model"] == "claude-test-model"
    assert result["started_at"] <= result["completed_at"] and result["duration_seconds"] >= 0
    assert (box.root / "workspace" / "repo" / "notes" / "hello.txt").read_text() == "hello world"
    assert box.status()["state"] == "success"
    # docker logs shows the agent's progress, line by line.
    assert "[agent] -> Write" in out and "notes/hello.txt" in out
    assert "[agent] <- hello world" in out
    assert "[agent] finished: success, 3 turns" in out
    transcript = (box.orch / "logs" / "task-001.jsonl").read_text().splitlines()
    assert json.loads(transcript[0])["subtype"] == "init" and json.loads(transcript[-1])["type"] == "result"
    # The same lines stay on the volume for `orch logs`, up to the result.
    kept = (box.orch / "logs" / "task-001.log").read_text()
    assert "[agent] finished: success, 3 turns" in kept and kept in out
    assert box.status()["started_at"] == result["started_at"]


def test_the_attempt_and_max_turns_reach_the_result_and_the_agent(box: Box):
    box.task("@say one\n@say two\n@say three", max_turns=2)
    code, out = box.run(TASK_ATTEMPT="3")
    assert code == 1, out
    result = box.result()
    assert result["status"] == "failed" and "error_max_turns" in result["error"]
    assert result["attempt"] == 3 and box.status()["attempt"] == 3


@pytest.mark.parametrize(
    ("prompt", "env", "status", "error"),
    [
        ("@api-error Overloaded", {}, "failed", "API Error: Overloaded"),
        ("@crash 3", {}, "failed", "without a result (exit code 3)"),
        ("@max-turns", {}, "failed", "error_max_turns"),
        ("@sleep 60", {"TASK_TIMEOUT": "1"}, "timeout", "did not finish within 1 s"),
    ],
)
def test_every_kind_of_agent_failure_gives_a_failure_result(box: Box, prompt, env, status, error):
    box.task(prompt)
    code, out = box.run(**env)
    assert code == 1, out
    result = box.result()
    assert result["status"] == status
    assert error in result["error"]
    assert box.status()["state"] == status


@pytest.mark.parametrize(
    ("task_timeout", "spawn_worker_timeout", "applied"),
    [
        (2, "1", 1),  # spawn-worker --timeout (TASK_TIMEOUT) wins over the task's own
        (1, None, 1),  # without it, the task's own applies (not the default of an hour)
    ],
)
def test_the_task_timeout_applies_unless_spawn_worker_set_one(
    box: Box, task_timeout: int, spawn_worker_timeout: str | None, applied: int
):
    box.task("@sleep 60", timeout=task_timeout)
    code, out = box.run(**({"TASK_TIMEOUT": spawn_worker_timeout} if spawn_worker_timeout else {}))
    assert code == 1, out
    result = box.result()
    assert result["status"] == "timeout" and f"did not finish within {applied} s" in result["error"], result
    assert f"timeout {applied} s)" in out  # what the worker said as the agent started


# docker stop sends SIGTERM: orch cancel says so in the status first; anyone else (an engine
# shutdown, a person) interrupts. orch's dispatcher sends SIGUSR1 to a worker past its deadline.
@pytest.mark.parametrize(
    ("signum", "asked", "status"),
    [
        (signal.SIGTERM, None, "interrupted"),
        (signal.SIGTERM, "cancelled", "cancelled"),
        (signal.SIGUSR1, None, "timeout"),
    ],
)
def test_a_stop_signal_ends_the_agent_and_still_writes_a_result(box: Box, signum, asked, status):
    box.task("@sleep 60")
    proc = box.start_until_the_agent_sleeps()
    if asked:
        status_file = box.orch / "status" / "task-001.json"
        status_file.write_text(json.dumps({**json.loads(status_file.read_text()), "stop_reason": asked}))
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, out
    assert box.result()["status"] == status


@pytest.mark.parametrize(
    ("task_text", "error"),
    [
        ('{"id": "task-001"}', "field 'prompt'"),
        ('{"id": "task-001", "prompt": ', "not valid JSON"),
        (None, "does not exist"),
    ],
)
def test_a_bad_task_file_gives_a_failure_result_naming_the_problem(box: Box, task_text, error):
    if task_text is not None:
        (box.orch / "tasks" / "task-001.json").write_text(task_text)
    code, _ = box.run()
    assert code == 1
    assert box.result()["status"] == "failed" and error in box.result()["error"]


def test_a_failed_clone_gives_git_s_message_without_credentials(box: Box, token: str):
    box.task("@say hi")
    code, _ = box.run(REPO_URL=f"https://x-access-token:{token}@127.0.0.1:9/nothing.git")
    assert code == 1
    result = box.result()
    assert result["status"] == "failed" and "git" in result["error"] and "clone" in result["error"]
    assert token not in json.dumps(result)
    assert "[REDACTED]@127.0.0.1" in result["error"]


def test_no_repository_is_a_failure(box: Box):
    box.task("@say hi")
    code, _ = box.run(REPO_URL="")
    assert code == 1 and "REPO_URL" in box.result()["error"]


def test_an_existing_result_is_never_overwritten(box: Box):
    box.task("@say hi")
    existing = {"task_id": "task-001", "status": "success", "output": "first", "completed_at": "2026-01-01T00:00:00Z"}
    (box.orch / "results" / "task-001.json").write_text(json.dumps(existing))
    code, out = box.run()
    assert code == 1
    assert "already exists" in out and "Traceback" not in out
    assert box.result() == existing


def test_no_credential_is_a_failure(box: Box):
    (box.root / "home" / ".claude-token").unlink()
    box.task("@say hi")
    code, _ = box.run()
    assert code == 1 and "no Claude credential" in box.result()["error"]


def test_the_agent_gets_a_ticket_for_the_relay_and_never_the_token(box: Box, token: str):
    runtime_home = box.root / "home"
    box.task(
        "@run echo token is $CLAUDE_CODE_OAUTH_TOKEN at $ANTHROPIC_BASE_URL\n"
        f"@run id -un; ls {runtime_home}; cat /proc/$(ps -o ppid= -p $PPID | tr -d ' ')/environ\n@say done"
    )
    code, out = box.run()
    assert code == 0, out
    assert token not in out and token not in box.everything_written()
    assert "token is relay-" in out and "at http://127.0.0.1:" in out
    # The agent is its own user, and reads neither the runtime's home nor its environment.
    assert f"[agent] <- error: {AGENT_USER}" in out and out.count("Permission denied") == 2
    # The token file is gone once read.
    assert not (box.root / "home" / ".claude-token").exists()


def still_running() -> bytes:
    """The agent's user's processes that still run (a zombie the machine has not reaped yet runs
    nothing)."""
    return subprocess.run(["pgrep", "-u", AGENT_USER, "-r", "R,S,D,T,t"], capture_output=True, check=False).stdout


def remote_git(box: Box, *args: str) -> str:
    return subprocess.run(["git", "-C", str(box.root / "remote"), *args], capture_output=True, text=True,
                          check=True).stdout  # fmt: skip


def test_the_work_is_committed_on_the_task_branch_and_pushed(box: Box):
    box.task("Add notes.\n@write notes/a.txt one\\ntwo\n@run git rm -q README.md\n@say done")
    code, out = box.run(GIT_USER_NAME="Ann Author", GIT_USER_EMAIL="ann@example.com")
    assert code == 0, out
    result = box.result()
    base = remote_git(box, "rev-parse", "main").strip()
    assert result["branch"] == "orchestrator/task-001" and result["pushed"] is True and result["bundle"] is None
    assert result["base_commit"] == base and result["commits"] == 1
    assert result["head_commit"] == remote_git(box, "rev-parse", "orchestrator/task-001").strip()
    assert sorted(result["files_changed"], key=lambda c: c["path"]) == [
        {"path": "README.md", "added": 0, "deleted": 1},
        {"path": "notes/a.txt", "added": 2, "deleted": 0},
    ]
    log = remote_git(box, "log", "-1", "--format=%an <%ae>%n%s", "orchestrator/task-001").splitlines()
    assert log == ["Ann Author <ann@example.com>", "task-001: Add notes."]
    assert remote_git(box, "rev-parse", "main").strip() == base  # only the task's branch moved


def test_a_retry_pushes_a_branch_of_its_own_and_a_prefix_can_be_set(box: Box):
    box.task("@write x.txt x")
    code, out = box.run(TASK_ATTEMPT="2", ORCHESTRATOR_BRANCH_PREFIX="ai/")
    assert code == 0, out
    assert box.result()["branch"] == "ai/task-001-attempt-2"
    assert "ai/task-001-attempt-2" in remote_git(box, "branch", "--list")


def test_nothing_changed_means_no_branch(box: Box):
    box.task("@say nothing to do")
    code, out = box.run()
    assert code == 0, out
    result = box.result()
    assert result["commits"] == 0 and result["branch"] is None and result["pushed"] is False
    assert "orchestrator/" not in remote_git(box, "branch", "--list")


def test_a_refused_push_fails_the_task_and_keeps_the_work_in_a_bundle(box: Box, tmp_path: Path):
    hook = box.root / "remote" / ".git" / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'push refused by the test server' >&2\nexit 1\n")
    hook.chmod(0o755)
    box.task("@write notes/kept.txt precious work")
    code, out = box.run()
    assert code == 1, out
    result = box.result()
    assert result["status"] == "failed" and result["pushed"] is False
    assert "the push of orchestrator/task-001 failed" in result["error"]
    assert "push refused by the test server" in result["error"]
    bundle = box.orch / "bundles" / "task-001-attempt-1.bundle"
    assert result["bundle"] == str(bundle) and str(bundle) in result["error"]
    # The bundle gives the work back.
    restored = tmp_path / "restored"
    subprocess.run(["git", "clone", "-q", str(box.root / "remote"), str(restored)], check=True)
    subprocess.run(["git", "-C", str(restored), "fetch", "-q", str(bundle), "orchestrator/task-001:saved"], check=True)
    shown = subprocess.run(
        ["git", "-C", str(restored), "show", "saved:notes/kept.txt"], capture_output=True, text=True, check=False
    )
    assert shown.stdout == "precious work"


def test_an_interrupted_agent_s_work_is_still_handed_back(box: Box):
    box.task("@write notes/partial.txt half done\n@sleep 60")
    proc = box.start_until_the_agent_sleeps()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    result = box.result()
    assert result["status"] == "interrupted" and result["pushed"] is True, out
    assert remote_git(box, "show", "orchestrator/task-001:notes/partial.txt") == "half done"


def test_the_git_token_stays_with_the_runtime(box: Box):
    secret = "ghp_" + "s3cr3tT0ken" * 2
    (box.root / "home" / ".git-token").write_text(secret)
    box.task('@run echo "agent sees [$GIT_TOKEN]"; git config --global credential.helper; env | grep -c ghp_')
    code, out = box.run()
    assert code == 0, out
    assert "agent sees [] 0" in out  # no token, no helper, nothing in its environment
    assert secret not in out and secret not in (box.root / "home" / ".gitconfig").read_text()
    assert secret not in box.everything_written()


def test_a_child_that_holds_the_agent_s_output_does_not_hold_the_worker(box: Box):
    # A background process holding the agent's own stdout, in a session of its own: the worker
    # waits for the agent, not for its output to end, and ends what it left behind. (Through
    # /proc/PID/fd/1 the agent could not open that pipe: it is the runtime's, mode 0600.)
    box.task("@leave sleep 300\n@say done")
    code, out = box.run()
    assert code == 0, out
    assert "ended 1 process(es) the agent left running" in out
    assert box.result()["status"] == "success"
    assert still_running() == b""


def test_a_timeout_holds_against_a_child_that_holds_the_output(box: Box):
    box.task("@leave sleep 300\n@sleep 300", timeout=2)
    code, out = box.run()
    assert code == 1, out
    assert box.result()["status"] == "timeout"
    assert still_running() == b""


def test_a_branch_name_origin_has_already_is_not_reused(box: Box):
    for name in ("orchestrator/task-001", "orchestrator/task-001-2"):
        remote_git(box, "branch", name, "main")
    box.task("@write x.txt x")
    code, out = box.run()
    assert code == 0, out
    assert box.result()["branch"] == "orchestrator/task-001-3" and box.result()["pushed"] is True
    assert "origin has a branch orchestrator/task-001 already" in out
    # The earlier branches are untouched.
    main = remote_git(box, "rev-parse", "main")
    assert remote_git(box, "rev-parse", "orchestrator/task-001") == main


def test_a_push_waits_for_a_git_server_that_went_away_and_came_back(box: Box):
    port = free_port()
    remote = f"git://127.0.0.1:{port}/remote"
    daemon = start_git_daemon(box.root, port, remote)
    try:
        box.task("@write notes/kept.txt kept\n@sleep 60")
        proc = box.start_until_the_agent_sleeps(REPO_URL=remote, ORCHESTRATOR_PUSH_RETRY_SECONDS="120")
        daemon.terminate()  # the server goes away while the agent works
        daemon.wait(10)
        # The stand-in's sleep is over when its process is told so: end the agent's run early.
        subprocess.run(["pkill", "-u", AGENT_USER, "-f", "standin|claude"], check=False)
        wait_until(
            lambda: "the server is out of reach; trying again" in box.read("logs/task-001.log"),
            lambda: f"the push to wait for the server; the worker's log:\n{box.read('logs/task-001.log')}",
        )
        daemon = start_git_daemon(box.root, port, remote)  # and comes back
        out, _ = proc.communicate(timeout=120)
    finally:
        daemon.terminate()
    result = box.result()
    assert result["pushed"] is True and result["bundle"] is None, out
    assert remote_git(box, "show", "orchestrator/task-001:notes/kept.txt") == "kept"


def test_an_attempt_after_an_interruption_carries_on_from_its_work(box: Box):
    # Attempt 1 was interrupted after it pushed its branch; orch queued attempt 2.
    main = remote_git(box, "rev-parse", "main").strip()
    remote_git(box, "checkout", "-q", "-b", "orchestrator/task-001")
    (box.root / "remote" / "notes").mkdir()
    (box.root / "remote" / "notes" / "first.txt").write_text("from attempt 1")
    remote_git(box, "add", "-A")
    subprocess.run(["git", "-C", str(box.root / "remote"), "-c", "user.name=t", "-c", "user.email=t@t", "commit",
                    "-qm", "attempt 1"], check=True)  # fmt: skip
    head = remote_git(box, "rev-parse", "HEAD").strip()
    remote_git(box, "checkout", "-q", "main")
    (box.orch / "attempts" / "task-001").mkdir(parents=True)
    (box.orch / "attempts" / "task-001" / "1.json").write_text(json.dumps({
        "task_id": "task-001", "status": "interrupted", "output": "", "completed_at": "2026-01-01T00:00:00Z",
        "error": "stopped", "attempt": 1, "branch": "orchestrator/task-001", "head_commit": head, "pushed": True,
        "base_commit": main,
    }))  # fmt: skip
    box.task("@run cat notes/first.txt\n@write notes/second.txt from attempt 2")
    code, out = box.run(TASK_ATTEMPT="2")
    assert code == 0, out
    assert "[agent] <- from attempt 1" in out and "carrying on from its work" in out
    result = box.result()
    # Its branch holds the whole of the work, both attempts', counted from where attempt 1 started.
    assert result["base_commit"] == main and result["started_from"][0]["commit"] == head
    assert result["branch"] == "orchestrator/task-001-attempt-2" and result["commits"] == 2
    assert sorted(c["path"] for c in result["files_changed"]) == ["notes/first.txt", "notes/second.txt"]
    shown = remote_git(box, "show", "orchestrator/task-001-attempt-2:notes/first.txt")
    assert shown == "from attempt 1"


def test_a_stop_asked_for_in_the_status_alone_stops_the_worker(box: Box):
    # What reaches a worker on another node of a swarm: no signal, only the shared volume.
    box.task("@write notes/partial.txt half done\n@sleep 60")
    proc = box.start_until_the_agent_sleeps()
    status_file = box.orch / "status" / "task-001.json"
    status_file.write_text(json.dumps({**json.loads(status_file.read_text()), "stop_reason": "cancelled"}))
    out, _ = proc.communicate(timeout=60)
    result = box.result()
    assert result["status"] == "cancelled" and result["pushed"] is True, out
    assert "orch asked this worker to stop (cancelled)" in out


def test_the_hand_back_runs_no_git_configuration_of_the_agent(box: Box):
    # Everything git could run, planted where git reads configuration: the agent's global and XDG
    # files, its repository's configuration and hooks, attributes that name a filter. Each command
    # leaves a mark in the workspace (which the box keeps) if it ever runs.
    marks = box.root / "workspace" / "tmp"
    hook = "$HOME/hook.sh"
    box.task(
        "@run printf '#!/bin/sh\\ntouch " + str(marks) + "/ran-$1\\ncat\\n' > $HOME/hook.sh && chmod +x $HOME/hook.sh\n"
        f"@run git config --global uploadpack.packObjectsHook '{hook} global'\n"
        f"@run mkdir -p $HOME/.config/git && git config --file $HOME/.config/git/config "
        f"uploadpack.packObjectsHook '{hook} xdg'\n"
        f"@run git config uploadpack.packObjectsHook '{hook} repo'\n"
        f"@run git config core.fsmonitor '{hook} fsmonitor'\n"
        f"@run git config core.alternateRefsCommand '{hook} alternates'\n"
        f"@run git config filter.evil.clean '{hook} filter' && echo '* filter=evil' > .gitattributes\n"
        "@run for h in pre-commit post-commit reference-transaction pre-push; do cp $HOME/hook.sh .git/hooks/$h; "
        "done\n"
        "@write work.txt the agent's work\n@say done"
    )
    code, out = box.run()
    assert code == 0, out
    assert sorted(p.name for p in marks.glob("ran-*")) == [], out
    result = box.result()
    assert result["pushed"] is True
    assert remote_git(box, "show", "orchestrator/task-001:work.txt") == "the agent's work"


def test_the_agent_s_tree_is_read_with_the_agent_s_rights_alone(box: Box, tmp_path: Path):
    # The race of the review: folders the walk has listed are swapped for links to the runtime's
    # files while it runs. Here a racer of the agent's user runs through the whole snapshot.
    from orchestrator import delivery, sandbox

    ensure_agent_user()
    user = sandbox.AgentUser.named(AGENT_USER)
    secret_dir = box.root / "runtime-secrets"
    secret_dir.mkdir(mode=0o700)
    (secret_dir / "id_ed25519").write_text("PRIVATE KEY OF THE RUNTIME\n")
    own, agent = box.root / "runtime" / "repo", box.root / "workspace" / "repo"
    workspace = delivery.prepare(
        url=box.env["REPO_URL"], branch="main", wanted="orchestrator/task-001", own=own, agent=agent, user=user,
        agent_env={}, git_env={}, scrub=lambda s: s, say=lambda s: None, task_id="task-001",
    )  # fmt: skip
    racer = (
        "import os, sys, time\n"
        "root, target = sys.argv[1], sys.argv[2]\n"
        "for i in range(300):\n"
        "    os.makedirs(f'{root}/d{i:03}', exist_ok=True)\n"
        "    open(f'{root}/d{i:03}/f', 'w').write('x')\n"
        "open(f'{root}/ready', 'w').close()\n"
        "end = time.monotonic() + 60\n"
        "while time.monotonic() < end:\n"
        "    for i in range(300):\n"
        "        d = f'{root}/d{i:03}'\n"
        "        try:\n"
        "            os.rename(d, d + '.x'); os.symlink(target, d)\n"
        "            os.unlink(d); os.rename(d + '.x', d)\n"
        "        except OSError:\n"
        "            pass\n"
    )
    proc = subprocess.Popen(sandbox.as_user_argv(user, [sys.executable, "-c", racer, str(agent), str(secret_dir)]))
    try:
        wait_until((agent / "ready").exists, "the racer to start", timeout=30)
        said: list[str] = []
        tip = delivery._take_agent_work(workspace, "task-001: race", said.append, box.root / "runtime")
    finally:
        proc.kill()
        proc.wait(10)
    listing = subprocess.run(["git", "-C", str(own), "ls-tree", "-r", "--name-only", tip], capture_output=True,
                             text=True, check=True).stdout  # fmt: skip
    blobs = subprocess.run(["git", "-C", str(own), "grep", "-l", "PRIVATE KEY OF THE RUNTIME", tip],
                           capture_output=True, text=True, check=False).stdout  # fmt: skip
    assert "id_ed25519" not in listing and blobs == ""
    # What the racer did to its own folders costs it those folders at most, and is said.
    assert "d000" in listing or any("could not be taken" in line for line in said), said


def test_the_agent_is_the_oom_killer_s_first_choice(box: Box):
    # Its processes start with the highest score. Lowering it is refused by the kernel where the
    # runtime may set a floor (CAP_SYS_RESOURCE, as here), else seen and the agent stopped.
    box.task("@run cat /proc/$PPID/oom_score_adj\n@run echo 0 > /proc/$PPID/oom_score_adj; echo rc=$?\n@sleep 30")
    _, out = box.run()
    assert "[agent] <- 1000" in out, out
    result = box.result()
    if "rc=0" in out:
        assert result["status"] == "failed" and "lowered the OOM score" in result["error"]
    else:
        assert "Permission denied" in out and result["status"] == "success"


def test_work_that_cannot_be_committed_is_saved_as_an_archive(box: Box, tmp_path: Path):
    from orchestrator import delivery, sandbox

    ensure_agent_user()
    user = sandbox.AgentUser.named(AGENT_USER)
    agent = box.root / "workspace" / "repo"
    delivery.make_agent_folder(agent, user)
    subprocess.run(sandbox.as_user_argv(user, ["sh", "-c", f"echo precious > {agent}/kept.txt"]), check=True)
    workspace = delivery.Workspace(box.root / "runtime" / "nothing", agent, "b", "0" * 40, user=user)
    dest = box.orch / "bundles" / "task-001-attempt-1.tar.gz"
    handed = delivery.salvage(workspace, dest, "the test broke it", lambda s: None)
    assert handed.archive == str(dest) and "the test broke it" in (handed.error or "")
    subprocess.run(["tar", "-xzf", str(dest), "-C", str(tmp_path)], check=True)
    assert (tmp_path / "kept.txt").read_text() == "precious\n"
