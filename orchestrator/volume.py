"""What spawn-worker does on the shared volume, from wherever it runs.

Inside the manager the volume is mounted at /orchestration and these operations run
directly. On the host it is not mounted, but it is a folder of the engine's
(``docker volume inspect`` names it): when this process may write there (root on a Linux
host, rootless Docker's user), the same operations run on that folder. Otherwise (Docker
Desktop's VM, a user who is not root) they run in a helper container of the worker image
that mounts the volume, started on first use, reached with ``docker exec`` and kept until
it has been idle for a while (``python3 -m orchestrator.volume ...``): the same code, the
same atomic writes, without a new container per call.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from . import config, environment
from .cli import HelpFormatter, run_command
from .docker import DockerError, NameConflict, NoSuchContainer, NoSuchVolume, NotRunning, docker, labels, text
from .errors import InvalidInput, UserError
from .store import OrchestrationDir, write_atomic
from .tasks import State, Task

CONTAINER_ROOT = config.CONTAINER_ORCHESTRATION_DIR
HELPER_IDLE_SECONDS = 600  # a helper nobody used for this long goes away
# Touched by every command the helper runs; its idle loop watches it.
HELPER_STAMP = Path("/tmp/orchestrator-volume-used")


def claim(orch: OrchestrationDir, task_id: str, worker_type: str, container: str) -> Task:
    """Validate the task and record that a worker is starting for it.

    A task that already has a result is refused: a result is never overwritten.
    """
    task = orch.load_task(task_id)
    result_path = orch.result_path(task_id)
    if result_path.exists():
        raise UserError(
            f"task {task_id} ran already (`orch result {task_id}`); `orch retry {task_id}` runs it again and keeps "
            "this attempt, or give a new task a new id"
        )
    orch.update_status(task_id, State.STARTING, worker_type=worker_type, container=container)
    return task


class LocalVolume:
    """The volume as a folder this process can write: mounted here (the manager), or the
    engine's own folder of it (on a Linux host)."""

    def __init__(self, orch: OrchestrationDir):
        self.orch = orch

    def claim(self, task_id: str, worker_type: str, container: str) -> Task:
        return claim(self.orch, task_id, worker_type, container)

    def set_state(self, task_id: str, state: State, message: str) -> None:
        self.orch.update_status(task_id, state, message=message)

    def status_before(self, task_id: str) -> bytes | None:
        """The task's status file as it is, for ``unclaim``."""
        try:
            return self.orch.status_path(task_id).read_bytes()
        except FileNotFoundError:
            return None

    def unclaim(self, task_id: str, before: bytes | None) -> None:
        """The claim undone: the status as it was before (a worker that never started)."""
        path = self.orch.status_path(task_id)
        if before is None:
            path.unlink(missing_ok=True)
        else:
            write_atomic(path, before)


