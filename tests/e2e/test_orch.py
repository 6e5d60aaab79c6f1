"""orch on the real engine: a manager left running, orch commands run in its shell as the
Manager agent (or a person) runs them, and in the workers the real Claude Code of the images,
its answers scripted by the tests' API (each prompt's marker picks its scenario)."""

from __future__ import annotations

import itertools
import re

from tests.support.commands import sh
from tests.support.end_to_end import PREFIX, WORKER_IMAGE, Manager, Run, busy_for, start_manager
from tests.support.git_servers import GitServer
from tests.support.scripted_api import attempts, bash, error, reply, text, write
from tests.support.waiting import wait_until

CLONE = "/workspace/repo"  # the agent's clone in a worker
LONG_JOB = busy_for(300)


def running_workers(run: Run) -> list[str]:
    proc = sh("docker", "ps", "--filter", f"label=orchestrator.volume={run.volume}", "--filter", "status=running",
              "--filter", "label=orchestrator.role=worker",
              "--format", "{{.Names}}")  # fmt: skip
    return proc.stdout.split()


def test_twelve_tasks_run_at_most_three_at_a_time(run: Run, manager: Manager, token: str):
    ids = [
        manager.submit(
            run.prompt(
                f"note{n}",
                bash("sleep 3"),
                write(f"{CLONE}/notes/{n}.txt", f"{n}\n"),
                text(f"wrote note {n}"),
                words=f"Note {n}.",
            ),
        )
        for n in range(12)
    ]
    # Ids of the batch orch made for them (named after the first prompt): no other volume's.
    batch = ids[0].rsplit("-", 1)[0]
    assert ids == [f"{batch}-{n:02d}" for n in range(1, 13)]
    assert "queued 12 tasks" in manager.orch("start", "--all", "--max-workers", "3").stdout

    most = 0

    def count_running_until_all_ended() -> bool:
        nonlocal most
        most = max(most, len(running_workers(run)))
        states = [task["state"] for task in manager.status().values()]
        return all(state in ("success", "failed", "timeout", "cancelled", "blocked") for state in states)

    wait_until(count_running_until_all_ended, lambda: f"the twelve tasks to end: {manager.status()}", timeout=600)
    assert most == 3, f"at most {most} workers ran at once"

    waited = manager.orch("wait", "--all")
    assert "12 tasks: 12 success" in waited.stdout
    status = manager.status()
    assert all(task["state"] == "success" and task["cost_usd"] > 0 for task in status.values())
    last = manager.result(ids[-1])
    assert last["output"] == "wrote note 11"
    # The agent's Write made the note; the worker committed and pushed it.
    assert last["files_changed"] == [{"path": "notes/11.txt", "added": 1, "deleted": 0}] and last["pushed"] is True
    table = manager.orch("status").stdout
    assert table.splitlines()[0].split() == ["ID", "STATE", "WORKER", "STARTED", "DURATION", "COST", "BRANCH", "NOTE"]
    assert re.search(rf"^{ids[6]} +success +flutter ", table, re.MULTILINE) and "12 tasks: 12 success" in table
    # The dispatcher had the token in its environment; it never wrote it anywhere.
    assert f"started worker-{ids[-1]} for {ids[-1]}" in run.read("logs/dispatcher.log")
    assert run.volume_contains(token) == []


def test_a_chain_runs_in_order_and_a_failure_blocks_its_dependents(run: Run, manager: Manager):
    first = manager.submit(run.prompt("one", bash("sleep 1"), text("one")), "--id", run.task_id("one"))
    second = manager.submit(run.prompt("two", text("two")), "--id", run.task_id("two"), "--depends-on", first)
    third = manager.submit(run.prompt("three", text("three")), "--id", run.task_id("three"), "--depends-on", second)
    # The API says overloaded and that it is no use retrying: the agent fails at once.
    overloaded = error(529, "Overloaded", should_retry=False)
    broken = manager.submit(run.prompt("broken", overloaded), "--id", run.task_id("broken"))
    after = manager.submit(run.prompt("after", text("never")), "--id", run.task_id("after"), "--depends-on", broken)
    last = manager.submit(run.prompt("last", text("never")), "--id", run.task_id("last"), "--depends-on", after, first)

    # Starting the end of the chain starts what it depends on.
    manager.orch("start", third, last)
    waited = manager.orch("wait", "--all", check=False)
    assert waited.returncode == 1, waited.stdout + waited.stderr

    status = manager.status()
    assert [status[t]["state"] for t in (first, second, third)] == ["success"] * 3
    results = [manager.result(t) for t in (first, second, third)]
    assert [r["output"] for r in results] == ["one", "two", "three"]
    for before, later in itertools.pairwise(results):
        assert later["started_at"] >= before["completed_at"]
    assert status[broken]["state"] == "failed"
    failure = manager.result(broken)["error"]
    assert "API Error: 529" in failure and "Overloaded" in failure
    # The dependents' agents never ran.
    assert run.api.requests_for(run.marker("after")) == run.api.requests_for(run.marker("last")) == []
    assert status[after]["state"] == "blocked" and status[after]["message"] == f"{broken} ended failed"
    assert status[last]["state"] == "blocked" and status[last]["message"] == f"{after} is blocked"
    # A blocked task never had a worker.
    assert sh("docker", "ps", "-aq", "--filter", f"name=worker-{after}").stdout == ""
    assert "blocked" in manager.orch("result", after, check=False).stderr


