"""bin/run.py: build the images when needed and start the manager container (host side)."""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import stat
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from . import config, environment, images, rehearsal
from .cli import (
    run_command,
)
from .config import CONTAINER_ORCHESTRATION_DIR, CONTAINER_WORKSPACE
from .docker import (
    FileToCopy,
    NameConflict,
    check_daemon,
    container_label,
    docker,
    env_pass,
    flag,
    image_exists,
    inspect_container,
    labels,
    remove_container,
    storage_quota_supported,
)
from .errors import InvalidInput, UserError
from .launch_control import (
    Orchestration,
    board_link,
    control_argv,
    manager_mounts,
    remove_ended,
    socket_mount,
    start_control,
    stop_control,
)
from .launch_control import prepare as prepare_orchestration
from .launch_options import DEFAULT_NAME, build_parser, check_repo_options, manager_settings, split_command
from .login import check_login
from .secrets import Secrets


def docker_socket(env: Mapping[str, str]) -> Path:
    """The engine's socket on this host, to mount into the manager."""
    host = env.get("DOCKER_HOST", "")
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
    workspace_volume: str
    network: str | None
    socket: Path
    socket_gid: int
    settings: Mapping[str, str]  # environment.MANAGER_SETTINGS, by name
    secrets: Secrets
    command: tuple[str, ...]
    tty: bool
    # The orchestration's control plane, which holds the socket and the credentials; None: the
    # original layout (--manager-docker-socket), where the manager holds them.
    control: Orchestration | None = None
    tasks_folder: str = ""  # the engine's folder of the shared volume's tasks (the manager's to write)
    control_files: tuple[FileToCopy, ...] = ()  # copied into the control plane's home (a rehearsal's script)

    def environment(self) -> dict[str, str]:
        """The manager's environment: settings only (the secrets are copied in as files).
        Values travel through docker's environment, not argv."""
        return {name: value for name, value in self.settings.items() if value}

    def holdings(self) -> list[str]:
        """What the manager is given: nothing it could leak, with a control plane; the socket
        (its folder, and its group so that the non-root user may use it), the volume and its
        clone otherwise. The clone outlives the container: a new manager carries on in it."""
        if self.control is not None:
            return manager_mounts(self.control, self.tasks_folder)
        mount, docker_host = socket_mount(self.socket)
        return [
            *mount,
            # On the command line: the docker client running this must not take it for its own.
            "--env", f"DOCKER_HOST={docker_host}",
            "--group-add", str(self.socket_gid),
            "--volume", f"{self.volume}:{CONTAINER_ORCHESTRATION_DIR}",
            "--volume", f"{self.workspace_volume}:{CONTAINER_WORKSPACE}",
            *flag("--network", self.network),
        ]  # fmt: skip

    def create_argv(self) -> list[str]:
        return [
            "create",
            "--name", self.name,
            # Not --rm: the engine would remove it when it restarts, even with live-restore;
            # run.py removes it once it has ended.
            "--interactive",
            *(["--tty"] if self.tty else []),
            *labels({config.LABEL_ROLE: "manager", config.LABEL_VOLUME: self.volume}),
            *self.holdings(),
            *[arg for name in self.environment() for arg in env_pass(name)],
            self.image,
            *(["--", *self.command] if self.command else []),
        ]  # fmt: skip


def ensure_images(args: argparse.Namespace, ca_certs: Sequence[Path]) -> str:
    manager = f"{args.image_prefix}{config.MANAGER_IMAGE}"
    worker = config.worker_image(config.DEFAULT_WORKER_TYPE, args.image_prefix)
    if args.build or not image_exists(manager):
        print(f"run.py: building {manager} (this takes a few minutes the first time)", flush=True)
        build_args = {"CLAUDE_CODE_VERSION": args.claude_code_version} if args.claude_code_version else {}
        images.build_manager_image(manager, ca_certs, build_args=build_args)
    elif args.ca_cert or args.claude_code_version:
        print("run.py: note: --ca-cert and --claude-code-version apply to image builds; add --build to rebuild",
              file=sys.stderr)  # fmt: skip
    if args.build or not image_exists(worker):
        print(f"run.py: building {worker}", flush=True)
        sdk = {"FLUTTER_VERSION": args.flutter_version} if args.flutter_version else {}
        images.build_worker_image(worker, config.DEFAULT_WORKER_TYPE, manager, build_args=sdk)
    elif args.flutter_version:
        print("run.py: note: --flutter-version applies to image builds; add --build to rebuild", file=sys.stderr)
    return manager


