"""What spawn-worker does on the shared volume, from wherever it runs.

Inside the manager the volume is mounted at /orchestration and these operations run
directly. On the host it is not mounted anywhere, so they run in a short-lived container
of the worker image that mounts it (``python3 -m orchestrator.volume ...``): the same
code, the same atomic writes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .cli import HelpFormatter, run_command
from .docker import DockerError, docker, text
from .errors import InvalidInput, UserError
from .tasks import OrchestrationDir, State, Task

CONTAINER_ROOT = "/orchestration"


def claim(orch: OrchestrationDir, task_id: str, worker_type: str, container: str) -> Task:
    """Validate the task and record that a worker is starting for it.

    A task that already has a result is refused: a result is never overwritten.
    """
    task = orch.load_task(task_id)
    result_path = orch.result_path(task_id)
    if result_path.exists():
        raise UserError(f"task {task_id} already has a result ({result_path}); give a new attempt a new id")
    orch.update_status(task_id, State.STARTING, worker_type=worker_type, container=container)
    return task


class LocalVolume:
    """The volume mounted in this container (the manager)."""

    def __init__(self, orch: OrchestrationDir):
        self.orch = orch

    def claim(self, task_id: str, worker_type: str, container: str) -> Task:
        return claim(self.orch, task_id, worker_type, container)

    def set_state(self, task_id: str, state: State, message: str) -> None:
        self.orch.update_status(task_id, state, message=message)


class ContainerVolume:
    """The named volume, reached through a throwaway container of ``image`` (from the host)."""

    def __init__(self, volume: str, image: str):
        self.volume = volume
        self.image = image

    def _run(self, *args: str) -> str:
        try:
            proc = docker(
                "run", "--rm", "--volume", f"{self.volume}:{CONTAINER_ROOT}",
                "--env", f"ORCHESTRATION_DIR={CONTAINER_ROOT}",
                "--entrypoint", "python3", self.image, "-P", "-m", "orchestrator.volume", *args,
                timeout=120,
            )  # fmt: skip
        except DockerError as exc:
            # The helper's own one-line error, without docker's wrapping.
            lines = [line for line in exc.stderr.splitlines() if line.strip()]
            raise UserError(lines[-1].removeprefix("volume: error: ") if lines else str(exc)) from None
        return text(proc)

    def claim(self, task_id: str, worker_type: str, container: str) -> Task:
        out = self._run("claim", task_id, "--worker-type", worker_type, "--container", container)
        return Task.from_json(json.loads(out))

    def set_state(self, task_id: str, state: State, message: str) -> None:
        self._run("set-state", task_id, state.value, "--message", message)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        formatter_class=HelpFormatter, prog="volume", description="Task bookkeeping on the shared volume."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("claim", help="validate a task and mark it as starting; prints the task")
    p.add_argument("task_id")
    p.add_argument("--worker-type", required=True)
    p.add_argument("--container", required=True)
    p = sub.add_parser("set-state", help="record a task's state")
    p.add_argument("task_id")
    p.add_argument("state", choices=[s.value for s in State])
    p.add_argument("--message", default=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.umask(OrchestrationDir.UMASK)
    orch = OrchestrationDir.from_env()

    def work() -> int:
        if not (orch.root / "tasks").is_dir():
            raise InvalidInput(f"{orch.root / 'tasks'} does not exist")
        if args.command == "claim":
            task = claim(orch, args.task_id, args.worker_type, args.container)
            print(json.dumps(task.to_json()))
        else:
            orch.update_status(args.task_id, State(args.state), message=args.message)
        return 0

    return run_command("volume", work)


def volume_for(orch_dir: str | Path, volume: str, image: str) -> LocalVolume | ContainerVolume:
    """The volume as mounted here when it is, otherwise through a container."""
    orch = OrchestrationDir(Path(orch_dir))
    return LocalVolume(orch) if (orch.root / "tasks").is_dir() else ContainerVolume(volume, image)


if __name__ == "__main__":
    sys.exit(main())
