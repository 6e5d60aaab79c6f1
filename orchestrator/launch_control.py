"""run.py's side of the control plane: the containers and volumes of an orchestration where the
manager holds nothing (the default), started in order, and ended together.

- ``NAME-control``: the control plane (control/plane.py). It gets the Docker socket, the
  credentials (copied into its home, as files), the shared volume, the mirror of origin, and the
  folder it serves the manager from (``NAME-run``). It reaches origin and the API on ``--network``.
- ``NAME``: the manager. No socket, no credential. The shared volume read-only, but for its
  ``tasks`` folder (the original design writes task files by hand); the mirror read-only (its
  clone borrows from it); ``NAME-run`` read-only (the sockets it talks through); its own clone.
  No network at all (``--network none``): what it asks of the control plane goes through the
  sockets in ``NAME-run``, its Claude Code's API requests included (control/door.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import config, environment
from .config import CONTAINER_ORCHESTRATION_DIR, CONTAINER_WORKSPACE
from .control.endpoints import ENDPOINTS
from .docker import FileToCopy, NameConflict, copy_files, docker, env_pass, flag, labels, remove_container, text
from .errors import UserError
from .secrets import Secrets

CONTROL_RUN_DIR = "/run/orchestrator"
CONTROL_DOORS_DIR = "/run/orchestrator-workers"  # control/plane.py's DOORS_DIR
CONTROL_KEYS_DIR = "/run/orchestrator-keys"
CONTROL_WORKSPACE = "/workspace"
MIRROR_DIR = "/mirror"
MANAGER_WORKSPACE_IN_CONTROL = "/manager-workspace"
READY_TIMEOUT = 180.0  # the first fetch of a large repository into the mirror takes its time
SOCKET_FOLDER_IN_CONTAINER = "/run/host-docker"


@dataclass(frozen=True)
class Orchestration:
    """The names of an orchestration's containers, volumes and network, from the manager's name."""

    name: str
    volume: str
    workspace_volume: str
    network: str | None  # where origin and the API are reached (None: Docker's default)
    dashboard_port: int | None = None  # the board's, on the host's loopback (None: no board)

    @property
    def control(self) -> str:
        return f"{self.name}-control"

    @property
    def mirror_volume(self) -> str:
        return f"{self.name}-mirror"

    # The doors and the ticket key are the shared volume's, not the manager's: the workers of a
    # manager that was removed are served by the control plane of the next one on the volume.
    @property
    def doors_volume(self) -> str:
        return f"{self.volume}-doors"

    @property
    def keys_volume(self) -> str:
        return f"{self.volume}-keys"

    @property
    def run_volume(self) -> str:
        return f"{self.name}-run"

    @property
    def control_workspace(self) -> str:
        return f"{self.name}-control-workspace"


def socket_mount(socket: Path) -> tuple[list[str], str]:
    """The engine socket's folder, when the container's user may pass through it; else the
    socket file itself (which a restarted engine's new socket does not replace). The options,
    and DOCKER_HOST inside."""
    folder = socket.parent
    if folder.stat().st_mode & 0o001:
        where = f"{SOCKET_FOLDER_IN_CONTAINER}/{socket.name}"
        return ["--volume", f"{folder}:{SOCKET_FOLDER_IN_CONTAINER}"], f"unix://{where}"
    where = f"{SOCKET_FOLDER_IN_CONTAINER}/docker.sock"
    return ["--volume", f"{socket}:{where}"], f"unix://{where}"


def control_argv(o: Orchestration, image: str, socket: Path, socket_gid: int, settings: Mapping[str, str]) -> list[str]:
    mount, docker_host = socket_mount(socket)
    return [
        "create", "--name", o.control,
        # A crash is not the end of the batch: the engine starts it again, and it carries on
        # (its state is on the volumes, its relay's port and ticket in its home).
        "--restart", "on-failure",
        *labels({config.LABEL_ROLE: "control", config.LABEL_VOLUME: o.volume}),
        *mount,
        # On the command line: the docker client running this must not take it for its own.
        "--env", f"DOCKER_HOST={docker_host}",
        "--env", f"{environment.MANAGER_WORKSPACE.name}={MANAGER_WORKSPACE_IN_CONTROL}",
        # Its workers mount the mirror read-only and clone from it (one fetch from origin per batch).
        "--env", f"{environment.MIRROR_VOLUME.name}={o.mirror_volume}",
        # And the folder of its doors for them, read-only: the relay and the git channel (no credential in a worker).
        "--env", f"{environment.DOORS_VOLUME.name}={o.doors_volume}",
        "--env", f"{environment.KEYS_DIR.name}={CONTROL_KEYS_DIR}",
        "--group-add", str(socket_gid),
        "--volume", f"{o.volume}:{CONTAINER_ORCHESTRATION_DIR}",
        "--volume", f"{o.mirror_volume}:{MIRROR_DIR}",
        "--volume", f"{o.run_volume}:{CONTROL_RUN_DIR}",
        "--volume", f"{o.doors_volume}:{CONTROL_DOORS_DIR}",
        "--volume", f"{o.keys_volume}:{CONTROL_KEYS_DIR}",
        "--volume", f"{o.control_workspace}:{CONTROL_WORKSPACE}",
        "--volume", f"{o.workspace_volume}:{MANAGER_WORKSPACE_IN_CONTROL}:ro",
        *flag("--network", o.network),
        # A swarm batch's control plane serves its jobs a name server on port 53, as its own user.
        *(["--sysctl", "net.ipv4.ip_unprivileged_port_start=53"]
          if settings.get(environment.ENGINE.name) == config.ENGINE_SWARM else []),
        *board_options(o),
        *[arg for name in settings for arg in env_pass(name)],
        "--entrypoint", "/usr/bin/tini", image,
        "--", "python3", "-P", "-m", "orchestrator.control.plane",
    ]  # fmt: skip


def board_options(o: Orchestration) -> list[str]:
    """The board's port, published on the host's loopback alone (on the host's network the control
    plane listens there itself: Docker publishes nothing there)."""
    if o.dashboard_port is None:
        return ["--env", f"{environment.CONTROL_NAME.name}={o.control}"]
    port = o.dashboard_port
    publish = [] if o.network == "host" else ["--publish", f"127.0.0.1:{port}:{port}"]
    return [
        "--env", f"{environment.CONTROL_NAME.name}={o.control}",
        "--env", f"{environment.DASHBOARD_PORT.name}={port}",
        *publish,
    ]  # fmt: skip


def board_link(o: Orchestration) -> str:
    """The board's login link, as the control plane's ``orch dashboard --login`` prints it (read
    through docker exec: it travels on no command line)."""
    proc = docker("exec", o.control, "orch", "dashboard", "--login", check=False, timeout=60)
    link = text(proc).strip()
    if proc.returncode or not link.startswith("http://127.0.0.1:"):
        said = (proc.stderr or b"").decode(errors="replace").strip()
        raise UserError(f"the control plane serves no board: {said or 'it said nothing'} (`docker logs {o.control}`)")
    return link


def manager_mounts(o: Orchestration, tasks_folder: str) -> list[str]:
    """The manager's view of the orchestration: nothing it could change but its tasks and clone."""
    return [
        "--volume", f"{o.volume}:{CONTAINER_ORCHESTRATION_DIR}:ro",
        "--mount", f"type=bind,source={tasks_folder},target={CONTAINER_ORCHESTRATION_DIR}/tasks",
        "--volume", f"{o.workspace_volume}:{CONTAINER_WORKSPACE}",
        "--volume", f"{o.mirror_volume}:{MIRROR_DIR}:ro",
        "--volume", f"{o.run_volume}:{CONTROL_RUN_DIR}:ro",
        # No network: nothing it runs reaches origin, the API, the host or anything else but
        # the control plane's sockets.
        "--network", "none",
        "--env", f"{environment.CONTROL.name}={CONTROL_RUN_DIR}",
        "--env", f"DOCKER_HOST=unix://{CONTROL_RUN_DIR}/docker.sock",
    ]  # fmt: skip


def prepare(o: Orchestration) -> str:
    """The volumes; the engine's folder of the shared volume's tasks."""
    for volume in (
        o.volume,
        o.workspace_volume,
        o.mirror_volume,
        o.run_volume,
        o.doors_volume,
        o.keys_volume,
        o.control_workspace,
    ):
        docker("volume", "create", volume, timeout=60)
    mountpoint = text(docker("volume", "inspect", "--format", "{{.Mountpoint}}", o.volume, timeout=30)).strip()
    if not mountpoint:
        raise UserError(f"the engine does not say where the volume {o.volume} is")
    return f"{mountpoint}/tasks"


def start_control(o: Orchestration, argv: list[str], settings: Mapping[str, str], secrets: Secrets,
                  files: Sequence[FileToCopy] = ()) -> None:  # fmt: skip
    """Create and start the control plane (its secrets, and ``files``, copied into its home), and
    wait until it serves the manager."""
    remove_ended(o.control, "control")
    try:
        docker(*argv, env=dict(settings), timeout=120)
    except NameConflict:
        raise UserError(
            f"{o.control} exists already: an orchestration named {o.name} runs (`docker attach {o.name}`), or "
            f"pick another --name"
        ) from None
    try:
        secrets.give(o.control, config.CONTAINER_HOME, uid=config.CONTAINER_UID, gid=config.CONTAINER_GID)
        if files:
            copy_files(o.control, config.CONTAINER_HOME, files, uid=config.CONTAINER_UID, gid=config.CONTAINER_GID)
        docker("start", o.control, timeout=120)
        wait_ready(o)
    except BaseException:
        stop_control(o)
        raise


def wait_ready(o: Orchestration) -> None:
    """Until the control plane has written where it serves; its last words when it ends instead."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        found = docker("exec", o.control, "test", "-e", f"{CONTROL_RUN_DIR}/{ENDPOINTS}", check=False, timeout=30)
        if found.returncode == 0:
            return
        state = docker("inspect", "--format", "{{json .State}}", o.control, check=False, timeout=30)
        if state.returncode == 0 and not json.loads(text(state) or "{}").get("Running"):
            said = text(docker("logs", "--tail", "5", o.control, check=False, timeout=30)).strip()
            said += (docker("logs", "--tail", "5", o.control, check=False, timeout=30).stderr or b"").decode().strip()
            raise UserError(f"the control plane ended as it started: {said or 'it said nothing'}")
        time.sleep(0.3)
    raise UserError(f"the control plane did not start within {READY_TIMEOUT:.0f} s (`docker logs {o.control}`)")


def stop_control(o: Orchestration) -> None:
    docker("stop", "--time", "30", o.control, check=False, timeout=90)
    remove_container(o.control)


def remove_ended(name: str, role: str) -> None:
    """A container of this name and role that has ended (the engine stopped under it) is removed."""
    found = docker("inspect", "--format", "{{json .}}", name, check=False, timeout=30)
    if found.returncode:
        return
    info = json.loads(text(found) or "{}")
    if (info.get("State") or {}).get("Running"):
        return
    if ((info.get("Config") or {}).get("Labels") or {}).get(config.LABEL_ROLE) == role:
        remove_container(name)