def test_cancel_timeout_and_retry(run: Run, manager: Manager):
    slow = manager.submit(
        run.prompt("slow", reply(text("starting"), bash(LONG_JOB))), "--id", run.task_id("slow"), "--start"
    )
    idle = manager.submit(run.prompt("idle", text("never")), "--id", run.task_id("idle"))
    hangs = manager.submit(
        run.prompt("hangs", bash(LONG_JOB)), "--id", run.task_id("hangs"), "--timeout", "3", "--start"
    )
    # The first attempt's request gets an error not to retry; the retry's agent, a new session
    # with the same prompt, asks again at the same position and gets the answer.
    flaky = manager.submit(
        run.prompt("flaky", attempts(error(500, "Overloaded", should_retry=False), text("fine now"))),
        "--id", run.task_id("flaky"), "--start",
    )  # fmt: skip
    # Two tool calls, then text: with one turn allowed, the first call runs and the run ends.
    turns = manager.submit(
        run.prompt("turns", bash("echo a"), bash("echo b"), text("c")),
        "--id", run.task_id("turns"), "--max-turns", "1", "--start",
    )  # fmt: skip

    manager.wait_for_state(slow, "running")
    manager.wait_for_log(slow, f"-> Bash {LONG_JOB}")
    assert manager.orch("cancel", slow, idle).stdout.split() == [f"{slow}:", "cancelled", f"{idle}:", "cancelled"]
    cancelled = manager.result(slow)
    assert cancelled["status"] == "cancelled" and cancelled["exit_code"] is not None
    # What it produced is kept: its container and its log.
    assert sh("docker", "inspect", "--format", "{{.State.Status}}", f"worker-{slow}").stdout.strip() == "exited"
    assert "[agent]   starting" in manager.orch("logs", slow).stdout
    assert manager.result(idle)["error"] == "cancelled before its worker started"
    assert manager.orch("cancel", slow, check=False).returncode == 1

    manager.orch("wait", hangs, flaky, turns, check=False)
    timed_out = manager.result(hangs)
    assert timed_out["status"] == "timeout" and "within 3 s" in timed_out["error"]
    assert manager.status()[turns]["state"] == "failed"
    assert manager.result(turns)["error"] == (
        "the agent reported an error (error_max_turns): Reached maximum number of turns (1)"
    )
    # Its one turn: the first command ran; its result never went back to the API.
    assert "[agent] <- a" in manager.orch("logs", turns).stdout
    assert len(run.api.requests_for(run.marker("turns"))) == 1

    first = manager.result(flaky)
    assert first["status"] == "failed" and first["attempt"] == 1
    assert f"attempt 2 queued (attempt 1 kept: /orchestration/attempts/{flaky}, container worker-{flaky}-attempt-1)" \
        in manager.orch("retry", flaky).stdout  # fmt: skip
    assert manager.orch("wait", flaky).returncode == 0
    second = manager.result(flaky)
    assert second["status"] == "success" and second["attempt"] == 2 and second["output"] == "fine now"
    # One request each, both the first of a conversation: the error was not retried by the agent.
    assert [(r.position, r.attempt) for r in run.api.requests_for(run.marker("flaky"))] == [(0, 0), (0, 1)]
    # The first attempt is kept, result and log.
    assert manager.result(flaky, "--attempt", "1") == first
    first_log = manager.orch("logs", flaky, "--attempt", "1").stdout
    assert "API Error: 500" in first_log and "Overloaded" in first_log
    assert "earlier attempts: 1" in manager.orch("result", flaky).stdout
    assert manager.orch("retry", flaky, check=False).returncode == 1  # it succeeded
    # The first attempt's container is kept too, until cleanup: its work was safe (it had none).
    assert sh("docker", "ps", "-aq", "--filter", f"name=worker-{flaky}-attempt-1").stdout.strip()
    assert f"worker-{flaky}-attempt-1" in manager.orch("cleanup").stdout