def start_manager(spec: ManagerSpec) -> int:
    """Start the orchestration and attach to its manager; its exit code. With a control plane,
    that one starts first (holding the socket and the secrets) and ends with the manager: a new
    run.py takes over a batch left under way."""
    if spec.control is None:
        docker("volume", "create", spec.volume, timeout=60)
        docker("volume", "create", spec.workspace_volume, timeout=60)
        return run_manager(spec)
    tasks_folder = prepare_orchestration(spec.control)
    remove_ended(spec.name, "manager")
    control = control_argv(spec.control, spec.image, spec.socket, spec.socket_gid, spec.environment())
    start_control(spec.control, control, spec.environment(), spec.secrets, spec.control_files)
    if spec.control.dashboard_port is not None:
        announce_board(spec.control)
    try:
        return run_manager(replace(spec, tasks_folder=tasks_folder, secrets=Secrets()))
    finally:
        # A manager that goes on without run.py (the engine restarted under it with live-restore,
        # `docker restart`) keeps its control plane; one that has ended takes it along.
        info = inspect_container_quietly(spec.name)
        if info is not None and (info.get("State") or {}).get("Running"):
            print(f"run.py: {spec.control.control} keeps serving it", file=sys.stderr)
        else:
            stop_control(spec.control)


def announce_board(o: Orchestration) -> None:
    """The board's login link, on the person's terminal (never in a log: it holds the secret)."""
    try:
        link = board_link(o)
    except UserError as exc:
        print(f"run.py: no board: {exc}", file=sys.stderr)
        return
    # On standard error, with run.py's other words to the person: standard output is the manager
    # command's (`run.py -- CMD` is scripted).
    again = f"`docker exec {o.control} orch dashboard --login` prints it again"
    print(f"run.py: the board: {link}\n  (the link holds its secret: keep it to yourself; {again})", file=sys.stderr,
          flush=True)  # fmt: skip


def dashboard_port(given: str | None) -> int | None:
    """--dashboard-port: a port of the host's loopback, "auto" (a free one, found now), or "off"."""
    value = (given or "auto").strip().lower()
    if value == "off":
        return None
    if value == "auto":
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            return int(probe.getsockname()[1])
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise InvalidInput(f"--dashboard-port must be a port (1-65535), auto or off, not {given!r}")
    return int(value)


def run_manager(spec: ManagerSpec) -> int:
    replace_ended_manager(spec.name)
    try:
        docker(*spec.create_argv(), env=spec.environment(), timeout=120)
    except NameConflict:
        raise UserError(
            f"a container named {spec.name} exists already; attach with `docker attach {spec.name}`, "
            f"or pick another --name"
        ) from None
    try:
        spec.secrets.give(spec.name, config.CONTAINER_HOME, uid=config.CONTAINER_UID, gid=config.CONTAINER_GID)
    except BaseException:
        remove_container(spec.name)
        raise
    # Attached, for as long as the manager runs; its exit code becomes ours.
    proc = docker("start", "--attach", "--interactive", spec.name, timeout=None, capture=False, check=False)
    info = inspect_container_quietly(spec.name)
    if info is not None and (info.get("State") or {}).get("Running"):
        # The engine went away and came back with live-restore: the manager goes on without us.
        print(f"run.py: {spec.name} is still running; attach with `docker attach {spec.name}`", file=sys.stderr)
        return proc.returncode
    if info is not None:
        remove_container(spec.name)  # its work is on the volumes
    return proc.returncode


def inspect_container_quietly(name: str) -> dict[str, Any] | None:
    """The container's inspect document; None when it is gone, or the engine is."""
    try:
        return inspect_container(name)
    except UserError:
        return None


