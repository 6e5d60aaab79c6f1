"""A Docker engine of the tests' own, for the suites that must stop, restart or reconfigure an
engine (the fault suite) or put it in swarm mode (the swarm suite) without touching the one
everything else uses."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .end_to_end import MANAGER_IMAGE, WORKER_IMAGE
from .waiting import wait_until


class OwnEngine:
    """A dockerd of the tests' own: its data, its socket, a bridge of its own (the tests' containers
    use the host's network; `--bridge=none` would make it delete the main engine's docker0), no
    iptables rules, the test images loaded from the main engine."""

    BRIDGE = "orchown0"

    def __init__(self, root: Path):
        self.root = root
        self.socket = root / "docker.sock"
        self.host = f"unix://{self.socket}"
        self.process: subprocess.Popen[bytes] | None = None

    def make_bridge(self) -> None:
        if subprocess.run(["ip", "link", "show", self.BRIDGE], capture_output=True, check=False).returncode:
            for argv in (["ip", "link", "add", "name", self.BRIDGE, "type", "bridge"],
                         ["ip", "addr", "add", "10.213.0.1/24", "dev", self.BRIDGE],
                         ["ip", "link", "set", self.BRIDGE, "up"]):  # fmt: skip
                subprocess.run(argv, check=True, capture_output=True)

    def remove_bridge(self) -> None:
        subprocess.run(["ip", "link", "del", self.BRIDGE], capture_output=True, check=False)

    def start(self, *, live_restore: bool) -> None:
        self.make_bridge()
        argv = [
            "dockerd", "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "exec"),
            "-H", self.host, "--pidfile", str(self.root / "docker.pid"), f"--bridge={self.BRIDGE}",
            "--iptables=false", "--ip6tables=false", "--ip-masq=false", f"--cgroup-parent=/{self.root.name}",
            *(["--live-restore"] if live_restore else []),
        ]  # fmt: skip
        log = open(self.root / "dockerd.log", "ab")  # noqa: SIM115 (the engine's own, for as long as it runs)
        self.process = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
        wait_until(self.answers, lambda: f"the tests' own engine to come up; its log:\n{self.log()}", timeout=60)

    def answers(self) -> bool:
        """Whether `docker info` works; fails at once when dockerd has ended."""
        if self.docker("info", check=False).returncode == 0:
            return True
        assert self.process is not None and self.process.poll() is None, f"dockerd ended:\n{self.log()}"
        return False

    def log(self) -> str:
        return (self.root / "dockerd.log").read_text()[-3000:]

    def stop(self) -> None:
        """SIGTERM, as a system shutdown or `systemctl stop docker` sends it; waits for the end."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=300)
        self.process = None

    def docker(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "DOCKER_HOST": self.host}
        proc = subprocess.run(["docker", *args], capture_output=True, text=True, env=env, timeout=timeout,
                              check=False)  # fmt: skip
        if check and proc.returncode:
            raise AssertionError(f"docker {args} failed: {proc.stderr}")
        return proc


@contextmanager
def own_engine_running() -> Iterator[OwnEngine]:
    """An OwnEngine, started without live-restore, with the test images loaded from the main
    engine (which has them built); stopped and removed, with its containers, its mounts and its
    bridge, at the end."""
    root = Path(tempfile.mkdtemp(prefix="orch-fault-engine-", dir="/tmp"))
    root.chmod(0o755)  # the managers' user passes through it to the socket, as through /var/run
    engine = OwnEngine(root)
    engine.start(live_restore=False)
    try:
        env = {**os.environ, "DOCKER_HOST": engine.host}
        save = subprocess.Popen(["docker", "save", MANAGER_IMAGE, WORKER_IMAGE], stdout=subprocess.PIPE)
        subprocess.run(["docker", "load", "-q"], stdin=save.stdout, env=env, check=True, capture_output=True)
        save.wait(60)
        yield engine
    finally:
        if engine.process is not None:
            for name in engine.docker("ps", "-aq", check=False).stdout.split():
                engine.docker("rm", "--force", name, check=False)
            engine.stop()
        for mount in mounts_below(root):
            subprocess.run(["umount", mount], capture_output=True, check=False)
        engine.remove_bridge()
        shutil.rmtree(root, ignore_errors=True)


def mounts_below(root: Path) -> list[str]:
    """The mount points in ``root``, deepest first: dockerd leaves its data root bound on itself
    and a network namespace in its exec root, which would keep the folder from being removed."""
    points = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    return sorted((point for point in points if point.startswith(f"{root}/")), key=len, reverse=True)
