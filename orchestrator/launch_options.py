"""run.py's command line: its options, and the settings they become (environment.MANAGER_SETTINGS)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence

from . import egress_choice, environment, rehearsal
from .cli import (
    HelpFormatter,
    add_api_option,
    add_git_access_options,
    add_limit_options,
    add_placement_options,
    check_branch_prefix,
)
from .errors import InvalidInput
from .git import host_config
from .limits import WorkerLimits
from .secrets import DEFAULT_TOKEN_FILE
from .tasks import check_budget

DEFAULT_NAME = "claude-manager"


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    """The command line, its defaults from ``env``."""
    parser = argparse.ArgumentParser(
        formatter_class=HelpFormatter,
        prog="run.py",
        usage="%(prog)s [options] [-- COMMAND...]",
        description="Start the manager container: Claude Code as the Smart Manager, with the Docker socket "
        "and the shared volume, able to spawn worker containers. Given a command after `--`, the manager "
        "container runs it instead of the interactive agent.",
    )
    parser.add_argument("--repo", metavar="URL", help="git repository to clone in the manager and the workers")
    parser.add_argument(
        "--no-repo",
        action="store_true",
        help="start a manager without a repository (its workers would have nothing to clone)",
    )
    parser.add_argument(
        "--branch",
        default=environment.REPO_BRANCH.default,
        help=f"branch to clone (default: {environment.REPO_BRANCH.default})",
    )
    parser.add_argument(
        "--token",
        metavar="FILE",
        default=DEFAULT_TOKEN_FILE,
        help=f"file holding the Claude token, or an API key (default: {DEFAULT_TOKEN_FILE})",
    )
    add_api_option(parser, env)
    add_git_access_options(parser, env)
    parser.add_argument(
        "--model",
        default=environment.ANTHROPIC_MODEL.default,
        help=f"model for the manager and the workers (default: {environment.ANTHROPIC_MODEL.default})",
    )
    add_limit_options(parser, env)
    parser.add_argument(
        "--budget-usd",
        type=float,
        metavar="USD",
        default=environment.BUDGET_USD.get(env),
        help="what the whole orchestration (the manager and every worker) may spend on the API, as the control "
        "plane's relay measures it; once spent, no request goes upstream and no new task starts "
        f"(default: ${environment.BUDGET_USD.name}, else no limit)",
    )
    parser.add_argument(
        "--api-in-flight",
        metavar="N",
        default=environment.API_IN_FLIGHT.get(env),
        help="at most N requests of the whole orchestration in flight to the API at once, through the control "
        "plane's relay; a rate limit (429, 529) lowers it for a while and holds the requests back for the pause the "
        f"API asks for (default: ${environment.API_IN_FLIGHT.name}, else {environment.API_IN_FLIGHT.default})",
    )
    parser.add_argument(
        "--egress",
        metavar="POLICY",
        default=environment.EGRESS.get(env),
        help="what the workers' agents may reach, through the control plane's egress proxy (their only way out): "
        "none, default (the worker type's egress-allow.txt), open (any public address) or a policy FILE; orch start "
        f"and orch submit may name another for a batch or a task (default: ${environment.EGRESS.name}, else default)",
    )
    parser.add_argument(
        "--allow-host",
        metavar="HOST[:PORT]",
        action="append",
        help="a host (name, *.DOMAIN or address; ports 80 and 443 unless given) added to the egress policy; "
        f"repeatable (default: ${environment.ALLOW_HOSTS.name}, separated by spaces)",
    )
    parser.add_argument(
        "--stop-timeout",
        metavar="SECONDS",
        default=environment.STOP_TIMEOUT.get(env),
        help="seconds a stopped worker gets to hand its work back before Docker kills it (default: "
        f"${environment.STOP_TIMEOUT.name}, else {environment.STOP_TIMEOUT.default})",
    )
    parser.add_argument(
        "--no-login-check",
        action="store_true",
        help="start without asking the API first whether it accepts the token",
    )
    parser.add_argument(
        "--manager-docker-socket",
        action="store_true",
        help="the original layout: no control plane; the manager gets the Docker socket and the credentials, "
        "which makes it (and whoever steers its Claude Code) root on this host",
    )
    parser.add_argument("--build", action="store_true", help="rebuild the images even if they exist")
    parser.add_argument(
        "--claude-code-version",
        metavar="X.Y.Z",
        help="build the images with this Claude Code release from npm (default: the one "
        "orchestrator/Dockerfile pins); with --build to replace images that exist",
    )
    parser.add_argument(
        "--flutter-version",
        metavar="X.Y.Z",
        help="build the worker image with this Flutter SDK release, or 'none' for an image without the SDK "
        "(machines that cannot download it, CI); with --build to replace an image that exists (default: the one "
        "flutter/Dockerfile pins)",
    )
    parser.add_argument(
        "--ca-cert",
        metavar="FILE",
        action="append",
        help=f"extra CA certificate (PEM) baked into the images; repeatable "
        f"(default: the files in ${environment.CA_CERTS.name}, separated by '{os.pathsep}')",
    )
    parser.add_argument("--name", default=DEFAULT_NAME, help=f"manager container name (default: {DEFAULT_NAME})")
    parser.add_argument(
        "--workspace-volume",
        metavar="NAME",
        help="the volume of the manager's own clone, kept when the container goes (default: NAME-workspace, "
        f"{DEFAULT_NAME}-workspace)",
    )
    parser.add_argument(
        "--dashboard-port",
        metavar="PORT",
        default=environment.DASHBOARD_PORT.get(env),
        help="the port of the board (the batch in a browser) on this host's loopback, 127.0.0.1:PORT; 'auto' for "
        "a free one, 'off' for no board; run.py prints its login link (default: "
        f"${environment.DASHBOARD_PORT.name}, else auto)",
    )
    add_placement_options(parser, env)
    rehearsal.add_options(parser)
    return parser


def split_command(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    argv = list(argv)
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1 :]
    return argv, []


def manager_settings(args: argparse.Namespace, env: Mapping[str, str]) -> dict[str, str]:
    """What the manager is told, and tells every worker it starts (environment.MANAGER_SETTINGS)."""
    limits = WorkerLimits.parse(args.memory, args.cpus, args.pids_limit, args.disk)
    hosts = args.allow_host if args.allow_host is not None else (environment.ALLOW_HOSTS.get(env) or "").split()
    egress = egress_choice.to_environment(egress_choice.from_options(args.egress, hosts))
    values = {
        environment.REPO_URL: args.repo,
        environment.REPO_BRANCH: args.branch,
        environment.ANTHROPIC_MODEL: args.model,
        environment.ANTHROPIC_BASE_URL: args.api_url,
        # The person's own git identity, unless the environment names another.
        environment.GIT_USER_NAME: env.get(environment.GIT_USER_NAME.name) or host_config("user.name"),
        environment.GIT_USER_EMAIL: env.get(environment.GIT_USER_EMAIL.name) or host_config("user.email"),
        environment.GIT_TOKEN_USER: env.get(environment.GIT_TOKEN_USER.name),
        environment.BRANCH_PREFIX: check_branch_prefix(args.branch_prefix),
        environment.VOLUME: args.volume,
        environment.NETWORK: args.network,
        environment.IMAGE_PREFIX: args.image_prefix,
        environment.ENGINE: args.engine,
        environment.WORKER_MEMORY: limits.memory,
        environment.WORKER_CPUS: limits.cpus,
        environment.WORKER_PIDS: str(limits.pids),
        environment.WORKER_DISK: limits.disk,
        environment.STORAGE_QUOTA: None,  # found out once the engine is reached (main)
        environment.STOP_TIMEOUT: str(
            environment.STOP_TIMEOUT.whole_number({environment.STOP_TIMEOUT.name: args.stop_timeout or ""})
        ),
        environment.PUSH_RETRY_SECONDS: env.get(environment.PUSH_RETRY_SECONDS.name),
        # The choice holds in the manager and its control plane too (orch start checks a new batch).
        environment.LOGIN_CHECK: "no" if args.no_login_check else None,
        environment.BUDGET_USD: f"{check_budget(args.budget_usd, '--budget-usd')}"
        if args.budget_usd is not None
        else None,
        environment.API_IN_FLIGHT: str(
            environment.API_IN_FLIGHT.whole_number({environment.API_IN_FLIGHT.name: args.api_in_flight or ""})
        ),
        environment.EGRESS: egress[0],
        environment.ALLOW_HOSTS: egress[1],
        # A rehearsal's (rehearsal.settings sets them).
        environment.REHEARSAL: None,
        environment.REHEARSAL_SOURCE: None,
        environment.FIRST_REQUEST: None,
    }
    assert set(values) == set(environment.MANAGER_SETTINGS)
    return {var.name: value for var, value in values.items() if value}


def check_repo_options(args: argparse.Namespace) -> None:
    if not args.repo and not args.no_repo:
        raise InvalidInput(
            "no repository: pass --repo URL (every worker clones it and pushes its work there), --no-repo for a "
            "manager without workers, or --rehearsal to try the whole system on a sample app without a token"
        )
    if args.repo and args.no_repo:
        raise InvalidInput("give --repo URL or --no-repo, not both")