class HelperVolume:
    """The named volume, through a helper container kept for it and reached with ``docker exec``."""

    def __init__(self, volume: str, image: str):
        self.volume = volume
        self.image = image
        self.name = f"orchestrator-volume-{volume}"

    def _run(self, *args: str) -> str:
        argv = ["exec", "--env", f"ORCHESTRATION_DIR={CONTAINER_ROOT}", self.name,
                "python3", "-P", "-m", "orchestrator.volume", *args]  # fmt: skip
        for attempt in range(3):
            try:
                return text(docker(*argv, timeout=120))
            except (NoSuchContainer, NotRunning):
                if attempt == 2:
                    raise
                self._start()  # never started, or gone idle meanwhile
            except DockerError as exc:
                # The helper's own one-line error, without docker's wrapping, and its kind: a bad
                # task file is bad input (exit code 2) here as in the manager.
                lines = [line for line in exc.stderr.splitlines() if line.strip()]
                kind = InvalidInput if exc.returncode == InvalidInput.exit_code else UserError
                raise kind(lines[-1].removeprefix("volume: error: ") if lines else str(exc)) from None
        raise AssertionError("not reached")

    def _start(self) -> None:
        try:
            docker(
                "run", "--detach", "--rm", "--name", self.name,
                *labels({config.LABEL_ROLE: "volume-helper", config.LABEL_VOLUME: self.volume}),
                "--volume", f"{self.volume}:{CONTAINER_ROOT}", "--network", "none",
                "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                "--entrypoint", "/usr/bin/tini", self.image,
                "--", "python3", "-P", "-m", "orchestrator.volume", "idle", "--seconds", str(HELPER_IDLE_SECONDS),
                timeout=120,
            )  # fmt: skip
        except NameConflict:
            time.sleep(0.5)  # another spawn started it, or the last one is on its way out

    def claim(self, task_id: str, worker_type: str, container: str) -> Task:
        out = self._run("claim", task_id, "--worker-type", worker_type, "--container", container)
        return Task.from_json(json.loads(out))

    def set_state(self, task_id: str, state: State, message: str) -> None:
        self._run("set-state", task_id, state.value, "--message", message)

    def status_before(self, task_id: str) -> bytes | None:
        return None  # not looked up through the helper: a start that fails is recorded as failed

    def unclaim(self, task_id: str, before: bytes | None) -> None:
        self.set_state(task_id, State.FAILED, "its worker did not start")


def local_volume(orch_dir: str | Path) -> LocalVolume | None:
    """The volume mounted at ``orch_dir``, when it is."""
    orch = OrchestrationDir(Path(orch_dir))
    return LocalVolume(orch) if (orch.root / "tasks").is_dir() else None


def host_volume(volume: str, image: str) -> LocalVolume | HelperVolume:
    """The volume from the host: its folder when this process may write there, else through a
    helper container of ``image``."""
    try:
        proc = docker("volume", "inspect", volume, timeout=30)
    except NoSuchVolume:
        raise UserError(f"the volume {volume} does not exist; bin/run.py makes it (or pass --volume)") from None
    found = json.loads(text(proc) or "[]")
    mountpoint = found[0].get("Mountpoint") if found and isinstance(found[0], dict) else None
    if isinstance(mountpoint, str) and mountpoint:
        orch = OrchestrationDir(Path(mountpoint))
        folders = [orch.root / "tasks", orch.root / "status"]
        if all(f.is_dir() and os.access(f, os.R_OK | os.W_OK | os.X_OK) for f in folders):
            return LocalVolume(orch)
    return HelperVolume(volume, image)


def volume_for(orch_dir: str | Path, volume: str, image: str) -> LocalVolume | HelperVolume:
    """The volume as mounted here when it is, otherwise from the host."""
    return local_volume(orch_dir) or host_volume(volume, image)


def idle(seconds: float) -> int:
    """The helper's main process: ends once no command has used it for ``seconds``."""
    HELPER_STAMP.touch()
    while True:
        time.sleep(min(seconds, 10))
        try:
            last = HELPER_STAMP.stat().st_mtime
        except FileNotFoundError:
            last = 0.0
        if time.time() - last > seconds:
            return 0


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
    p = sub.add_parser("idle", help="the helper container's main process: wait until it has been idle")
    p.add_argument("--seconds", type=float, default=HELPER_IDLE_SECONDS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "idle":
        return idle(args.seconds)
    os.umask(OrchestrationDir.UMASK)
    orch = OrchestrationDir(Path(environment.ORCHESTRATION_DIR.require(os.environ)))

    def work() -> int:
        # In a helper, its idle loop made the stamp; anywhere else there is none to touch.
        with contextlib.suppress(FileNotFoundError):
            os.utime(HELPER_STAMP)
        if not (orch.root / "tasks").is_dir():
            raise InvalidInput(f"{orch.root / 'tasks'} does not exist")
        if args.command == "claim":
            task = claim(orch, args.task_id, args.worker_type, args.container)
            print(json.dumps(task.to_json()))
        else:
            orch.update_status(args.task_id, State(args.state), message=args.message)
        return 0

    return run_command("volume", work)


if __name__ == "__main__":
    sys.exit(main())
