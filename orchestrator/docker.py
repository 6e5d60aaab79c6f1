"""The one door to Docker: every docker CLI call of the project goes through ``docker()``."""

from __future__ import annotations

import io
import json
import logging
import os
import shlex
import subprocess
import tarfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import UserError

log = logging.getLogger("orchestrator.docker")

DEFAULT_TIMEOUT = 120.0


class DockerError(UserError):
    """A docker command failed; carries its argv, exit code and stderr."""

    def __init__(self, argv: Sequence[str], returncode: int | None, stderr: str, message: str = ""):
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr.strip()
        detail = self.stderr or f"exit code {returncode}"
        super().__init__(message or f"`{shlex.join(self.argv)}` failed: {detail}")

    @property
    def reason(self) -> str:
        """The daemon's own words, in one line (the full command line is for the logs)."""
        lines = [line.strip() for line in self.stderr.splitlines() if line.strip() and not line.startswith("See '")]
        last = next(
            (line for line in reversed(lines) if "Error" in line or "error" in line), lines[-1] if lines else ""
        )
        return last.removeprefix("docker: ").removeprefix("Error response from daemon: ") or str(self)

    @classmethod
    def from_process(cls, argv: Sequence[str], proc: subprocess.CompletedProcess[Any]) -> DockerError:
        stderr = proc.stderr if isinstance(proc.stderr, str) else (proc.stderr or b"").decode("utf-8", "replace")
        for sub in (NoSuchContainer, NoSuchImage, NoSuchVolume, NotRunning, NameConflict, DaemonUnreachable,
                    StorageQuotaRefused):  # fmt: skip
            if any(marker in stderr for marker in sub.markers):
                return sub(argv, proc.returncode, stderr)
        return cls(argv, proc.returncode, stderr)


class NoSuchContainer(DockerError):
    markers = ("No such container", "No such object")


class NoSuchImage(DockerError):
    markers = ("No such image", "pull access denied", "repository does not exist")


class NoSuchVolume(DockerError):
    markers = ("no such volume",)


class NotRunning(DockerError):
    """``docker exec`` into a container that exists but does not run."""

    markers = ("is not running",)


class NameConflict(DockerError):
    markers = ("Conflict. The container name",)


class StorageQuotaRefused(DockerError):
    """``--storage-opt size=`` on a storage driver that cannot bound a container (overlay2 on a
    file system without project quotas)."""

    markers = ("--storage-opt is supported only", "Storage Opt is not supported", "storage-opt is not supported")


class DaemonUnreachable(DockerError):
    markers = ("Cannot connect to the Docker daemon", "permission denied while trying to connect")


class DockerMissing(UserError):
    pass


