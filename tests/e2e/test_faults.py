"""Faults survived, end to end: the engine restarts (with and without live-restore), the
manager is killed in the middle of starting workers, the git server goes away during pushes
and comes back, a worker is killed by the OOM killer while it writes its result, and twenty
spawns race for ten tasks.

The suite runs on a Docker engine of its own (a second dockerd with its own data and socket,
the test images loaded into it), so that it can stop and start that engine without touching
the one everything else uses. Its agents are the real Claude Code of the images, scripted by
the tests' API. It prints one line, such as
``6 faults: 6 survived, 0 results lost, 0 work lost, 4 resumed``, and fails on any other figure.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest

from tests.support.commands import sh
from tests.support.end_to_end import Manager, Run, busy_for, start_manager
from tests.support.git_servers import GitServer, seed_repo, start_git_daemon
from tests.support.own_engine import OwnEngine
from tests.support.ports import free_port
from tests.support.scripted_api import attempts, bash, reply, text, write
from tests.support.waiting import wait_until

CLONE = "/workspace/repo"
LONG_JOB = busy_for(600)


@dataclass
class Figures:
    survived: bool
    results_lost: int = 0
    work_lost: int = 0
    resumed: int = 0
    detail: str = ""


@dataclass
class Fault:
    """One fault's world: the test's run, the engine of its own, the scripted API."""

    run: Run
    engine: OwnEngine
    git_server: GitServer
    token_file: Path

    def manager(self, name: str, repo: str, *options: str) -> Manager:
        return start_manager(self.run, repo, self.token_file, *options, name=f"{self.run.manager}-{name}")

    def work_on_origin(self, repo: str, branch: str, path: str, content: str) -> bool:
        """Whether the agent's file is on the task's branch at origin."""
        bare = self.git_server.base / repo.rsplit("/", 1)[1]
        shown = subprocess.run(["git", "--git-dir", str(bare), "show", f"{branch}:{path}"], capture_output=True,
                               text=True, check=False)  # fmt: skip
        return shown.returncode == 0 and shown.stdout == content

    def results(self, manager: Manager, ids: list[str]) -> dict[str, dict]:
        found = {}
        for task_id in ids:
            proc = manager.orch("result", task_id, "--json", check=False)
            if proc.returncode == 0:
                found[task_id] = json.loads(proc.stdout)
        return found


def state_of(manager: Manager, what: str) -> str:
    """``what`` was waited for, and what the manager knows, for a fault that did not go as expected."""
    status = manager.orch("status", check=False)
    log = sh("docker", "exec", manager.name, "tail", "-40", "/orchestration/logs/dispatcher.log", check=False)
    return f"{what}; what the manager knows:\n{status.stdout}{status.stderr}\n{log.stdout}{log.stderr}"


def has_result(run: Run, task_id: str) -> bool:
    return "MISSING" not in run.read_many([f"results/{task_id}.json"])


def test_faults_are_survived(run: Run, own_engine: OwnEngine, git_server: GitServer, token_file: Path,
                             monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # fmt: skip
    monkeypatch.setenv("DOCKER_HOST", own_engine.host)
    fault = Fault(run, own_engine, git_server, token_file)
    figures: dict[str, Figures] = {}
    for name, check in (
        ("engine restart without live-restore", engine_restart_without_live_restore),
        ("engine restart with live-restore", engine_restart_with_live_restore),
        ("manager killed mid-spawn", manager_killed_mid_spawn),
        ("git server down during pushes, then back", git_server_down_then_back),
        ("a worker OOM-killed while writing its result", worker_oom_killed_writing_its_result),
        ("twenty spawns at once for ten tasks", twenty_spawns_for_ten_tasks),
    ):
        if os.environ.get("ORCH_TEST_FAULT") and os.environ["ORCH_TEST_FAULT"] not in name:
            continue  # one fault at a time, while working on it
        try:
            figures[name] = check(fault, tmp_path / name.replace(" ", "-"))
        except AssertionError as exc:
            figures[name] = Figures(survived=False, detail=str(exc)[:2000])
        print(f"{name}: {figures[name]}")
    line = (
        f"{len(figures)} faults: {sum(f.survived for f in figures.values())} survived, "
        f"{sum(f.results_lost for f in figures.values())} results lost, "
        f"{sum(f.work_lost for f in figures.values())} work lost, {sum(f.resumed for f in figures.values())} resumed"
    )
    print(line)
    failed = {name: f for name, f in figures.items() if not f.survived or f.results_lost or f.work_lost}
    assert line == "6 faults: 6 survived, 0 results lost, 0 work lost, 4 resumed", f"{line}\n{failed}"


def engine_restart_without_live_restore(fault: Fault, _: Path) -> Figures:
    """The engine stops (SIGTERM) under four running workers: each gets its stop timeout, hands
    its work back and ends interrupted; a new manager resumes them from what they pushed."""
    run = fault.run
    repo = fault.git_server.repo(f"restart-{run.id}")
    manager = fault.manager("r1", repo)
    names = [f"restart{n}" for n in range(4)]
    ids = [run.task_id(name) for name in names]
    for name, task_id in zip(names, ids, strict=True):
        prompt = run.prompt(
            name,
            # Attempt 1 writes its file and is still at work when the engine stops; attempt 2 reads it.
            attempts(
                reply(write(f"{CLONE}/notes/{name}.txt", f"{name}\n"), bash(LONG_JOB)),
                bash(f"cat notes/{name}.txt"),
            ),
            text(f"{name} done"),
        )  # fmt: skip
        manager.orch("submit", "--id", task_id, "--prompt", prompt)
    manager.orch("start", "--all", "--max-workers", "4")
    wait_at_work(manager, ids)
    fault.engine.stop()
    fault.engine.start(live_restore=False)
    second = fault.manager("r2", repo)
    second.orch("wait", "--all", check=False, timeout=900)
    results = fault.results(second, ids)
    earlier = {t: json.loads(run.read(f"attempts/{t}/1.json")) for t in ids if t in results}
    resumed = sum(1 for t in ids if earlier.get(t, {}).get("status") == "interrupted" and results[t]["attempt"] == 2)
    saw_earlier_work = [run.tool_results(name)[-1:] == [f"{name}"] for name in names]
    work_lost = sum(
        not fault.work_on_origin(repo, results[t]["branch"], f"notes/{name}.txt", f"{name}\n")
        for name, t in zip(names, ids, strict=True)
        if t in results and results[t].get("branch")
    ) + sum(t not in results or not results[t].get("branch") for t in ids)
    lost = state_of(second, f"no result for {[t for t in ids if t not in results]}") if len(results) < len(ids) else ""
    for task_id in ids if lost else ():  # where each task's files are, for the failure's report
        where = f"cd /orchestration; ls attempts/{task_id} results/{task_id}.json; cat status/{task_id}.json"
        lost += sh("docker", "exec", second.name, "sh", "-c", where, check=False).stdout
    second.remove()
    return Figures(
        survived=all(results.get(t, {}).get("status") == "success" for t in ids) and all(saw_earlier_work),
        results_lost=len(ids) - len(results),
        work_lost=work_lost,
        resumed=resumed,
        detail=f"earlier attempts: {[e.get('status') for e in earlier.values()]}, saw their work: {saw_earlier_work}"
        + "; results: "
        + str({t: (r.get("status"), r.get("attempt"), r.get("error")) for t, r in results.items()})
        + lost,
    )


def engine_restart_with_live_restore(fault: Fault, _: Path) -> Figures:
    """With live-restore the workers keep running while the engine restarts; orch finds them again."""
    fault.engine.stop()
    fault.engine.start(live_restore=True)
    run = fault.run
    repo = fault.git_server.repo(f"live-{run.id}")
    manager = fault.manager("l1", repo)
    names = ["live0", "live1"]
    ids = [run.task_id(name) for name in names]
    for name, task_id in zip(names, ids, strict=True):
        prompt = run.prompt(name, bash(busy_for(20)), write(f"{CLONE}/notes/{name}.txt", f"{name}\n"), text("done"))
        manager.orch("submit", "--id", task_id, "--prompt", prompt)
    manager.orch("start", "--all")
    wait_at_work(manager, ids)
    fault.engine.stop()
    running = fault.engine  # stopped: the containers go on without it
    time.sleep(3)  # the fault itself: the engine stays away a while (nothing is waited for here)
    running.start(live_restore=True)
    waited = manager.orch("wait", "--all", check=False, timeout=600)
    results = fault.results(manager, ids)
    seen = (
        waited.stdout
        + waited.stderr
        + "".join(fault.engine.docker("logs", f"worker-{t}", check=False).stdout[-1500:] for t in ids)
    )
    manager.remove()
    fault.engine.stop()
    fault.engine.start(live_restore=False)
    return Figures(
        survived=all(results.get(t, {}).get("status") == "success" and results[t]["attempt"] == 1 for t in ids),
        results_lost=len(ids) - len(results),
        work_lost=sum(
            not fault.work_on_origin(repo, results[t]["branch"], f"notes/{n}.txt", f"{n}\n")
            for n, t in zip(names, ids, strict=True)
            if t in results
        ),
        detail="" if len(results) == len(ids) else seen,
    )


def manager_killed_mid_spawn(fault: Fault, _: Path) -> Figures:
    """The manager (and its dispatcher) is killed while it starts six workers; a new manager
    finishes the batch: a worker created but never started is removed and its task queued again."""
    run = fault.run
    repo = fault.git_server.repo(f"spawnkill-{run.id}")
    manager = fault.manager("k1", repo)
    ids = [run.task_id(f"k{n}") for n in range(6)]
    for n, task_id in enumerate(ids):
        manager.orch("submit", "--id", task_id, "--prompt", run.prompt(f"k{n}", text(f"k{n} done")))
    manager.orch("start", "--all", "--max-workers", "6")
    fault.engine.docker("kill", manager.name, check=False)
    manager.process.wait(60)
    caught = fault.engine.docker("ps", "-a", "--filter", f"name=worker-{run.task_id('k')}",
                                 "--format", "{{.Names}} {{.State}}").stdout  # fmt: skip
    second = fault.manager("k2", repo)
    second.orch("wait", "--all", check=False, timeout=600)
    results = fault.results(second, ids)
    left = fault.engine.docker("ps", "-a", "--filter", f"label=orchestrator.volume={run.volume}",
                               "--filter", "status=created", "-q").stdout  # fmt: skip
    second.remove()
    return Figures(
        survived=all(results.get(t, {}).get("status") == "success" for t in ids) and not left.strip(),
        results_lost=len(ids) - len(results),
        detail=f"when the manager was killed: {caught.split()}; left created: {left.split()}; not success: "
        + str({t: (r.get("status"), r.get("error")) for t, r in results.items() if r.get("status") != "success"}),
    )


def git_server_down_then_back(fault: Fault, tmp: Path) -> Figures:
    """The git server goes away while two workers are at work; they try their pushes again
    until it is back, and their branches reach it."""
    run = fault.run
    base = tmp / "git"
    base.mkdir(parents=True)
    seed = seed_repo(tmp / "seed")
    sh("git", "clone", "-q", "--bare", str(seed), str(base / "app.git"))
    port = free_port()
    repo = f"git://127.0.0.1:{port}/app.git"
    daemon = start_git_daemon(base, port, repo)
    manager = fault.manager("g1", repo)
    names = ["push0", "push1"]
    ids = [run.task_id(name) for name in names]
    try:
        for name, task_id in zip(names, ids, strict=True):
            prompt = run.prompt(name, write(f"{CLONE}/notes/{name}.txt", f"{name}\n"), bash(busy_for(6)), text("done"))
            manager.orch("submit", "--id", task_id, "--prompt", prompt)
        manager.orch("start", "--all")
        wait_at_work(manager, ids)
        daemon.terminate()
        daemon.wait(10)
        for task_id in ids:
            manager.wait_for_log(task_id, "trying again", timeout=180)  # waiting for the server
        daemon = start_git_daemon(base, port, repo)
        manager.orch("wait", "--all", check=False, timeout=600)
        results = fault.results(manager, ids)
        on_origin = sum(
            shown(base / "app.git", f"{results[t]['branch']}:notes/{n}.txt") == f"{n}\n"
            for n, t in zip(names, ids, strict=True)
            if results.get(t, {}).get("branch")
        )
    finally:
        daemon.terminate()
        manager.remove()
    return Figures(
        survived=all(results.get(t, {}).get("status") == "success" for t in ids),
        results_lost=len(ids) - len(results),
        work_lost=len(ids) - on_origin,
    )


def worker_oom_killed_writing_its_result(fault: Fault, _: Path) -> Figures:
    """A worker is killed by the OOM killer at the moment it writes its result: it waits for the
    volume's state lock (held by the test), the kernel kills it there. No half-written result is
    left; orch records the outcome from the container; the work was pushed before."""
    run = fault.run
    repo = fault.git_server.repo(f"oom-{run.id}")
    manager = fault.manager("o1", repo)
    task_id = run.task_id("oom")
    prompt = run.prompt("oom", bash(busy_for(4)), write(f"{CLONE}/notes/oom.txt", "oom\n"), text("done"))
    manager.orch("submit", "--id", task_id, "--memory", "768m", "--prompt", prompt, "--start")
    manager.wait_for_log(task_id, "-> Bash python3", timeout=180)  # the agent at work
    # The state lock, held for long enough: the worker stops there to write its result.
    fault.engine.docker("exec", "-d", manager.name, "flock", "/orchestration/.state.lock", "sleep", "60")
    worker = f"worker-{task_id}"
    find_runtime = (
        "import os\nfor p in os.listdir('/proc'):\n if p.isdigit():\n  c = open(f'/proc/{p}/cmdline','rb').read()\n"
        "  if b'orchestrator.worker' in c and b'tini' not in c.split(b'\\0')[0]: print(p)"
    )
    # Its work pushed, the worker waits for the state lock to write its result.
    wait_until(lambda: waits_for_a_flock(fault.engine, worker), "the worker at the state lock", timeout=180)
    pid = fault.engine.docker("exec", worker, "python3", "-c", find_runtime).stdout.split()[0]
    # The runtime first in the OOM killer's line (raising one's own score needs no privilege), then memory runs out.
    fault.engine.docker("exec", worker, "sh", "-c", f"echo 1000 > /proc/{pid}/oom_score_adj")
    hog = "import time\nb = []\nwhile True:\n b.append(bytearray(32 * 1024 * 1024)); time.sleep(0.05)"
    fault.engine.docker("exec", "-d", worker, "python3", "-c", hog)

    def ended() -> bool:
        return fault.engine.docker("inspect", "--format", "{{.State.Running}}", worker).stdout.strip() == "false"

    wait_until(ended, "the worker's end", timeout=120)
    oom = fault.engine.docker("inspect", "--format", "{{.State.OOMKilled}}", worker).stdout.strip() == "true"
    manager.orch("wait", task_id, check=False, timeout=180)
    results = fault.results(manager, [task_id])
    partial = [n for n in run.read_many([f"results/{task_id}.json"]).splitlines() if n.startswith("== ")]
    result = results.get(task_id, {})
    manager.remove()
    work = fault.work_on_origin(repo, f"orchestrator/{task_id}", "notes/oom.txt", "oom\n")
    return Figures(
        survived=oom and result.get("status") == "failed" and "out of memory" in (result.get("error") or ""),
        results_lost=1 - len(results),
        work_lost=0 if work else 1,
        detail=f"oom killed: {oom}, result: {result.get('status')} {result.get('error')}, files: {partial}",
    )


def twenty_spawns_for_ten_tasks(fault: Fault, _: Path) -> Figures:
    """Twenty spawn-worker at once, two for each of ten tasks: each task gets one worker."""
    run = fault.run
    repo = fault.git_server.repo(f"race-{run.id}")
    manager = fault.manager("s1", repo)
    ids = [run.task_id(f"race{n}") for n in range(10)]
    for n, task_id in enumerate(ids):
        manager.orch("submit", "--id", task_id, "--prompt", run.prompt(f"race{n}", text("done")))
    env = {**os.environ, "DOCKER_HOST": fault.engine.host}
    argv = [["docker", "exec", manager.name, "spawn-worker", "flutter", task_id] for task_id in ids for _ in range(2)]
    spawns = [subprocess.Popen(a, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for a in argv]
    outcomes = [(proc.wait(300), proc.communicate()) for proc in spawns]
    started = sum(code == 0 for code, _ in outcomes)
    refused = sum(code == 1 for code, _ in outcomes)
    for task_id in ids:
        wait_until(partial(has_result, run, task_id), f"{task_id}'s result", timeout=300)
    results = fault.results(manager, ids)
    workers = fault.engine.docker("ps", "-a", "--filter", f"name=worker-{run.task_id('race')}", "-q").stdout
    manager.remove()
    return Figures(
        survived=started == 10
        and refused == 10
        and len(workers.split()) == 10
        and all(r.get("status") == "success" for r in results.values()),
        results_lost=len(ids) - len(results),
        detail=f"{started} started, {refused} refused, {len(workers.split())} workers",
    )


def wait_at_work(manager: Manager, ids: list[str]) -> None:
    """Until each task's agent runs its long Bash command."""
    for task_id in ids:
        at_work = partial(manager.logs_show, task_id, "-> Bash python3")
        wait_until(at_work, partial(state_of, manager, f"{task_id} at work"), timeout=180)


def waits_for_a_flock(engine: OwnEngine, container: str) -> bool:
    """Whether a process of the container waits for a flock: the kernel's /proc/locks has a line
    "N: -> FLOCK ADVISORY WRITE PID ..." for each waiter, with the pids this machine sees, which
    are those `docker top` gives (the engine's containers run below it)."""
    pids = set(engine.docker("top", container, "-o", "pid").stdout.split()[1:])
    waiters = [line.split() for line in Path("/proc/locks").read_text().splitlines() if " -> " in line]
    return any(fields[5] in pids for fields in waiters)


def shown(bare: Path, ref_path: str) -> str:
    """A file of a branch of a bare repository, or '' when there is none."""
    return subprocess.run(["git", "--git-dir", str(bare), "show", ref_path], capture_output=True, text=True,
                          check=False).stdout  # fmt: skip
