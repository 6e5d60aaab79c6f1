"""bin/run.py: build the images when needed and start the manager container (host side)."""

from __future__ import annotations

import argparse
import os
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from . import config, images
from .cli import (
    HelpFormatter,
    add_git_access_options,
    add_placement_options,
    check_branch_prefix,
    run_command,
)
from .config import CONTAINER_ORCHESTRATION_DIR
from .docker import (
    NameConflict,
    check_daemon,
    docker,
    env_pass,
    flag,
    image_exists,
    labels,
    remove_container,
)
from .errors import UserError
from .git import DEFAULT_USER_EMAIL, DEFAULT_USER_NAME, host_config
from .secrets import DEFAULT_TOKEN_FILE, TOKEN_ENV, GitAccess, read_secret_file

DEFAULT_NAME = "claude-manager"
ENV_CA_CERTS = "ORCHESTRATOR_CA_CERTS"
SOCKET_IN_CONTAINER = "/var/run/docker.sock"


def docker_socket() -> Path:
    """The engine's socket on this host, to mount into the manager."""
    host = os.environ.get("DOCKER_HOST", "")
    if host and not host.startswith("unix://"):
        raise UserError(f"DOCKER_HOST is {host}: the manager needs a local Docker socket (unix://) to mount")
    path = Path(urlparse(host).path if host else "/var/run/docker.sock")
    try:
        if not stat.S_ISSOCK(path.stat().st_mode):
            raise UserError(f"{path} is not a socket")
    except FileNotFoundError:
        raise UserError(f"the Docker socket {path} does not exist") from None
    return path


@dataclass(frozen=True)
class ManagerSpec:
    name: str
    image: str
    volume: str
    network: str | None
    image_prefix: str
    socket: Path
    socket_gid: int
    repo_url: str | None
    branch: str
    model: str
    git_user_name: str
    git_user_email: str
    token: str
    access: GitAccess
    branch_prefix: str
    command: tuple[str, ...]
    tty: bool

    def environment(self) -> dict[str, str]:
        """The manager's environment; values travel through docker's environment, not argv."""
        env = {
            "REPO_URL": self.repo_url or "",
            "REPO_BRANCH": self.branch,
            TOKEN_ENV: self.token,
            "ANTHROPIC_MODEL": self.model,
            "GIT_USER_NAME": self.git_user_name,
            "GIT_USER_EMAIL": self.git_user_email,
            config.ENV_VOLUME: self.volume,
            config.ENV_NETWORK: self.network or "",
            config.ENV_IMAGE_PREFIX: self.image_prefix,
            config.ENV_BRANCH_PREFIX: self.branch_prefix,
            **self.access.environment(),
        }
        return {name: value for name, value in env.items() if value}

    def create_argv(self) -> list[str]:
        return [
            "create",
            "--name", self.name,
            "--rm",
            "--interactive",
            *(["--tty"] if self.tty else []),
            *labels({config.LABEL_ROLE: "manager"}),
            "--volume", f"{self.socket}:{SOCKET_IN_CONTAINER}",
            # The socket's group, so that the non-root user may use it.
            "--group-add", str(self.socket_gid),
            "--volume", f"{self.volume}:{CONTAINER_ORCHESTRATION_DIR}",
            *flag("--network", self.network),
            *[arg for name in self.environment() for arg in env_pass(name)],
            self.image,
            *(["--", *self.command] if self.command else []),
        ]  # fmt: skip


def ensure_images(args: argparse.Namespace, ca_certs: Sequence[Path]) -> str:
    manager = f"{args.image_prefix}{config.MANAGER_IMAGE}"
    worker = config.worker_image(config.DEFAULT_WORKER_TYPE, args.image_prefix)
    if args.build or not image_exists(manager):
        print(f"run.py: building {manager} (this takes a few minutes the first time)", flush=True)
        images.build_manager_image(manager, ca_certs)
    elif args.ca_cert:
        print("run.py: note: --ca-cert applies to image builds; add --build to rebuild with it", file=sys.stderr)
    if args.build or not image_exists(worker):
        print(f"run.py: building {worker}", flush=True)
        images.build_worker_image(worker, config.DEFAULT_WORKER_TYPE, manager)
    return manager


