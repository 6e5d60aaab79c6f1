"""The benchmark's side inside an orchestration's containers: fed to `docker exec -i CONTAINER python3 -P -
COMMAND ...` on stdin, in its control plane (where the batch's work is done and its files written) or in
its manager (where the Manager agent runs its commands), so that the timings are taken there, without
`docker exec`'s own cost. It uses the image's orchestrator package (the code under test). Each command prints one JSON
document on stdout.

    tasks PREFIX N PROMPT           submit N tasks PREFIX-1..N (not started)
    history N                       write N finished tasks straight to the volume's files
    spawn REPS PREFIX               spawn-worker, docker run -d, docker create + cp + start, in turns
    spawn-channel REPS PREFIX       spawn-worker in the manager, through its control plane (PREFIX-1..REPS+1)
    timed ARGS...                   wall and CPU time (the process and its children) of one command
    states IDS...                   orch status --json of those tasks: {id: state}
"""

from __future__ import annotations

import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from orchestrator import batch, environment, spawn
from orchestrator.engine_docker import DockerEngine
from orchestrator.limits import WorkerLimits
from orchestrator.store import OrchestrationDir

ORCH = OrchestrationDir(Path(environment.ORCHESTRATION_DIR.require(os.environ)))


def submit(task_id: str, prompt: str) -> None:
    with ORCH.locked():
        batch.submit(
            ORCH, prompt=prompt, task_id=task_id, worker="flutter", depends_on=(), timeout=None, max_turns=None,
            model=None,
        )  # fmt: skip


def cmd_tasks(prefix: str, count: str, prompt: str) -> dict:
    ids = [f"{prefix}-{n}" for n in range(1, int(count) + 1)]
    for task_id in ids:
        submit(task_id, prompt)
    return {"ids": ids}


def cmd_tasks_numbered(prefix: str, count: str, marker: str) -> dict:
    """Tasks each with a marker of its own ([MARKER-1] ...), so that each agent's requests are told apart."""
    ids = [f"{prefix}-{n}" for n in range(1, int(count) + 1)]
    for n, task_id in enumerate(ids, 1):
        submit(task_id, f"[{marker}-{n}] Done.")
    return {"ids": ids}


def cmd_history(count: str) -> dict:
    """Finished tasks as a long-lived volume holds them: task, status and result files, an attempt
    kept now and then. Written plainly (no fsync): this is the benchmark's set-up, not what it measures."""
    t0 = time.monotonic()
    for n in range(int(count)):
        task_id = f"old-{n:05d}"
        ok = n % 10 != 0
        task = {"id": task_id, "prompt": f"Old task number {n}: change something small.", "worker": "flutter"}
        result = {
            "task_id": task_id, "status": "success" if ok else "failed", "output": f"Changed {n}." if ok else "",
            "completed_at": "2026-01-24T10:30:00Z", "started_at": "2026-01-24T10:28:15Z", "duration_seconds": 104.7,
            "exit_code": 0 if ok else 1, "cost_usd": 0.42, "num_turns": 12, "session_id": f"session-{n}",
            "model": "claude-opus-4-5-20251101", "error": None if ok else "the agent reported an error",
            "attempt": 1, "worker_exit_code": None, "branch": f"orchestrator/{task_id}" if ok else None,
            "base_commit": "4c1f9e2" * 5 if ok else None, "head_commit": "9a07d3b" * 5 if ok else None,
            "commits": 1 if ok else 0, "files_changed": [{"path": "lib/main.dart", "added": 3, "deleted": 1}],
            "pushed": ok, "bundle": None, "started_from": [], "format_version": 1,
        }  # fmt: skip
        status = {
            "task_id": task_id, "state": result["status"], "updated_at": "2026-01-24T10:30:00Z",
            "worker_type": "flutter", "container": f"worker-{task_id}", "message": result["error"], "attempt": 1,
            "started_at": "2026-01-24T10:28:15Z", "stop_reason": None, "format_version": 1,
        }  # fmt: skip
        for path, data in ((ORCH.task_path(task_id), task), (ORCH.status_path(task_id), status),
                           (ORCH.result_path(task_id), result)):  # fmt: skip
            path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return {"count": int(count), "seconds": time.monotonic() - t0}


