"""The engine as orch sees it: its workers, and the events that say one started or died.

``DockerEngine`` answers reconcile, the dispatcher and orch's commands about this volume's
workers; ``EngineEvents`` wakes a loop that sleeps when a worker starts or dies.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Mapping
from typing import Any

from . import config, environment
from .docker import (
    DockerMissing,
    container_label,
    docker,
    docker_stream,
    inspect_containers,
    remove_container,
    text,
)

ENGINE_CHECK_SECONDS = 15.0  # the engine is asked at least this often, events or not


class EngineEvents:
    """Wakes a sleeping loop when a worker container starts or dies, and says when the engine
    is worth asking: after such an event, and every ENGINE_CHECK_SECONDS in any case.

    When the stream ends (the engine restarted) it is opened again, and the engine asked at
    once: workers may have come and gone meanwhile. Without docker ``wait`` is a plain sleep.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._proc: subprocess.Popen[str] | None = None
        self._closed = threading.Event()
        self._seen = True  # the first look always asks the engine
        self._last_look = float("-inf")

    def start(self) -> EngineEvents:
        threading.Thread(target=self._follow, name="engine-events", daemon=True).start()
        return self

    def _follow(self) -> None:
        pause = 1.0
        while not self._closed.is_set():
            try:
                proc = docker_stream(
                    "events", "--filter", "type=container", "--filter", f"label={config.LABEL_ROLE}=worker",
                    "--format", "{{.Action}}",
                )  # fmt: skip
            except DockerMissing:
                return
            self._proc = proc
            assert proc.stdout is not None
            for line in proc.stdout:
                pause = 1.0
                if line.strip() in ("start", "die", "destroy", "oom"):
                    self._event.set()
            proc.wait()
            if self._closed.is_set():
                return
            self._seen = True
            self._event.set()
            self._closed.wait(pause)
            pause = min(pause * 2, 15.0)

    def wait(self, timeout: float) -> None:
        """Sleep until an event or ``timeout``."""
        if self._event.wait(timeout):
            self._seen = True
        self._event.clear()

    def ask_again(self) -> None:
        """The next ``engine_due`` says yes (the last look failed)."""
        self._seen = True

    def engine_due(self) -> bool:
        """Whether to ask the engine now; asking resets the count."""
        now = time.monotonic()
        if self._seen or now - self._last_look > ENGINE_CHECK_SECONDS:
            self._seen, self._last_look = False, now
            return True
        return False

    def close(self) -> None:
        self._closed.set()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()

    def __enter__(self) -> EngineEvents:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class DockerEngine:
    """The engine as reconcile and the dispatcher need it, limited to this volume's workers.

    Worker names carry only the task id, so a batch on another volume may have a worker of
    the same name: it is left alone, as if it did not exist.
    """

    def __init__(self, volume: str):
        self.volume = volume

    @classmethod
    def for_env(cls, env: Mapping[str, str]) -> DockerEngine:
        return cls(environment.VOLUME.require(env))

    def ours(self, info: Mapping[str, Any]) -> bool:
        return container_label(info, config.LABEL_VOLUME) in (None, self.volume)

    def containers(self, names: list[str]) -> dict[str, Mapping[str, Any]]:
        return {name: info for name, info in inspect_containers(names).items() if self.ours(info)}

    def _is_ours(self, name: str) -> bool:
        return name in self.containers([name])

    def remove(self, name: str) -> None:
        if self._is_ours(name):
            remove_container(name)

    def rename(self, name: str, new_name: str) -> bool:
        """Keep a container under another name; False when there is none of ours to keep."""
        if not self._is_ours(name):
            return False
        docker("rename", name, new_name, timeout=30)
        return True

    def signal(self, name: str, signal: str) -> None:
        if self._is_ours(name):
            docker("kill", "--signal", signal, name, check=False, timeout=30)

    def stop(self, name: str, grace: int | None = None) -> None:
        """docker stop: SIGTERM, then SIGKILL after ``grace`` seconds, else the container's own
        stop timeout (spawn-worker gives workers time to hand their work back)."""
        if self._is_ours(name):
            docker("stop", *(["--time", str(grace)] if grace is not None else []), name, check=False, timeout=None)

    def workers(self) -> list[tuple[str, bool]]:
        """This volume's worker containers, by name, and whether each is running."""
        proc = docker(
            "ps", "--all", "--filter", f"label={config.LABEL_ROLE}=worker",
            "--filter", f"label={config.LABEL_VOLUME}={self.volume}", "--format", "{{json .}}",
            timeout=60,
        )  # fmt: skip
        found = []
        for line in text(proc).splitlines():
            info = json.loads(line)
            found.append((str(info.get("Names", "")), info.get("State") == "running"))
        return found
