"""orch: run a batch of tasks from the manager's shell.

    orch submit --prompt "..."        write a task (task-001, task-002, ...)
    orch start --all                  queue them; the dispatcher starts workers as slots free
    orch wait --all                   block until they are done (exit 0 when all succeeded)
    orch status / result / logs       see where things stand
    orch cancel / retry / cleanup     act on them

Everything lives on the shared volume, so a new manager on the same volume carries on.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from . import config, environment, merge, orch_git
from . import orch_commands as commands
from . import orch_reading as reading
from .cli import HelpFormatter, add_limit_options, run_command
from .context import Context
from .control.egress_policy import POLICY_NAMES
from .store import OrchestrationDir


def add_egress_options(p: argparse.ArgumentParser, whose: str, default: str) -> None:
    p.add_argument(
        "--egress",
        choices=POLICY_NAMES,
        help=f"{whose} egress policy: none, default (the worker type's list) or open (default: {default})",
    )
    p.add_argument(
        "--allow-host",
        metavar="HOST[:PORT]",
        action="append",
        help=f"a host added to {whose} egress policy; repeatable",
    )


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    """The command line, its defaults from ``env`` (what run.py set in the manager)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--orchestration-dir",
        default=environment.ORCHESTRATION_DIR.get(env),
        help="where the shared volume is mounted (default: $ORCHESTRATION_DIR, else /orchestration)",
    )
    common.add_argument(
        "--engine",
        choices=config.ENGINES,
        default=environment.ENGINE.require(env),
        help="what runs the workers: containers on this engine, or jobs of its swarm (default: "
        f"${environment.ENGINE.name}, which run.py sets in the manager, else {environment.ENGINE.default})",
    )
    common.add_argument("--debug", action="store_true", help="print the docker commands run, and tracebacks")

    parser = argparse.ArgumentParser(
        prog="orch",
        formatter_class=HelpFormatter,
        description="Run a batch of tasks: submit them, start them under a limit of parallel workers, "
        "watch, wait, read results and logs, cancel, retry, clean up. State lives on the shared volume.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary_text: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, parents=[common], help=summary_text, description=description, formatter_class=HelpFormatter
        )

    def batch_scope(p: argparse.ArgumentParser, what: str) -> None:
        p.add_argument("--batch", metavar="ID", help=f"{what} of this batch instead of the current one")
        p.add_argument("--history", action="store_true", help=f"{what} of every batch, the volume's whole history")

    p = command(
        "batch",
        "start a batch, or show or change the current one",
        "A batch is the tasks of one request. `orch batch new TITLE` starts one and makes it the current "
        "batch: orch submit adds to it, and status, wait, merge and --all mean it (--batch ID or --history "
        "for others). `orch batch list` lists them, `orch batch use ID` makes one current again, `orch batch` "
        "names the current one.",
    )
    p.add_argument("action", nargs="?", choices=("new", "list", "use", "show"), default="show")
    p.add_argument("title", nargs="*", metavar="TITLE|ID", help="new: what the request is, in a few words; use: the "
                   "batch to make current")  # fmt: skip
    p.set_defaults(func=commands.cmd_batch)

    p = command(
        "submit",
        "create a task",
        "Create a task from --prompt, --file or stdin and print its id. Ids are task-001, task-002, ... "
        "unless --id is given. An existing task is never overwritten.",
    )
    p.add_argument("--prompt", help="the task's prompt")
    p.add_argument("--file", metavar="FILE", help="read the prompt from FILE ('-' for stdin)")
    p.add_argument("--id", help="the task id (default: the next task-NNN)")
    p.add_argument(
        "--worker",
        metavar="TYPE",
        default=config.DEFAULT_WORKER_TYPE,
        help=f"worker type; the image is <prefix>TYPE (default: {config.DEFAULT_WORKER_TYPE})",
    )
    p.add_argument(
        "--depends-on",
        metavar="ID",
        nargs="+",
        action="extend",
        default=[],
        help="tasks that must succeed before this one starts",
    )
    p.add_argument(
        "--timeout",
        type=int,
        metavar="SECONDS",
        help=f"how long the agent may run (default: {config.DEFAULT_TASK_TIMEOUT})",
    )
    p.add_argument("--max-turns", type=int, metavar="N", help="stop the agent after N turns")
    p.add_argument(
        "--budget-usd",
        type=float,
        metavar="USD",
        help="what this task's agent may spend on the API, as the control plane's relay measures it; once spent, "
        "its next request is refused and the task ends budget_exceeded, its work handed back",
    )
    p.add_argument("--model", help="model for this task (default: the manager's)")
    add_egress_options(p, "this task's", "the batch's")
    add_limit_options(p)
    p.add_argument("--start", action="store_true", help="queue the task right away (as orch start ID)")
    p.set_defaults(func=commands.cmd_submit)

    p = command(
        "start",
        "queue tasks; the dispatcher starts them",
        "Queue submitted tasks (and the submitted tasks they depend on). A dispatcher in the background "
        "starts them as worker slots free up, each once the tasks it depends on have succeeded; a task "
        "whose dependency did not succeed is blocked.",
    )
    p.add_argument("ids", nargs="*", metavar="ID", help="tasks to start")
    p.add_argument("--all", action="store_true", help="start every submitted task of the current batch")
    batch_scope(p, "with --all, the submitted tasks")
    p.add_argument(
        "--max-workers",
        type=int,
        metavar="N",
        help=f"how many workers may run at once, from now on (default: ${environment.MAX_WORKERS.name}, else "
        f"{environment.MAX_WORKERS.default}; kept on the volume)",
    )
    p.add_argument(
        "--resume-interrupted",
        type=int,
        metavar="N",
        help="how often a task whose worker was stopped from outside (an engine restart, a reboot) is "
        f"queued again by itself, from what it handed back; 0: never (default: ${environment.RESUME_INTERRUPTED.name}, "
        f"else {environment.RESUME_INTERRUPTED.default}; kept on the volume)",
    )
    p.add_argument(
        "--budget-usd",
        type=float,
        metavar="USD",
        help="what the batch's agents may spend together, from now on (the relay's measure; kept on the volume); "
        f"once spent, no new task starts (default: ${environment.BUDGET_USD.name}, run.py --budget-usd)",
    )
    p.add_argument(
        "--no-login-check",
        action="store_true",
        help="start a new batch without asking the API first whether it accepts the token",
    )
    add_egress_options(p, "the batch's, from now on (kept on the volume)", "run.py's --egress")
    limit_options = p.add_argument_group(
        "limits of each worker from now on, kept on the volume (a task's own come first)"
    )
    add_limit_options(limit_options)
    p.set_defaults(func=commands.cmd_start)

    p = command(
        "status",
        "show every task's state",
        "One row per task, checked against the engine: a worker that died without a result is shown "
        "(and recorded) as failed, with its exit code.",
    )
    p.add_argument("ids", nargs="*", metavar="ID", help="only these tasks")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--watch", action="store_true", help="keep showing it until no task is queued or running")
    batch_scope(p, "the tasks")
    p.set_defaults(func=commands.cmd_status)

    p = command(
        "wait",
        "wait until tasks finish",
        "Block until the tasks (default: all) have finished or are blocked. Exit 0 when all succeeded, "
        "1 otherwise (also on --timeout).",
    )
    p.add_argument("ids", nargs="*", metavar="ID", help="tasks to wait for (default: all)")
    p.add_argument("--all", action="store_true", help="wait for every task of the current batch")
    batch_scope(p, "the tasks")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="give up after this long")
    p.set_defaults(func=commands.cmd_wait)

    p = command("result", "show a task's result", "Show how a task ended: status, error, cost, output.")
    p.add_argument("id", metavar="ID")
    p.add_argument("--json", action="store_true", help="print the result file")
    p.add_argument("--attempt", type=int, metavar="N", help="an earlier attempt's result")
    p.set_defaults(func=reading.cmd_result)

    p = command(
        "logs",
        "show a task's log",
        "Show what the task's worker printed (the same as docker logs), kept on the volume after the "
        "container is removed.",
    )
    p.add_argument("id", metavar="ID")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the task finishes")
    p.add_argument("--raw", action="store_true", help="the agent's raw stream-json transcript instead")
    p.add_argument("--attempt", type=int, metavar="N", help="an earlier attempt's log")
    p.set_defaults(func=reading.cmd_logs)

    p = command(
        "cancel",
        "stop tasks",
        "Stop the tasks' workers (or take them off the queue) and record them as cancelled. What a worker "
        "produced is kept: it pushes its branch as it stops, and its container, log and transcript stay.",
    )
    p.add_argument("ids", nargs="+", metavar="ID")
    p.set_defaults(func=commands.cmd_cancel)

    p = command(
        "retry",
        "run finished tasks again",
        "Queue a new attempt of failed, timed-out, cancelled or blocked tasks. The earlier attempt's "
        "result, transcript and log are kept under attempts/ID/, its container as worker-ID-attempt-N.",
    )
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument(
        "--failed",
        action="store_true",
        help="every task of the batch that failed, timed out or was interrupted, and those blocked (not the cancelled, "
        "nor those stopped by their budget: those were stopped on purpose)",
    )
    batch_scope(p, "with --failed, the tasks")
    p.set_defaults(func=commands.cmd_retry)

    p = command(
        "cleanup",
        "remove finished worker containers",
        "Remove the worker containers of finished tasks, and those kept by retry. A container whose work was "
        "neither pushed nor bundled is kept unless --force. Results, logs and branches are never removed.",
    )
    p.add_argument(
        "--volume",
        default=environment.VOLUME.get(env),
        help=f"the shared volume whose workers to remove (default: ${environment.VOLUME.name}, else "
        f"{environment.VOLUME.default})",
    )
    p.add_argument(
        "--force", action="store_true", help="remove also the containers whose work was neither pushed nor bundled"
    )
    p.set_defaults(func=commands.cmd_cleanup)

    p = command(
        "merge",
        "merge task branches into an integration branch",
        "In the manager's clone: fetch the tasks' branches and merge them one by one (in id order) into "
        "an integration branch, starting from its last state, else from origin's. On a conflict it stops, "
        "undoes that merge and reports the task and the files. The working tree is not touched; nothing is "
        "force-pushed or deleted. --all takes the tasks that succeeded.",
    )
    p.add_argument("ids", nargs="*", metavar="ID", help="tasks to merge, in this order")
    p.add_argument("--all", action="store_true", help="every task of the batch that succeeded with a pushed branch")
    batch_scope(p, "with --all, the tasks")
    p.add_argument(
        "--into",
        metavar="BRANCH",
        help=f"the integration branch (default: the branch prefix + {merge.INTEGRATION_BRANCH}, "
        f"{environment.BRANCH_PREFIX.default}{merge.INTEGRATION_BRANCH})",
    )
    p.add_argument("--push", action="store_true", help="push the integration branch to origin (never forced)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--repo-dir",
        default=str(Path(environment.WORKSPACE.require(env)) / "repo"),
        help="the manager's clone (default: /workspace/repo)",
    )
    p.add_argument(
        "--branch-prefix",
        default=environment.BRANCH_PREFIX.get(env),
        help=argparse.SUPPRESS,
    )
    p.set_defaults(func=orch_git.cmd_merge)

    p = command(
        "push",
        "hand back a branch of your clone: the integration branch, or one under the prefix",
        "Push a branch of the manager's clone (a merge you made, a conflict you resolved) to origin, as a "
        "fast-forward of what origin has: the integration branch, or a branch under the branch prefix, and nothing "
        "else. With a control plane, it takes the branch as a bundle and pushes it with the credentials it holds.",
    )
    p.add_argument("branch", metavar="BRANCH")
    p.add_argument("--bundle", help=argparse.SUPPRESS)  # what the manager's orch hands its control plane
    p.add_argument(
        "--repo-dir",
        default=str(Path(environment.WORKSPACE.require(env)) / "repo"),
        help="the clone to push from (default: /workspace/repo)",
    )
    p.add_argument("--branch-prefix", default=environment.BRANCH_PREFIX.get(env), help=argparse.SUPPRESS)
    p.set_defaults(func=orch_git.cmd_push)

    p = command(
        "dashboard",
        "where the board is: the batch in a browser",
        "Print the address of the board, which the control plane serves on the host's loopback (run.py "
        "--dashboard-port). Its login link holds its secret, the person's alone: run.py prints it, and so does "
        "`orch dashboard --login` run on the host (`docker exec NAME-control orch dashboard --login`); the manager "
        "may not ask for it.",
    )
    p.add_argument("--login", action="store_true", help="print the login link, with the board's secret")
    p.set_defaults(func=commands.cmd_dashboard)

    p = command(
        "dispatch",
        "run the dispatcher in the foreground",
        "Run the dispatcher here instead of in the background (orch start does that). It exits when no "
        "task is queued or running.",
    )
    p.set_defaults(func=commands.cmd_dispatch)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    env = os.environ  # read here, and nowhere below
    control = environment.CONTROL.get(env)
    if control:
        # In a manager with a control plane: the control plane does the work (control/channel.py).
        from .control.channel_client import client_main

        return client_main("orch", list(sys.argv[1:] if argv is None else argv), Path(control))
    args = build_parser(env).parse_args(argv)
    os.umask(OrchestrationDir.UMASK)

    def work() -> int:
        ctx = Context.build(
            env, engine=args.engine, volume=getattr(args, "volume", None), orchestration_dir=args.orchestration_dir
        )
        return int(args.func(ctx, args))

    return run_command(f"orch {args.command}", work, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
