"""spawn-worker TYPE TASK_ID: start one worker container for one task.

Works on the host and inside the manager. Secrets never reach a command line or the
container's environment: they are copied into the created container, into the home of its
runtime (root), through the Docker API, which works from both places where a bind mount of a
path inside the manager would not. The worker runs with limits and without capabilities
beyond the runtime's two (see sandbox.py).
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NoReturn, TextIO

from . import config, environment
from .cli import (
    HelpFormatter,
    add_api_option,
    add_git_access_options,
    add_limit_options,
    add_placement_options,
    run_command,
)
from .docker import running_managers
from .engine import Engine, engine_for
from .errors import EXIT_FAILURE, UserError
from .limits import WorkerLimits
from .secrets import DEFAULT_TOKEN_FILE
from .store import OrchestrationDir
from .tasks import State
from .volume import HelperVolume, LocalVolume, host_volume, local_volume
from .workerspec import WorkerDidNotStart, WorkerSpec, worker_spec

log = logging.getLogger(__name__)


def spawn(spec: WorkerSpec, orch_dir: str, engine: Engine) -> str:
    """Start the worker on ``engine``; returns its name. The task is claimed on the volume (its
    status: starting) once the worker's name is this spawn's. On the host, where the volume is
    not mounted, its folder is looked up while the engine makes the worker."""
    volume: LocalVolume | HelperVolume | None = local_volume(orch_dir)
    with ThreadPoolExecutor(1) as pool:
        found = pool.submit(host_volume, spec.volume, spec.image) if volume is None else None
        claimed: list[LocalVolume | HelperVolume] = []

        def claim() -> Callable[[], None]:
            where = volume if found is None else found.result()
            assert where is not None
            before = where.status_before(spec.task_id)
            where.claim(spec.task_id, spec.worker_type, spec.container)
            claimed.append(where)
            # What a start that failed after the claim puts back (the engine calls it).
            return lambda: where.unclaim(spec.task_id, before)

        try:
            return engine.launch(spec, claim)
        except WorkerDidNotStart as exc:
            if claimed:
                claimed[0].set_state(spec.task_id, State.FAILED, str(exc))
            raise


def build_parser(
    env: Mapping[str, str], parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser
) -> argparse.ArgumentParser:
    """The command line, its defaults from ``env``."""
    parser = parser_class(
        formatter_class=HelpFormatter,
        prog="spawn-worker",
        description="Start a worker container (worker-TASK_ID, image claude-TYPE) for the task "
        "tasks/TASK_ID.json on the shared volume. Defaults come from the environment, so inside the "
        "manager `spawn-worker flutter task-001` is enough.",
    )
    parser.add_argument("worker_type", metavar="TYPE", help="worker type; the image is <prefix>TYPE (claude-flutter)")
    parser.add_argument("task_id", metavar="TASK_ID", help="task id; tasks/TASK_ID.json must exist")
    parser.add_argument(
        "--repo",
        metavar="URL",
        default=environment.REPO_URL.get(env),
        help="repository to clone (default: $REPO_URL)",
    )
    parser.add_argument(
        "--branch",
        default=environment.REPO_BRANCH.get(env),
        help=f"branch to clone (default: $REPO_BRANCH, else {environment.REPO_BRANCH.default})",
    )
    parser.add_argument(
        "--model",
        default=environment.ANTHROPIC_MODEL.get(env),
        help=f"model (default: $ANTHROPIC_MODEL, else {environment.ANTHROPIC_MODEL.default})",
    )
    parser.add_argument(
        "--token",
        metavar="FILE",
        help="file holding the Claude token (default: $CLAUDE_CODE_OAUTH_TOKEN or $ANTHROPIC_API_KEY, "
        f"else {DEFAULT_TOKEN_FILE})",
    )
    add_api_option(parser, env)
    add_git_access_options(parser, env)
    add_limit_options(parser, env)
    parser.add_argument(
        "--timeout",
        type=int,
        metavar="SECONDS",
        help=f"how long the agent may run (default: the task's timeout, else {config.DEFAULT_TASK_TIMEOUT})",
    )
    parser.add_argument(
        "--orchestration-dir",
        default=environment.ORCHESTRATION_DIR.get(env),
        help="where the shared volume is mounted here, if it is (default: $ORCHESTRATION_DIR, else /orchestration)",
    )
    add_placement_options(parser, env)
    return parser


def result_hint(spec: WorkerSpec, orch_dir: str) -> str:
    """Where the task's result will be, as this person can read it: a path where the volume is
    mounted (the manager), else through the manager of the volume, else through a container."""
    if local_volume(orch_dir) is not None:
        return f"{orch_dir}/results/{spec.task_id}.json"
    managers = running_managers(spec.volume)
    if managers:
        return f"docker exec {managers[0]} orch result {spec.task_id}"
    return (
        f"docker run --rm -v {spec.volume}:/orchestration --entrypoint cat {spec.image} "
        f"/orchestration/results/{spec.task_id}.json"
    )


def start(args: argparse.Namespace, env: Mapping[str, str], out: TextIO) -> int:
    """The work of spawn-worker, its lines printed to ``out``."""
    spec = worker_spec(
        args.worker_type,
        args.task_id,
        env=env,
        repo=args.repo,
        branch=args.branch,
        model=args.model,
        api_url=args.api_url,
        volume=args.volume,
        network=args.network,
        image_prefix=args.image_prefix,
        limits=WorkerLimits.parse(args.memory, args.cpus, args.pids_limit, args.disk),
        timeout=args.timeout,
        token_file=args.token,
        ssh_key_file=args.ssh_key,
        known_hosts_file=args.known_hosts,
        git_token_file=args.git_token,
        branch_prefix=args.branch_prefix,
        engine=args.engine,
    )
    task_id = spec.task_id
    name = spawn(spec, args.orchestration_dir, engine_for(spec.engine, spec.volume))
    print(f"started {name} (image {spec.image}, task {task_id})", file=out)
    follow = "docker service logs -f" if spec.engine == config.ENGINE_SWARM else "docker logs -f"
    print(f"  follow it:   {follow} {name}", file=out)
    print(f"  its result:  {result_hint(spec, args.orchestration_dir)}", file=out)
    return 0


class _NotPlain(Exception):
    """The command line asks for help, or is a mistake: not for the quick way."""


class _QuietParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _NotPlain(message)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise _NotPlain(message or "")


def serve(argv: Sequence[str], env: Mapping[str, str]) -> tuple[int, str, str] | None:
    """spawn-worker for the control plane's channel, in the control plane's own process: what the
    manager's ``spawn-worker`` costs is then the channel's round trip and the spawn itself, not a
    second interpreter. Its exit code, what it printed, and its error; None when the command line
    asks for help or is a mistake, which the channel runs as a command of its own (it says so as
    it always did)."""
    try:
        args = build_parser(env, _QuietParser).parse_args(list(argv))
    except _NotPlain:
        return None
    if args.debug:
        return None
    out = io.StringIO()
    try:
        code = start(args, env, out)
    except UserError as exc:
        return exc.exit_code, out.getvalue(), f"spawn-worker: error: {exc}\n"
    except Exception as exc:  # the control plane goes on; the bug is in its log
        log.exception("spawn-worker failed")
        return EXIT_FAILURE, out.getvalue(), f"spawn-worker: internal error: {type(exc).__name__}: {exc}\n"
    return code, out.getvalue(), ""


def main(argv: Sequence[str] | None = None) -> int:
    env = os.environ  # read here, and nowhere below
    control = environment.CONTROL.get(env)
    if control:
        # In a manager with a control plane: the control plane does the work (control/channel.py).
        from .control.channel_client import client_main

        return client_main("spawn-worker", list(sys.argv[1:] if argv is None else argv), Path(control))
    args = build_parser(env).parse_args(argv)
    os.umask(OrchestrationDir.UMASK)
    return run_command("spawn-worker", lambda: start(args, env, sys.stdout), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
