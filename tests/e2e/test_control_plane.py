"""run.py's default layout, end to end: the control plane holds the Docker socket and every
secret, and the manager, which holds neither, works as the original design says.

These tests run on a Docker network of their own (the ``bridge`` fixture), the scripted API and
git on its gateway, as a person's orchestration runs on Docker's default network: the control
plane reaches origin and the API there, the manager only the control plane (its own network has
no route out). tests/e2e/test_hostile_manager.py attacks it.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.commands import files_holding, sh
from tests.support.end_to_end import WORKER_IMAGE, Bridge, Run, busy_for, run_py, start_manager
from tests.support.git_servers import GitServer
from tests.support.scripted_api import bash, text, write
from tests.support.waiting import wait_until

CLONE = "/workspace/repo"
# The original design's Manual Worker Control, as it is written there.
MANUAL_WORKER_CONTROL = """\
# Create a task file
cat > /orchestration/tasks/task-001.json << 'EOF'
{
  "id": "task-001",
  "prompt": "List all Dart files in the lib/ directory"
}
EOF

# Spawn a worker
/opt/orchestrator/lib/spawn-worker.sh flutter task-001

# Monitor worker
docker logs -f worker-task-001

# Check result
cat /orchestration/results/task-001.json
"""


def test_the_original_manual_worker_control_works_as_written_and_the_manager_runs_no_container(
    bridge_run: Run, bridge: Bridge, bridge_git: GitServer, token_file: Path, token: str
):
    run = bridge_run
    # The design's id is fixed: a worker of that name must be nobody else's.
    taken = sh("docker", "ps", "-aq", "--filter", "name=^worker-task-001$").stdout.strip()
    assert not taken, "a container worker-task-001 exists on this engine: remove it to run this test"
    run.api.script("List all Dart files in the lib/ directory", bash("find lib -name '*.dart'"), text("lib/main.dart"))
    repo = bridge_git.repo(f"manual-{run.id}")
    script = MANUAL_WORKER_CONTROL + (
        "echo '== refusals'\n"
        f"docker run --rm -v /:/host {WORKER_IMAGE} cat /host/etc/hostname; echo rc=$?\n"
        f"docker run --rm --privileged {WORKER_IMAGE} true; echo rc=$?\n"
        "docker ps --format '{{.Names}}'\n"
    )
    try:
        proc = run_py(run, "--repo", repo, "--token", str(token_file), "--volume", run.volume, "--name", run.manager,
                      "--", "bash", "-c", script, network=bridge.name)  # fmt: skip
        inspected = sh("docker", "inspect", "worker-task-001", check=False)
        holding = files_holding("worker-task-001", token) if inspected.returncode == 0 else []
    finally:
        sh("docker", "rm", "--force", "worker-task-001", check=False)
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 0 and inspected.returncode == 0, out + err
    worker = json.loads(inspected.stdout)[0]
    # The mirror and the control plane's doors are mounted read-only in the worker: nothing there
    # can change them for the next one.
    mounts = {m["Destination"]: m["RW"] for m in worker["Mounts"]}
    assert (mounts["/mirror"], mounts["/run/orchestrator"]) == (False, False)
    # It held no credential: not in its configuration (environment included), not in any file of
    # it; it had its task's tickets instead.
    assert token not in json.dumps(worker) and holding == []
    env = dict(item.split("=", 1) for item in worker["Config"]["Env"])
    assert env["ORCHESTRATOR_RELAY_TICKET"].startswith("relay-") and env["ORCHESTRATOR_GIT_TICKET"].startswith("git-")
    answer = json.loads(out[out.index('{\n  "task_id": "task-001"') : out.index("== refusals")])
    assert (answer["status"], answer["output"]) == ("success", "lib/main.dart"), out
    assert "[worker task-001]" in out  # docker logs -f, through the control plane's filter
    # The worker's clone is of the control plane's mirror, made fresh for it: origin sent it nothing.
    assert "from the control plane's mirror, as origin is now" in out
    refusals = out[out.index("== refusals") :]
    assert refusals.count("rc=125") == 2 and "the manager may not create containers" in err, out + err
    assert "orch-test" not in refusals.replace("worker-task-001", "")  # docker ps: its workers alone
    assert token not in out + err
    assert "lib/main.dart" in run.api.tool_results("List all Dart files in the lib/ directory")


def test_a_batch_with_dependencies_merges_and_pushes_and_the_manager_hands_back_its_own_work(
    bridge_run: Run, bridge: Bridge, bridge_git: GitServer, token_file: Path
):
    run = bridge_run
    name = f"batch-{run.id}"
    repo = bridge_git.repo(name)
    first = run.prompt("first", write(f"{CLONE}/notes/first.txt", "first\n"), text("wrote first"))
    # The second starts from the first's work: it reads it, and adds its own.
    second = run.prompt("second", bash("cat notes/first.txt"), write(f"{CLONE}/notes/second.txt", "second\n"),
                        text("wrote second"))  # fmt: skip
    script = f"""set -eu