def replace_ended_manager(name: str) -> None:
    """A manager container of this name that has ended (the engine stopped under it) is removed,
    so that a new one can start; its clone is on the workspace volume. A running one, or a
    container that is not a manager, is left to the person."""
    info = inspect_container_quietly(name)
    if info is None or (info.get("State") or {}).get("Running"):
        return
    if container_label(info, config.LABEL_ROLE) == "manager":
        remove_container(name)


LOOPBACK_NAMES = ("localhost", "ip6-localhost")


def check_api_reachable(api_url: str | None, network: str | None) -> None:
    """An API on this host's loopback (a gateway run here) is out of the containers' reach unless
    they share the host's network: say so now, and what to pass, rather than let the manager's
    Claude Code retry "connection refused" for minutes."""
    host = urlparse(api_url or "").hostname or ""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host in LOOPBACK_NAMES
    if not loopback or network == "host":
        return
    gateway = bridge_gateway(network)
    where = f"the host is {gateway} there (the gateway must listen on it)" if gateway else "use an address of this host"
    named = network or "bridge (Docker's default)"
    raise InvalidInput(
        f"--api-url {api_url} is on this host's loopback, which containers on the network {named} cannot reach: "
        f"pass --network host, or an address of this host they can reach ({where})"
    )


def bridge_gateway(network: str | None) -> str | None:
    """The host's address on a Docker network, as its containers see it."""
    proc = docker("network", "inspect", network or "bridge", "--format", "{{range .IPAM.Config}}{{.Gateway}} {{end}}",
                  check=False, timeout=30)  # fmt: skip
    found = (proc.stdout or b"").decode().split()
    return found[0] if proc.returncode == 0 and found else None


def ca_cert_paths(args: argparse.Namespace, env: Mapping[str, str]) -> list[Path]:
    given = list(args.ca_cert or [])
    if not given and environment.CA_CERTS.get(env):
        given = [p for p in environment.CA_CERTS.require(env).split(os.pathsep) if p]
    return [images.read_ca_cert(p) for p in given]


def main(argv: Sequence[str] | None = None) -> int:
    env = os.environ  # read here, and nowhere below
    options, command = split_command(sys.argv[1:] if argv is None else argv)
    args = build_parser(env).parse_args(options)
    if args.rehearsal:
        args = rehearsal.own_names(args, env, DEFAULT_NAME)

    def work() -> int:
        if args.engine == config.ENGINE_SWARM and args.network == "host" and not args.manager_docker_socket:
            raise InvalidInput(
                "--engine swarm with --network host: the control plane joins its jobs' internal overlay network, "
                "which a container on the host's network cannot; give another --network, or none"
            )
        rehearsing = rehearsal.plan(args)  # a rehearsal: no token, origin the control plane's
        if rehearsing is None:
            check_repo_options(args)
            secrets = Secrets.read(
                token_file=args.token,
                ssh_key=args.ssh_key,
                known_hosts=args.known_hosts,
                git_token_file=args.git_token,
                env=env,
            )
            settings = manager_settings(args, env)
        else:
            secrets = rehearsal.secrets(args, env)
            settings = rehearsal.settings(rehearsing, manager_settings(args, env))
        if rehearsing is None and not args.no_login_check and secrets.claude is not None:
            check_login(secrets.claude, args.api_url)
        ca_certs = ca_cert_paths(args, env)
        socket = docker_socket(env)
        check_daemon()
        if rehearsing is None:
            check_api_reachable(args.api_url, args.network)
        settings[environment.STORAGE_QUOTA.name] = "yes" if storage_quota_supported() else "no"
        image = ensure_images(args, ca_certs)
        spec = ManagerSpec(
            name=args.name,
            image=image,
            volume=args.volume,
            workspace_volume=args.workspace_volume or f"{args.name}-workspace",
            network=args.network,
            socket=socket,
            socket_gid=socket.stat().st_gid,
            settings=settings,
            secrets=secrets,
            command=tuple(command),
            tty=sys.stdin.isatty(),
            control=None if args.manager_docker_socket else Orchestration(
                args.name, args.volume, args.workspace_volume or f"{args.name}-workspace", args.network,
                dashboard_port(args.dashboard_port),
            ),
            control_files=tuple(rehearsing.files) if rehearsing is not None else (),
        )  # fmt: skip
        return start_manager(spec)

    return run_command("run.py", work, debug=args.debug)