def cmd_spawn(reps: str, prefix: str) -> dict:
    """spawn-worker as the Manager agent runs it; `docker run -d` of the same image with the same
    options (name, labels, volume, network, limits, capabilities, environment); and what plain docker
    needs for the same work, secrets included: `docker create`, `docker cp -`, `docker start`. In
    turns, the order rotated each round; the containers are removed after each round."""
    env = os.environ
    sides = ("spawn", "plain", "floor", "dispatcher", "channel")
    for n in range(int(reps) + 1):
        for side in sides:
            submit(f"{prefix}-{side}-{n}", "[bench-idle] Nothing to do.")

    def spec(task_id: str) -> spawn.WorkerSpec:
        return spawn.worker_spec(
            "flutter", task_id, env=env, repo=env.get("REPO_URL"), branch=environment.REPO_BRANCH.require(env),
            model=environment.ANTHROPIC_MODEL.require(env), api_url=environment.ANTHROPIC_BASE_URL.get(env),
            volume=environment.VOLUME.require(env), network=environment.NETWORK.get(env),
            image_prefix=environment.IMAGE_PREFIX.require(env), limits=WorkerLimits.from_env(env),
        )  # fmt: skip

    def timed(*commands: tuple[list[str], dict[str, str] | None, bytes | None]) -> float:
        t0 = time.perf_counter()
        for argv, child_env, stdin in commands:
            proc = subprocess.run(argv, input=stdin, capture_output=True, env=child_env, check=False)
            if proc.returncode:
                raise SystemExit(f"{argv[:2]} failed: {proc.stderr.decode().strip()}")
        return time.perf_counter() - t0

    def spawn_worker(n: int) -> float:
        return timed((["spawn-worker", "flutter", f"{prefix}-spawn-{n}"], None, None))

    engine = DockerEngine(environment.VOLUME.require(env))
    # The manager's way, from here: the same image's client (orchestrator/entry.py) to the control
    # plane's channel, which spawns in its own process; taken in the same rounds as docker run -d.
    channel_env = {**env, environment.CONTROL.name: "/run/orchestrator"}

    def through_channel(n: int) -> float:
        return timed((["spawn-worker", "flutter", f"{prefix}-channel-{n}"], channel_env, None))

    def dispatcher(n: int) -> float:
        """What the control plane's running dispatcher does for a task: its spec (the tickets made),
        the claim, one docker run -d."""
        t0 = time.perf_counter()
        spawn.spawn(spec(f"{prefix}-dispatcher-{n}"), str(ORCH.root), engine)
        return time.perf_counter() - t0

    def docker_run(n: int) -> float:
        plain = spec(f"{prefix}-plain-{n}")
        return timed((["docker", "run", "--detach", *plain.create_argv()[1:]], {**env, **plain.environment()}, None))

    def by_hand(n: int) -> float:
        floor = spec(f"{prefix}-floor-{n}")
        token = (Path.home() / ".claude-token").read_bytes()
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            info = tarfile.TarInfo(".claude-token")
            info.size, info.mode = len(token), 0o600
            tar.addfile(info, io.BytesIO(token))
        return timed(
            (["docker", *floor.create_argv()], {**env, **floor.environment()}, None),
            (["docker", "cp", "-", f"{floor.container}:/root"], None, archive.getvalue()),
            (["docker", "start", floor.container], None, None),
        )

    measures = {"spawn": spawn_worker, "plain": docker_run, "floor": by_hand, "dispatcher": dispatcher,
                "channel": through_channel}  # fmt: skip
    times: dict[str, list[float]] = {side: [] for side in sides}
    for n in range(int(reps) + 1):  # the first round warms up and does not count
        order = sides[n % len(sides) :] + sides[: n % len(sides)]
        for side in order:
            elapsed = measures[side](n)
            if n:
                times[side].append(elapsed)
            time.sleep(0.3)  # the engine finishes what the last one started
        subprocess.run(["docker", "rm", "--force", *[f"worker-{prefix}-{side}-{n}" for side in sides]],
                       capture_output=True, check=False)  # fmt: skip
        time.sleep(0.3)
    return {side: statistics.median(values) for side, values in times.items()} | {"runs": times}


def cmd_spawn_channel(reps: str, prefix: str) -> dict:
    """In the manager: spawn-worker as its agent runs it, through the control plane, for the tasks
    PREFIX-1..REPS+1 (made beforehand); the first does not count. The median, and each time."""
    times = []
    for n in range(1, int(reps) + 2):
        t0 = time.perf_counter()
        proc = subprocess.run(["spawn-worker", "flutter", f"{prefix}-{n}"], capture_output=True, check=False)
        if proc.returncode:
            raise SystemExit(f"spawn-worker failed: {proc.stderr.decode().strip()}")
        if n > 1:
            times.append(time.perf_counter() - t0)
        time.sleep(0.3)  # the engine finishes what the last one started
    return {"spawn": statistics.median(times), "runs": times}


def cmd_timed(*argv: str) -> dict:
    t0 = time.monotonic()
    proc = subprocess.run(list(argv), capture_output=True, check=False)
    wall = time.monotonic() - t0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "rc": proc.returncode, "wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "stdout_bytes": len(proc.stdout),
        "stdout_tail": proc.stdout.decode("utf-8", "replace")[-300:], "stderr": proc.stderr.decode()[-500:],
    }  # fmt: skip


def cmd_states(*ids: str) -> dict:
    proc = subprocess.run(["orch", "status", "--json", *ids], capture_output=True, text=True, check=True)
    return {task["id"]: task["state"] for task in json.loads(proc.stdout)["tasks"]}


COMMANDS = {
    "tasks": cmd_tasks,
    "tasks-numbered": cmd_tasks_numbered,
    "history": cmd_history,
    "spawn": cmd_spawn,
    "spawn-channel": cmd_spawn_channel,
    "timed": cmd_timed,
    "states": cmd_states,
}

if __name__ == "__main__":
    os.umask(OrchestrationDir.UMASK)
    command, *args = sys.argv[1:]
    print(json.dumps(COMMANDS[command](*args)))
