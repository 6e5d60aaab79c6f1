"""The worker runtime: the entrypoint of every worker image.

It reads ``tasks/ID.json``, clones the repository, runs the agent headless on the task's
prompt and writes ``results/ID.json``, whatever happens on the way: a task that cannot be
read, a clone that fails, an agent that errs, hangs or is stopped all end in a result
whose status is not ``success``, and a non-zero exit.

The runtime runs as root with two capabilities (to change user, to signal); the agent runs as
a user of its own and is handed the repository and nothing else (see sandbox.py): the
secrets stay with the runtime, the Claude credential reaches the API through the runtime's
relay (relay.py), and the work comes back through the runtime's own clone (delivery.py).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from . import agent, delivery, environment, git, sandbox
from .agents import agent_cli
from .cli import HelpFormatter, run_command
from .config import DEFAULT_TASK_TIMEOUT
from .errors import EXIT_FAILURE, EXIT_OK, UserError
from .relay import DEFAULT_UPSTREAM
from .sandbox import RUNTIME_PATH, AgentUser
from .secrets import SECRET_ENV, Secrets, scrubber
from .store import AlreadyExists, OrchestrationDir
from .tasks import State, Task, TaskResult, format_time, utc_now
from .worker_access import Access, access_of, measured
from .worker_config import WorkerConfig


@dataclass(frozen=True)
class Attempt:
    """How the attempt went, before its work is handed back."""

    status: State
    error: str | None
    run: agent.AgentRun | None = None
    task: Task | None = None
    model: str | None = None
    usage: dict[str, Any] | None = None


@dataclass(frozen=True)
class AgentOutcome:
    run: agent.AgentRun
    timeout: int
    relay: str  # the relay's host:port, which the agent's own messages name as its endpoint
    usage: dict[str, Any] | None = None  # the relay's measure of the task's account (worker_access.measured)


class Stopped(Exception):
    """The container was asked to stop before the agent ran (docker stop, or orch's timeout)."""

    def __init__(self, state: State):
        super().__init__(state.value)
        self.state = state


# docker stop sends SIGTERM: the task is cancelled when orch cancel asked for it (it says so in
# the status first), interrupted otherwise (an engine shutdown, a docker stop by hand). orch
# sends SIGUSR1 (docker kill --signal) to a worker that outlived its task's timeout.
STOP_SIGNALS = {signal.SIGTERM: State.INTERRUPTED, signal.SIGINT: State.INTERRUPTED, signal.SIGUSR1: State.TIMEOUT}
ASKED_BY_ORCH = {"cancelled": State.CANCELLED, "timeout": State.TIMEOUT}
STOP_POLL_SECONDS = 2.0
# The egress ticket reaches the agent only inside its proxy URL, once the runtime has opened the door.
_TICKETS = (environment.RELAY_TICKET.name, environment.GIT_TICKET.name, environment.EGRESS_TICKET.name)


class Worker:
    def __init__(self, config: WorkerConfig, env: Mapping[str, str]):
        self.config = config
        # Nothing secret is in the container's environment; whatever is, the agent does not get,
        # nor the runtime's tickets (the agent gets its relay ticket where its CLI looks for it).
        self.env = {name: value for name, value in env.items() if name not in SECRET_ENV and name not in _TICKETS}
        self.scrub = scrubber([])
        self.agent: agent.AgentProcess | None = None
        self.finishing = False
        # Set when a stop came (a signal, or orch's request): no time for a push to wait for its server.
        self.stop_event = threading.Event()
        self.requested: State | None = None  # the stop orch asked for in the status
        self.log_file: TextIO | None = None
        self.workspace: delivery.Workspace | None = None
        self.git_env: dict[str, str] = {}
        self.access: Access = access_of(None, Secrets(), config.home, config.api_url, relay_ticket=None,
                                        git_ticket=None, api_key=False)  # fmt: skip

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
        if state is State.INTERRUPTED:
            state = ASKED_BY_ORCH.get(self.stop_reason() or "", state)
        self.stop_event.set()
        self.say(f"received {signal.Signals(signum).name}, stopping ({state.value})")
        if self.finishing:
            return  # the result is being written; let it be
        if self.agent is not None:
            self.agent.stop(state.value)
        else:
            raise Stopped(state)

    def watch_for_stop(self) -> None:
        """orch asks a worker to stop by writing why in its status (then, on one engine, with a
        signal): the one way that reaches a worker on any node of a swarm."""
        while not self.finishing:
            reason = self.stop_reason()
            if reason in ASKED_BY_ORCH and self.requested is None:
                state = ASKED_BY_ORCH[reason]
                self.requested = state
                self.stop_event.set()
                self.say(f"orch asked this worker to stop ({state.value})")
                if self.agent is not None:
                    self.agent.stop(state.value)
            time.sleep(STOP_POLL_SECONDS)

    def stop_reason(self) -> str | None:
        """Why orch asked this worker to stop, as it wrote in the status before it did."""
        try:
            status = self.config.orch.load_status(self.config.task_id)
        except UserError:
            return None
        return status.stop_reason if status is not None else None

    def run(self) -> int:
        config = self.config
        orch = config.orch
        # The volume's files are for the manager's group; the agent's user is in no group of them.
        os.umask(OrchestrationDir.UMASK)
        secrets = Secrets.take(config.home)
        self.scrub = scrubber(secrets.values())
        orch.ensure()
        if orch.result_path(config.task_id).exists():
            raise UserError(
                f"{orch.result_path(config.task_id)} already exists; a task runs once (`orch retry {config.task_id}` "
                "runs it again as a new attempt)"
            )
        started_at, t0 = utc_now(), time.monotonic()
        for signum in STOP_SIGNALS:
            signal.signal(signum, self.on_signal)
        threading.Thread(target=self.watch_for_stop, name="stop-requests", daemon=True).start()
        self.access = access_of(config.doors, secrets, config.home, config.api_url, relay_ticket=config.relay_ticket,
                                git_ticket=config.git_ticket, api_key=config.api_key,
                                egress_ticket=config.egress_ticket, task_id=config.task_id,
                                wait_for=float(environment.PUSH_RETRY_SECONDS.require(self.env)))  # fmt: skip
        done = self.attempt(started_at)
        self.finishing = True
        status, error, run, task, model = done.status, done.error, done.run, done.task, done.model
        try:
            handed_back = self.hand_back(task) if self.workspace is not None and task is not None else None
        finally:
            Secrets.forget(config.home)
        if handed_back is not None and handed_back.error:
            # Work that did not reach origin is a failure even when the agent succeeded.
            error = f"{error}; also, {handed_back.error}" if error else handed_back.error
            status = State.FAILED if status is State.SUCCESS else status
        result = self.result(status, error, run, model, started_at, time.monotonic() - t0, handed_back)
        result = dataclasses.replace(result, usage=done.usage)
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

    def attempt(self, started_at: str) -> Attempt:
        """Prepare, then run the agent; how it went, whatever goes wrong (the hand-back follows)."""
        config = self.config
        done = Attempt(State.FAILED, None, model=config.model)
        try:
            self.log_file = open(config.orch.worker_log_path(config.task_id), "w", encoding="utf-8")  # noqa: SIM115
            self.set_state(State.RUNNING, started_at=started_at)
            task = config.orch.load_task(config.task_id)
            done = Attempt(State.FAILED, None, task=task, model=task.model or config.model)
            user = self.prepare(task, done.model)
            run = self.run_agent(task, user, done.model, config.timeout or task.timeout or DEFAULT_TASK_TIMEOUT)
            status, error = agent.judge(run.run, run.timeout)
            if status is not State.SUCCESS and run.usage and run.usage.get("state") == "spent":
                # The relay refused the agent's next request: the budget (the task's or the batch's).
                status = State.BUDGET_EXCEEDED
            if error:
                # The agent names the relay (127.0.0.1:PORT) as its endpoint: the person's is the one to check.
                endpoint = f"{config.api_url or DEFAULT_UPSTREAM}, through the worker's API relay"
                error = error.replace(f"http://{run.relay}", endpoint).replace(run.relay, endpoint)
            return Attempt(status, error, run.run, task, done.model, run.usage)
        except Stopped as stop:
            error = f"the worker was stopped ({stop.state.value}) before the agent started"
            return dataclasses.replace(done, status=stop.state, error=error)
        except delivery.Blocked as exc:
            return dataclasses.replace(done, status=State.BLOCKED, error=str(exc))
        except UserError as exc:
            return dataclasses.replace(done, error=str(exc))
        except BaseException as exc:  # noqa: BLE001 (a bug must still leave a result behind)
            self.say("internal error:\n" + "".join(traceback.format_exception(exc)))
            return dataclasses.replace(done, error=f"internal error in the worker: {type(exc).__name__}: {exc}")

    def prepare(self, task: Task, model: str | None) -> AgentUser:
        """Everything before the agent runs: the checks, git's set-up, the agent's folders and its
        clone, on the task's branch, started where the task starts from."""
        config, access = self.config, self.access
        if not config.repo_url:
            raise UserError("no repository: REPO_URL is not set")
        access.check()
        user = AgentUser.named(config.agent_user)
        sandbox.check_runtime_can_switch(user)
        self.git_env = access.git_env(config.repo_url)
        git.configure_identity(config.git_user_name, config.git_user_email)
        git.configure_credentials()
        git.prepare_ssh(config.home)
        self.prepare_agent_folders(user)
        start_from = delivery.start_points(task, config.orch, config.attempt, self.say)
        access.before_clone(self.say, config.mirror)
        mirror = config.mirror if config.mirror and (config.mirror / "HEAD").is_file() else None
        if access.through_control_plane and mirror is None:
            raise UserError(f"the control plane's mirror is not at {config.mirror}: this worker clones from it alone")
        borrowing = ", borrowing from the control plane's mirror" if mirror else ""
        if access.through_control_plane:
            borrowing = ", from the control plane's mirror, as origin is now"
        self.say(f"cloning {config.repo_url} (branch {config.branch}{borrowing})")
        self.workspace = delivery.prepare(
            url=config.repo_url,
            branch=config.branch,
            wanted=git.task_branch(config.branch_prefix, config.task_id, config.attempt),
            own=config.runtime_dir / "repo",
            agent=config.workspace / "repo",
            user=user,
            agent_env=self.agent_env(user, model),
            git_env=self.git_env,
            scrub=self.scrub,
            say=self.say,
            task_id=config.task_id,
            start_from=start_from,
            origin_access=self.access.origin_access,
            mirror=mirror,
            mirror_only=access.through_control_plane,
        )
        return user

    def run_agent(self, task: Task, user: AgentUser, model: str | None, timeout: int) -> AgentOutcome:
        """The agent's run, through the relay, under its timeout."""
        config = self.config
        cli = agent_cli(config.agent_cli)
        assert self.workspace is not None
        self.say(f"running the agent (model {model or 'default'}, timeout {timeout} s)")
        # For orch's dispatcher, which stops a worker that outlives this by far.
        self.set_state(State.RUNNING, deadline=format_time(datetime.now(UTC) + timedelta(seconds=timeout)))
        if self.requested is not None:
            raise Stopped(self.requested)  # asked to stop while it cloned
        with (
            self.access.api(lambda notice: self.say(notice.message)) as api,
            open(config.orch.log_path(config.task_id), "w", encoding="utf-8") as transcript,
        ):
            self.agent = agent.AgentProcess(
                cli.argv(model, task.max_turns),
                prompt=task.prompt,
                user=user,
                cwd=str(self.workspace.agent),
                env={**self.agent_env(user, model), **cli.environment(api.url, api.ticket, api_key=api.api_key),
                     **api.proxy_env},
                timeout=timeout,
                on_line=self.agent_line,
                transcript=transcript,
                scrub=self.scrub,
                reader=cli.reader(),
            )  # fmt: skip
            ran = self.agent.run()
            return AgentOutcome(ran, timeout, api.url.removeprefix("http://"), measured(api))

    @property
    def agent_home(self) -> Path:
        """The agent's home and temporary folder are in the workspace, the space that is bounded
        (a size of the batch's: see spawn.py); the image's /home/agent and /tmp are not its."""
        return self.config.workspace / "home"

    @property
    def agent_tmp(self) -> Path:
        return self.config.workspace / "tmp"

    def prepare_agent_folders(self, user: AgentUser) -> None:
        """The workspace's folders: a temporary folder like /tmp (root's, sticky, open to all; the
        image links /tmp and /var/tmp to it), and the agent's home, made by the agent's user."""
        tmp = self.agent_tmp
        if not tmp.is_dir():
            tmp.mkdir()
        os.chmod(tmp, 0o1777)
        claude = shutil.which(agent_cli(self.config.agent_cli).command, path=self.env.get("PATH"))
        home = shlex.quote(str(self.agent_home))
        # Claude Code looks for itself in ~/.local/bin and says it is "missing or broken" otherwise.
        script = f"mkdir -p -m 0700 {home} && mkdir -p {home}/.local/bin"
        if claude:
            script += f" && ln -sfn {shlex.quote(claude)} {home}/.local/bin/claude"
        proc = sandbox.agent_step(user, ["sh", "-c", script], cwd="/", env=sandbox.isolated_git_env())
        if proc.returncode:
            raise UserError(f"the agent's home could not be made in {self.config.workspace}: {proc.stderr.strip()}")

    def agent_env(self, user: AgentUser, model: str | None) -> dict[str, str]:
        """The agent's environment: the container's, which holds no secret, without the real API
        endpoint (the agent reaches it through the relay), and with its git identity, its home
        and its temporary folder in the workspace."""
        env = {name: value for name, value in self.env.items() if name != environment.ANTHROPIC_BASE_URL.name}
        config = self.config
        env.update(
            GIT_AUTHOR_NAME=config.git_user_name,
            GIT_AUTHOR_EMAIL=config.git_user_email,
            GIT_COMMITTER_NAME=config.git_user_name,
            GIT_COMMITTER_EMAIL=config.git_user_email,
            TMPDIR=str(self.agent_tmp),
        )
        if model:
            env[environment.ANTHROPIC_MODEL.name] = model
        # The relay is on loopback: a proxy for the way out must not take those requests.
        for name in ("NO_PROXY", "no_proxy"):
            env[name] = ",".join(p for p in (env.get(name), "127.0.0.1", "localhost") if p)
        return {**user.environment(env), "HOME": str(self.agent_home)}

    def hand_back(self, task: Task) -> delivery.Delivery | None:
        """Commit and push the agent's work, whatever the outcome: nothing it did is lost."""
        assert self.workspace is not None
        config = self.config
        user = AgentUser.named(config.agent_user)
        bundle = config.orch.bundle_path(config.task_id, config.attempt)
        try:
            # The agent's processes are gone (the run ends them all); again, in case anything of
            # its user started since.
            sandbox.kill_all(user.uid)
            return delivery.hand_back(
                self.workspace,
                delivery.commit_message(task, config.attempt),
                bundle,
                url=config.repo_url or "",
                git_env=self.git_env,
                scrub=self.scrub,
                say=self.say,
                retry_for=0.0 if self.stop_event.is_set() else float(environment.PUSH_RETRY_SECONDS.require(self.env)),
                stopping=self.stop_event,
                scratch=config.runtime_dir,
                origin_access=self.access.origin_access,
                pusher=self.access.pusher(),
            )
        except UserError as exc:
            reason = str(exc)
        except Exception as exc:  # noqa: BLE001 (a bug here must still leave a result behind)
            self.say("internal error while handing the work back:\n" + "".join(traceback.format_exception(exc)))
            reason = f"internal error: {type(exc).__name__}: {exc}"
        # Not committed: the agent's clone goes to the volume as it is.
        return delivery.salvage(self.workspace, config.orch.archive_path(config.task_id, config.attempt), reason,
                                self.say)  # fmt: skip

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
        report = run.report if run is not None else None
        result = TaskResult(
            task_id=self.config.task_id,
            status=status,
            output=self.scrub(report.output if report else ""),
            completed_at=utc_now(),
            started_at=started_at,
            duration_seconds=round(duration, 3),
            exit_code=run.exit_code if run else None,
            cost_usd=report.cost_usd if report else None,
            num_turns=report.turns if report else None,
            session_id=report.session_id if report else None,
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
            archive=handed_back.archive,
            started_from=tuple(point.to_json() for point in self.workspace.started_from) if self.workspace else (),
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        formatter_class=HelpFormatter,
        prog="worker",
        description="Run one task: clone the repository, run Claude Code headless on the task's prompt as the "
        "agent's user, hand its work back as a branch, write the result to the shared volume. Configured by "
        "environment variables (TASK_ID, TASK_ATTEMPT, TASK_TIMEOUT, REPO_URL, REPO_BRANCH, ANTHROPIC_MODEL, "
        "ANTHROPIC_BASE_URL, GIT_USER_NAME, GIT_USER_EMAIL, ORCHESTRATION_DIR, WORKSPACE) and by the secrets "
        "copied into the runtime's home (~/.claude-token, ~/.git-token, ~/.ssh/id_ed25519).",
    )
    parser.add_argument("--task-id", help="the task to run (default: $TASK_ID)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of expected failures")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    env = dict(os.environ)  # the agent's environment is made from this one
    os.environ["PATH"] = RUNTIME_PATH
    # The runtime's temporary files stay in a folder of root's: /tmp is the agent's (see agent_home).
    runtime_tmp = Path(environment.RUNTIME_DIR.require(env)) / "tmp"
    with contextlib.suppress(OSError):
        runtime_tmp.mkdir(mode=0o700, exist_ok=True)
    os.environ["TMPDIR"] = str(runtime_tmp)
    tempfile.tempdir = None

    def work() -> int:
        config = WorkerConfig.from_env(env, args.task_id)
        return Worker(config, env).run()

    return run_command("worker", work, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