orch batch new "Notes"
a=$(orch submit --prompt {json.dumps(first)})
b=$(orch submit --depends-on "$a" --prompt {json.dumps(second)})
orch start --all --max-workers 2
orch wait --all
orch merge --all --push
cd {CLONE}
git checkout -q -B orchestrator/integration origin/orchestrator/integration
echo "by the manager" > notes/manager.txt
git add -A && git -c user.name=M -c user.email=m@example.org commit -qm "The manager's note"
orch push orchestrator/integration
echo "== refusals"
orch push main || echo "rc=$?"
git checkout -q -B orchestrator/integration origin/main
mkdir -p notes && echo "rewritten" > notes/manager.txt
git add -A && git -c user.name=M -c user.email=m@example.org commit -qm "History rewritten"
orch push orchestrator/integration || echo "rc=$?"
orch merge --all --push --repo-dir /tmp || echo "rc=$?"
"""
    proc = run_py(run, "--repo", repo, "--token", str(token_file), "--volume", run.volume, "--name", run.manager,
                  "--", "bash", "-c", script, network=bridge.name)  # fmt: skip
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 0, out + err
    assert "2 tasks: 2 success" in out and "pushed orchestrator/integration to origin" in out
    assert "pushed orchestrator/integration to origin (1 commit)" in out  # the manager's own, handed back
    assert run.tool_results("second")[0].strip() == "first"
    refs = bridge_git.refs(name)
    assert bridge_git.show(name, "orchestrator/integration", "notes/manager.txt") == "by the manager\n"
    for note in ("first", "second"):
        assert bridge_git.show(name, "orchestrator/integration", f"notes/{note}.txt") == f"{note}\n"
    refusals = out[out.index("== refusals") :]
    assert refusals.count("rc=2") == 2 and refusals.count("rc=1") == 1, out + err
    assert "the manager pushes orchestrator/integration or branches under orchestrator/ only, not main" in err
    assert "nothing is ever force-pushed" in err
    assert "--repo-dir is the control plane's to choose" in err
    assert sh("git", "--git-dir", str(bridge_git.base / f"{name}.git"), "log", "-1", "--format=%s",
              refs["orchestrator/integration"]).stdout.strip() == "The manager's note"  # fmt: skip
    assert "main" in refs and bridge_git.show(name, "main", "notes/manager.txt") == ""


def test_the_control_plane_restarted_or_killed_mid_batch_and_the_manager_restarted_lose_nothing(
    bridge_run: Run, bridge: Bridge, bridge_git: GitServer, token_file: Path
):
    run = bridge_run
    repo = bridge_git.repo(f"faults-{run.id}")
    manager = start_manager(run, repo, token_file, network=bridge.name)
    control = f"{run.manager}-control"
    try:
        endpoints = sh("docker", "exec", manager.name, "cat", "/run/orchestrator/endpoints.json").stdout
        slow = manager.submit(run.prompt("slow", bash(busy_for(20)), write(f"{CLONE}/notes/slow.txt", "slow\n"),
                                         text("slow done")))  # fmt: skip
        after = manager.submit(run.prompt("after", write(f"{CLONE}/notes/after.txt", "after\n"), text("after")),
                               "--depends-on", slow)  # fmt: skip
        quick = manager.submit(run.prompt("quick", bash(busy_for(8)), text("quick")))
        manager.orch("start", "--all", "--max-workers", "2")
        manager.wait_for_state(slow, "running", timeout=180)

        # Restarted (an upgrade, a person's `docker restart`), while two workers run.
        sh("docker", "restart", "--time", "30", control)
        assert manager.status()[slow]["state"] in ("running", "success")  # orch waits for it to be back
        # Killed (a crash): the engine starts it again.
        pid = sh("docker", "inspect", "--format", "{{.State.Pid}}", control).stdout.strip()
        sh("kill", "-9", pid)
        wait_until(lambda: _restarted(control), f"the engine to start {control} again", timeout=60)
        waited = manager.orch("wait", "--all", timeout=600)
        assert "3 tasks: 3 success" in waited.stdout, waited.stdout + waited.stderr
        assert manager.result(after)["files_changed"] == [{"path": "notes/after.txt", "added": 1, "deleted": 0}]
        assert manager.result(quick)["status"] == "success"
        # Its relay serves the manager's Claude Code where it did, with the ticket it holds.
        relay = json.loads(endpoints)
        again = json.loads(sh("docker", "exec", manager.name, "cat", "/run/orchestrator/endpoints.json").stdout)
        assert (again["relay_socket"], again["ticket"]) == (relay["relay_socket"], relay["ticket"])
        probe = sh(
            "docker", "exec", manager.name, "python3", "-c", PROBE, relay["relay_socket"], relay["ticket"]
        ).stdout
        assert probe.strip() not in ("401", "403", "unreachable"), probe
        assert control in sh("docker", "ps", "--filter", "label=orchestrator.role=control", "--format",
                             "{{.Names}}").stdout.split()  # fmt: skip

        # The manager restarted: run.py again, while a task runs; the new one carries the batch on.
        last = manager.submit(run.prompt("last", bash(busy_for(10)), text("last")), "--start")
        manager.wait_for_state(last, "running", timeout=180)
        manager.remove()
        manager = start_manager(run, repo, token_file, network=bridge.name)
        waited = manager.orch("wait", last, timeout=600)
        assert manager.result(last)["status"] == "success", waited.stdout + waited.stderr
    finally:
        manager.remove()


# A request of the manager's Claude Code to the relay (its socket, where the manager's door leads),
# with its ticket: the status the relay answers.
PROBE = """
import http.client, socket, sys
path, ticket = sys.argv[1:]
class Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(path)
try:
    conn = Unix("relay", timeout=30)
    conn.request("POST", "/v1/messages/count_tokens?beta=true", body=b'{"model": "m", "messages": []}',
                 headers={"authorization": f"Bearer {ticket}", "x-api-key": ticket, "content-type": "application/json"})
    print(conn.getresponse().status)
except OSError:
    print("unreachable")
"""


def _restarted(control: str) -> bool:
    state = json.loads(sh("docker", "inspect", "--format", "{{json .State}}", control).stdout)
    return bool(state["Running"]) and sh("docker", "exec", control, "test", "-S", "/run/orchestrator/control.sock",
                                         check=False).returncode == 0  # fmt: skip