def docker(
    *args: str,
    timeout: float | None = DEFAULT_TIMEOUT,
    check: bool = True,
    capture: bool = True,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``docker ARGS``. Output is captured as bytes; with ``capture`` false it goes to
    the terminal (a build's progress, an attached container), stderr included.

    ``env`` adds variables to the child's environment: the way to hand a secret to
    ``docker run -e NAME`` without putting its value on the command line.
    """
    argv = ["docker", *args]
    log.debug("run %s", shlex.join(argv))
    child_env = {**os.environ, **env} if env else None
    try:
        proc = subprocess.run(
            argv,
            input=input,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            timeout=timeout,
            env=child_env,
            check=False,
        )
    except FileNotFoundError:
        raise DockerMissing("the docker command was not found; install Docker and put `docker` on PATH") from None
    except subprocess.TimeoutExpired as exc:
        raise DockerError(argv, None, "", f"`{shlex.join(argv)}` did not finish within {timeout:.0f} s") from exc
    if check and proc.returncode:
        raise DockerError.from_process(argv, proc)
    return proc


def docker_stream(*args: str) -> subprocess.Popen[str]:
    """Start ``docker ARGS`` that runs until stopped (``docker events``), its stdout a pipe of
    lines. The one exception to ``docker()``: a stream has no timeout; its reader stops it."""
    argv = ["docker", *args]
    log.debug("stream %s", shlex.join(argv))
    try:
        return subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True
        )
    except FileNotFoundError:
        raise DockerMissing("the docker command was not found; install Docker and put `docker` on PATH") from None


def inspect_containers(names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``docker inspect`` documents by container name; names that do not exist are left out."""
    if not names:
        return {}
    proc = docker("container", "inspect", *names, check=False, timeout=60)
    if proc.returncode and not any(
        m in (proc.stderr or b"").decode("utf-8", "replace") for m in NoSuchContainer.markers
    ):
        raise DockerError.from_process(["docker", "container", "inspect", *names], proc)
    found = json.loads(text(proc) or "[]")
    return {str(doc.get("Name", "")).lstrip("/"): doc for doc in found if isinstance(doc, dict)}


def text(proc: subprocess.CompletedProcess[bytes]) -> str:
    return (proc.stdout or b"").decode("utf-8", "replace")


def flag(name: str, value: object | None) -> list[str]:
    """``["--name", value]``, or nothing when the value is unset."""
    return [] if value is None or value == "" else [name, str(value)]


def env_pass(name: str) -> list[str]:
    """``-e NAME``: docker takes the value from its own environment, never from argv."""
    return ["--env", name]


def labels(values: Mapping[str, str]) -> list[str]:
    return [arg for key, value in values.items() for arg in ("--label", f"{key}={value}")]


def inspect_container(name: str) -> dict[str, Any] | None:
    """The container's ``docker inspect`` document, or None when it does not exist."""
    try:
        proc = docker("container", "inspect", name, timeout=30)
    except NoSuchContainer:
        return None
    data = json.loads(text(proc) or "[]")
    return data[0] if data else None


def container_label(info: Mapping[str, Any], key: str) -> str | None:
    """A label of a container, from its ``docker inspect`` document."""
    return ((info.get("Config") or {}).get("Labels") or {}).get(key)


def remove_container(name: str) -> None:
    """Remove a container, running or not; one that is already gone is fine."""
    docker("rm", "--force", name, check=False, timeout=60)


def images_named(prefix: str) -> list[str]:
    """The repositories of the engine's images whose names start with ``prefix``."""
    proc = docker("images", "--format", "{{.Repository}}", timeout=30)
    return sorted({name for name in text(proc).split() if name.startswith(prefix)})


def engine_cpus() -> int | None:
    """How many CPUs the engine has; None when it does not say."""
    found = text(docker("info", "--format", "{{.NCPU}}", check=False, timeout=30)).strip()
    return int(found) if found.isdigit() else None


def running_managers(volume: str | None = None) -> list[str]:
    """The manager containers that run (of the batch on ``volume``, when given): where orch runs."""
    filters = ["--filter", "label=orchestrator.role=manager", "--filter", "status=running"]
    if volume:
        filters += ["--filter", f"label=orchestrator.volume={volume}"]
    proc = docker("ps", *filters, "--format", "{{.Names}}", check=False, timeout=30)
    return sorted(text(proc).split()) if proc.returncode == 0 else []


def image_exists(name: str) -> bool:
    proc = docker("image", "inspect", "--format", "{{.Id}}", name, check=False, timeout=30)
    return proc.returncode == 0


# Storage drivers whose containers' writable layers can be bounded (docker create --storage-opt
# size=): overlay2 only on XFS mounted with pquota, which `docker info` does not say (a create
# that is refused tells: see StorageQuotaRefused).
_QUOTA_DRIVERS = ("btrfs", "zfs", "devicemapper", "windowsfilter")


def storage_quota_supported() -> bool:
    """Whether the engine's storage driver may bound a container's writable layer."""
    proc = docker("info", "--format", "{{.Driver}} {{json .DriverStatus}}", check=False, timeout=30)
    driver, _, status = text(proc).strip().partition(" ")
    if driver in _QUOTA_DRIVERS:
        return True
    try:
        facts = {str(pair[0]): str(pair[1]) for pair in json.loads(status or "[]") if len(pair) == 2}
    except (ValueError, TypeError):
        return False
    return driver == "overlay2" and facts.get("Backing Filesystem") == "xfs"


def check_daemon() -> None:
    """Fail with one clear line when the engine cannot be reached."""
    proc = docker("version", "--format", "{{.Server.Version}}", check=False, timeout=30)
    if proc.returncode:
        raise unusable(DockerError.from_process(["docker", "version"], proc))


def unusable(exc: DockerError) -> DaemonUnreachable:
    """The one line that says the engine cannot be used, from a command that found out."""
    lines = exc.stderr.splitlines()
    reason = lines[-1] if lines else f"exit code {exc.returncode}"
    return DaemonUnreachable(exc.argv, exc.returncode, reason, f"Docker is not usable: {reason}")


@dataclass(frozen=True)
class FileToCopy:
    """One file to put into a container with ``copy_files``."""

    name: str  # path relative to the destination folder
    data: bytes
    mode: int = 0o600


def copy_files(container: str, dest_dir: str, files: Sequence[FileToCopy], *, uid: int, gid: int) -> None:
    """Copy files into a (created or running) container, owned by ``uid:gid``.

    Works the same from the host and from inside the manager container, because the
    bytes travel through the API as a tar stream: a bind mount of a path inside the
    manager would resolve on the host instead.
    """
    buf = io.BytesIO()
    now = time.time()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        dirs: set[str] = set()
        for item in files:
            parts = item.name.split("/")[:-1]
            for depth in range(1, len(parts) + 1):
                folder = "/".join(parts[:depth])
                if folder not in dirs:
                    dirs.add(folder)
                    info = tarfile.TarInfo(folder)
                    info.type, info.mode, info.uid, info.gid, info.mtime = tarfile.DIRTYPE, 0o700, uid, gid, now
                    tar.addfile(info)
            info = tarfile.TarInfo(item.name)
            info.size, info.mode, info.uid, info.gid, info.mtime = len(item.data), item.mode, uid, gid, now
            tar.addfile(info, io.BytesIO(item.data))
    docker("cp", "-", f"{container}:{dest_dir}", input=buf.getvalue(), timeout=60)