def start_manager(spec: ManagerSpec) -> int:
    docker("volume", "create", spec.volume, timeout=60)
    try:
        docker(*spec.create_argv(), env=spec.environment(), timeout=120)
    except NameConflict:
        raise UserError(
            f"a container named {spec.name} exists already; attach with `docker attach {spec.name}`, "
            f"or pick another --name"
        ) from None
    try:
        spec.access.give(spec.name)
    except BaseException:
        remove_container(spec.name)
        raise
    # Attached, for as long as the manager runs; its exit code becomes ours.
    proc = docker("start", "--attach", "--interactive", spec.name, timeout=None, capture=False, check=False)
    return proc.returncode


def ca_cert_paths(args: argparse.Namespace) -> list[Path]:
    given = list(args.ca_cert or [])
    if not given and os.environ.get(ENV_CA_CERTS):
        given = [p for p in os.environ[ENV_CA_CERTS].split(os.pathsep) if p]
    return [images.read_ca_cert(p) for p in given]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        formatter_class=HelpFormatter,
        prog="run.py",
        usage="%(prog)s [options] [-- COMMAND...]",
        description="Start the manager container: Claude Code as the Smart Manager, with the Docker socket "
        "and the shared volume, able to spawn worker containers. Given a command after `--`, the manager "
        "container runs it instead of the interactive agent.",
    )
    parser.add_argument("--repo", metavar="URL", help="git repository to clone in the manager and the workers")
    parser.add_argument("--branch", default=config.DEFAULT_BRANCH, help="branch to clone (default: main)")
    parser.add_argument(
        "--token",
        metavar="FILE",
        default=DEFAULT_TOKEN_FILE,
        help=f"file holding the Claude token (default: {DEFAULT_TOKEN_FILE})",
    )
    add_git_access_options(parser)
    parser.add_argument(
        "--model",
        default=config.DEFAULT_MODEL,
        help=f"model for the manager and the workers (default: {config.DEFAULT_MODEL})",
    )
    parser.add_argument("--build", action="store_true", help="rebuild the images even if they exist")
    parser.add_argument(
        "--ca-cert",
        metavar="FILE",
        action="append",
        help=f"extra CA certificate (PEM) baked into the images; repeatable "
        f"(default: the files in ${ENV_CA_CERTS}, separated by '{os.pathsep}')",
    )
    parser.add_argument("--name", default=DEFAULT_NAME, help=f"manager container name (default: {DEFAULT_NAME})")
    add_placement_options(parser)
    return parser


def split_command(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    argv = list(argv)
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1 :]
    return argv, []


def main(argv: Sequence[str] | None = None) -> int:
    options, command = split_command(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(options)

    def work() -> int:
        token = read_secret_file(args.token, "token file")
        access = GitAccess.read(
            ssh_key=args.ssh_key, known_hosts=args.known_hosts, token_file=args.git_token, env=os.environ
        )
        branch_prefix = check_branch_prefix(args.branch_prefix)
        ca_certs = ca_cert_paths(args)
        socket = docker_socket()
        check_daemon()
        image = ensure_images(args, ca_certs)
        spec = ManagerSpec(
            name=args.name,
            image=image,
            volume=args.volume,
            network=args.network,
            image_prefix=args.image_prefix,
            socket=socket,
            socket_gid=socket.stat().st_gid,
            repo_url=args.repo,
            branch=args.branch,
            model=args.model,
            git_user_name=os.environ.get("GIT_USER_NAME") or host_config("user.name") or DEFAULT_USER_NAME,
            git_user_email=os.environ.get("GIT_USER_EMAIL") or host_config("user.email") or DEFAULT_USER_EMAIL,
            token=token,
            access=access,
            branch_prefix=branch_prefix,
            command=tuple(command),
            tty=sys.stdin.isatty(),
        )
        return start_manager(spec)

    return run_command("run.py", work, debug=args.debug)