def test_a_killed_worker_is_resumed_once_then_reported_interrupted_and_its_log_outlives_cleanup(
    run: Run, manager: Manager
):
    prompt = run.prompt("killed", reply(text("working"), bash(LONG_JOB)))
    task = manager.submit(prompt, "--id", run.task_id("killed"), "--start")
    manager.wait_for_state(task, "running")
    manager.wait_for_log(task, f"-> Bash {LONG_JOB}")
    sh("docker", "kill", f"worker-{task}")

    # Killed from outside: not the task's fault, so the batch runs it again, once.
    def resumed() -> bool:
        now = manager.status()[task]
        return (now["attempt"], now["state"]) == (2, "running")

    wait_until(resumed, lambda: f"{task} to be resumed: {manager.status()[task]}", timeout=120)
    manager.wait_for_log(task, f"-> Bash {LONG_JOB}")
    sh("docker", "kill", f"worker-{task}")
    status = manager.wait_for_state(task, "interrupted", timeout=60)
    assert "exited with code 137" in status["message"] and "SIGKILL" in status["message"]
    result = manager.result(task)
    assert (result["status"], result["worker_exit_code"], result["attempt"]) == ("interrupted", 137, 2)

    # Killed mid-task, both attempts handed nothing back: their clones may hold the only copy of their work.
    cleaned = manager.orch("cleanup").stdout
    assert f"worker-{task}-attempt-1" in cleaned and "work of theirs was neither pushed nor bundled" in cleaned
    assert sh("docker", "ps", "-aq", "--filter", f"name=worker-{task}").stdout != ""
    assert "removed 2 finished worker containers" in manager.orch("cleanup", "--force").stdout
    assert sh("docker", "ps", "-aq", "--filter", f"name=worker-{task}").stdout == ""
    logs = manager.orch("logs", task).stdout
    assert "cloning" in logs and "[agent]   working" in logs
    assert '"type": "result"' not in manager.orch("logs", task, "--raw").stdout  # it never finished
    assert manager.orch("result", task).returncode == 0


def test_a_new_manager_finishes_the_batch_of_one_that_was_removed(
    run: Run, manager: Manager, git_server: GitServer, token_file
):
    ids = [
        manager.submit(run.prompt(f"r{n}", bash("sleep 2"), text(f"done {n}")), "--id", run.task_id(f"r{n}"))
        for n in range(6)
    ]
    manager.orch("start", "--all", "--max-workers", "2")
    manager.wait_for_state(ids[0], "success", timeout=120)
    manager.remove()  # its dispatcher dies with it; the workers it started go on

    second = start_manager(run, git_server.repo(f"orch2-{run.id}"), token_file, name=f"{run.manager}-2")
    try:
        waited = second.orch("wait", "--all", tty=True)
        assert "6 tasks: 6 success" in waited.stdout
        # On a terminal, one line of progress, rewritten in place.
        assert "\x1b[K6/6 done (6 ok, 0 not) · 0 running · 0 queued" in waited.stdout
        assert all(task["state"] == "success" for task in second.status().values())
        outputs = [second.result(t)["output"] for t in ids]
        assert outputs == [f"done {n}" for n in range(6)]
    finally:
        second.remove()
    assert "resuming the batch" in second.said()


def test_a_worker_of_another_batch_with_the_same_name_is_left_alone(run: Run, manager: Manager):
    task = run.task_id("taken")
    other = f"{PREFIX}volume-other-{run.id}"
    sh("docker", "create", "--name", f"worker-{task}", "--label", "orchestrator.role=worker",
       "--label", f"orchestrator.volume={other}", "--label", f"orchestrator.task-id={task}",
       "--entrypoint", "sleep", WORKER_IMAGE, "300")  # fmt: skip
    sh("docker", "start", f"worker-{task}")
    manager.submit(run.prompt("taken", text("hi")), "--id", task, "--start")
    failed = manager.wait_for_state(task, "failed")
    assert f"is a worker of the batch on the volume {other}" in failed["message"]
    assert f"orch cleanup --volume {other}" in failed["message"]
    manager.orch("cleanup", "--force")
    # The other batch's worker still runs, untouched.
    assert sh("docker", "inspect", "--format", "{{.State.Running}}", f"worker-{task}").stdout.strip() == "true"
    assert run.api.requests_for(run.marker("taken")) == []  # no agent of this batch ran
