"""The worker runtime: the entrypoint of every worker image.

It reads ``tasks/ID.json``, clones the repository, runs the agent headless on the task's
prompt and writes ``results/ID.json``, whatever happens on the way: a task that cannot be
read, a clone that fails, an agent that errs, hangs or is stopped all end in a result
whose status is not ``success``, and a non-zero exit.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import TextIO

from . import agent, delivery, git
from .cli import HelpFormatter, run_command
from .config import DEFAULT_BRANCH, DEFAULT_BRANCH_PREFIX, ENV_BRANCH_PREFIX
from .errors import EXIT_FAILURE, EXIT_OK, UserError
from .secrets import GIT_TOKEN_ENV, scrubber
from .tasks import AlreadyExists, OrchestrationDir, State, Task, TaskResult, utc_now

DEFAULT_TIMEOUT = 3600


class Stopped(Exception):
    """The container was asked to stop before the agent ran (docker stop, or orch's timeout)."""

    def __init__(self, state: State):
        super().__init__(state.value)
        self.state = state


# docker stop sends SIGTERM: the task is cancelled. orch sends SIGUSR1 (docker kill --signal)
# to a worker that outlived its task's timeout, so that the result says timeout instead.
STOP_SIGNALS = {signal.SIGTERM: State.CANCELLED, signal.SIGINT: State.CANCELLED, signal.SIGUSR1: State.TIMEOUT}


@dataclass(frozen=True)
class WorkerConfig:
    task_id: str
    repo_url: str | None
    branch: str
    model: str | None
    timeout: int | None  # set by spawn-worker --timeout; overrides the task's own
    attempt: int | None
    worker_type: str | None
    workspace: Path
    home: Path
    orch: OrchestrationDir
    git_user_name: str | None
    git_user_email: str | None
    branch_prefix: str = DEFAULT_BRANCH_PREFIX

    @classmethod
    def from_env(cls, env: Mapping[str, str], task_id: str | None = None) -> WorkerConfig:
        task_id = task_id or env.get("TASK_ID")
        if not task_id:
            raise UserError("no task id: set TASK_ID or pass --task-id")
        timeout_text = env.get("TASK_TIMEOUT")
        try:
            timeout = int(timeout_text) if timeout_text else None
        except ValueError:
            raise UserError(f"TASK_TIMEOUT must be a whole number of seconds, not {timeout_text!r}") from None
        return cls(
            task_id=task_id,
            repo_url=env.get("REPO_URL") or None,
            branch=env.get("REPO_BRANCH") or DEFAULT_BRANCH,
            model=env.get("ANTHROPIC_MODEL") or None,
            timeout=timeout,
            attempt=int(env["TASK_ATTEMPT"]) if env.get("TASK_ATTEMPT", "").isdigit() else None,
            worker_type=env.get("WORKER_TYPE") or None,
            workspace=Path(env.get("WORKSPACE") or "/workspace"),
            home=Path(env.get("HOME") or Path.home()),
            orch=OrchestrationDir(Path(env.get("ORCHESTRATION_DIR") or "/orchestration")),
            git_user_name=env.get("GIT_USER_NAME") or None,
            git_user_email=env.get("GIT_USER_EMAIL") or None,
            branch_prefix=env.get(ENV_BRANCH_PREFIX) or DEFAULT_BRANCH_PREFIX,
        )


class Worker:
    def __init__(self, config: WorkerConfig, env: Mapping[str, str]):
        self.config = config
        self.env = dict(env)
        self.scrub = scrubber(env)
        self.agent: agent.AgentProcess | None = None
        self.finishing = False
        self.log_file: TextIO | None = None
        self.checkout: delivery.Checkout | None = None

    def _print(self, line: str) -> None:
        print(line, flush=True)
        # The same lines on the volume: `orch logs` reads them after the container is gone.
        if self.log_file is not None:
            try:
                self.log_file.write(line + "\n")
                self.log_file.flush()
            except OSError:
                self.log_file = None  # a full volume must not stop the task; docker logs has it all

    def say(self, message: str) -> None:
        self._print(f"[worker {self.config.task_id}] {self.scrub(message)}")

    def agent_line(self, line: str) -> None:
        self._print(f"[agent] {line}")

    def set_state(
        self, state: State, message: str | None = None, started_at: str | None = None, deadline: str | None = None
    ) -> None:
        self.config.orch.update_status(
            self.config.task_id,
            state,
            message=message,
            worker_type=self.config.worker_type,
            attempt=self.config.attempt,
            started_at=started_at,
            deadline=deadline,
        )

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        state = STOP_SIGNALS[signal.Signals(signum)]
        self.say(f"received {signal.Signals(signum).name}, stopping ({state.value})")
        if self.finishing:
            return  # the result is being written; let it be
        if self.agent is not None:
            self.agent.stop(state.value)
        else:
            raise Stopped(state)

    def run(self) -> int:
        config = self.config
        orch = config.orch
        os.umask(0o002)  # the manager and other workers may need to update these files
        orch.ensure()
        if orch.result_path(config.task_id).exists():
            raise UserError(
                f"{orch.result_path(config.task_id)} already exists; a task runs once (give the new attempt a new id)"
            )
        started_at, t0 = utc_now(), time.monotonic()
        for signum in STOP_SIGNALS:
            signal.signal(signum, self.on_signal)
        run: agent.AgentRun | None = None
        task: Task | None = None
        model = config.model
        try:
            self.log_file = open(orch.worker_log_path(config.task_id), "w", encoding="utf-8")  # noqa: SIM115
            self.set_state(State.RUNNING, started_at=started_at)
            task = orch.load_task(config.task_id)
            model = task.model or config.model
            timeout = config.timeout or task.timeout or DEFAULT_TIMEOUT
            if not config.repo_url:
                raise UserError("no repository: REPO_URL is not set")
            git.configure_identity(config.git_user_name, config.git_user_email)
            git.configure_credentials(self.env)
            git.prepare_ssh(config.home)
            clone_dir = config.workspace / "repo"
            self.say(f"cloning {config.repo_url} (branch {config.branch})")
            git.clone(config.repo_url, config.branch, clone_dir, scrub=self.scrub)
            branch = git.task_branch(config.branch_prefix, config.task_id, config.attempt)
            self.checkout = delivery.start_branch(clone_dir, branch, self.say)
            self.say(f"running the agent (model {model or 'default'}, timeout {timeout} s)")
            # For orch's dispatcher, which stops a worker that outlives this by far.
            deadline = datetime.now(UTC) + timedelta(seconds=timeout)
            self.set_state(State.RUNNING, deadline=deadline.strftime("%Y-%m-%dT%H:%M:%SZ"))
            with open(orch.log_path(config.task_id), "w", encoding="utf-8") as transcript:
                self.agent = agent.AgentProcess(
                    agent.headless_argv(task.prompt, model, task.max_turns),
                    cwd=str(clone_dir),
                    env=self.agent_env(model),
                    timeout=timeout,
                    on_line=self.agent_line,
                    transcript=transcript,
                    scrub=self.scrub,
                )
                run = self.agent.run()
            status, error = agent.judge(run, timeout)
        except Stopped as stop:
            status, error = stop.state, f"the worker was stopped ({stop.state.value}) before the agent started"
        except UserError as exc:
            status, error = State.FAILED, str(exc)
        except BaseException as exc:  # noqa: BLE001 (a bug must still leave a result behind)
            self.say("internal error:\n" + "".join(traceback.format_exception(exc)))
            status, error = State.FAILED, f"internal error in the worker: {type(exc).__name__}: {exc}"
        self.finishing = True
        handed_back = self.hand_back(task) if self.checkout is not None and task is not None else None
        if handed_back is not None and handed_back.error:
            # Work that did not reach origin is a failure even when the agent succeeded.
            error = f"{error}; also, {handed_back.error}" if error else handed_back.error
            status = State.FAILED if status is State.SUCCESS else status
        result = self.result(status, error, run, model, started_at, time.monotonic() - t0, handed_back)
        if error:
            self.say(f"{status.value}: {error}")
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None
        # Result and final status together, under the lock orch holds to retry or cancel, so
        # that neither sees one without the other.
        with orch.locked():
            try:
                orch.write_result(result)
            except AlreadyExists:
                # orch recorded an outcome first (a cancel before the agent ran); keep that one.
                self.say(
                    f"{orch.result_path(config.task_id)} was written meanwhile; this run's outcome: {status.value}"
                )
                return EXIT_FAILURE
            self.set_state(status, error)
        print(f"[worker {config.task_id}] result written to {orch.result_path(config.task_id)} (status {status.value})")
        return EXIT_OK if status is State.SUCCESS else EXIT_FAILURE

    def agent_env(self, model: str | None) -> dict[str, str]:
        # The worker pushes, not the agent: the git token stays out of the agent's reach.
        env = {name: value for name, value in self.env.items() if name != GIT_TOKEN_ENV}
        return {**env, **({"ANTHROPIC_MODEL": model} if model else {})}

    def hand_back(self, task: Task) -> delivery.Delivery | None:
        """Commit and push the agent's work, whatever the outcome: nothing it did is lost."""
        assert self.checkout is not None
        config = self.config
        bundle = config.orch.root / "bundles" / f"{config.task_id}-attempt-{config.attempt or 1}.bundle"
        try:
            return delivery.deliver(
                self.checkout,
                delivery.commit_message(task, config.attempt),
                bundle,
                scrub=self.scrub,
                say=self.say,
            )
        except UserError as exc:
            # A commit that failed: the work stays in the clone, in the kept container.
            base = self.checkout.base
            return delivery.Delivery(base, base, 0, error=f"its work could not be committed: {exc}")

    def result(
        self,
        status: State,
        error: str | None,
        run: agent.AgentRun | None,
        model: str | None,
        started_at: str,
        duration: float,
        handed_back: delivery.Delivery | None = None,
    ) -> TaskResult:
        final = run.final if run and run.final else {}
        said = final.get("result")
        output = said if isinstance(said, str) else (run.last_text if run else "")
        cost = final.get("total_cost_usd")
        turns = final.get("num_turns")
        session = final.get("session_id")
        result = TaskResult(
            task_id=self.config.task_id,
            status=status,
            output=self.scrub(output),
            completed_at=utc_now(),
            started_at=started_at,
            duration_seconds=round(duration, 3),
            exit_code=run.exit_code if run else None,
            cost_usd=cost if isinstance(cost, (int, float)) and not isinstance(cost, bool) else None,
            num_turns=turns if isinstance(turns, int) and not isinstance(turns, bool) else None,
            session_id=session if isinstance(session, str) else None,
            model=model,
            error=self.scrub(error) if error else None,
            attempt=self.config.attempt,
        )
        if handed_back is None:
            return result
        return dataclasses.replace(
            result,
            branch=handed_back.branch,
            base_commit=handed_back.base_commit,
            head_commit=handed_back.head_commit,
            commits=handed_back.commits,
            files_changed=tuple(handed_back.files_changed),
            pushed=handed_back.pushed,
            bundle=handed_back.bundle,
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        formatter_class=HelpFormatter,
        prog="worker",
        description="Run one task: clone the repository, run Claude Code headless on the task's prompt, "
        "write the result to the shared volume. Configured by environment variables "
        "(TASK_ID, TASK_ATTEMPT, REPO_URL, REPO_BRANCH, ANTHROPIC_MODEL, CLAUDE_CODE_OAUTH_TOKEN, TASK_TIMEOUT, "
        "GIT_USER_NAME, GIT_USER_EMAIL, ORCHESTRATION_DIR, WORKSPACE).",
    )
    parser.add_argument("--task-id", help="the task to run (default: $TASK_ID)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of expected failures")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    env = dict(os.environ)

    def work() -> int:
        config = WorkerConfig.from_env(env, args.task_id)
        return Worker(config, env).run()

    return run_command("worker", work, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
