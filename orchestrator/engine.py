"""The engine as orch sees it: its workers, and the events that say one started or died.

``DockerEngine`` answers reconcile, the dispatcher and orch's commands about this volume's
workers; ``EngineEvents`` wakes a loop that sleeps when a worker starts or dies, and names
the workers worth asking about.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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
from .errors import InvalidInput, UserError

if TYPE_CHECKING:
    from .swarm import SwarmEngine

ENGINE_CHECK_SECONDS = 15.0  # the engine is asked at least this often without events
# ... and this often while events come in: a worker that ends says so; what has no event (a
# start that never happened, a container created and never started) has a grace of minutes.
EVENTS_CHECK_SECONDS = 60.0


@dataclass(frozen=True)
class EngineLook:
    """Which workers to ask the engine about now: every one, or those named (none: no question)."""

    everything: bool = False
    names: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return self.everything or bool(self.names)

    @property
    def only(self) -> frozenset[str] | None:
        """reconcile's ``only``: None for every worker."""
        return None if self.everything else self.names


EVERYTHING = EngineLook(everything=True)


class EngineEvents:
    """Wakes a sleeping loop when a worker container of the volume starts or ends, and says what
    is worth asking the engine: the workers that ended since the last look (their event names
    them), and every worker every EVENTS_CHECK_SECONDS in any case (a start that never happened
    has no event), every ENGINE_CHECK_SECONDS once the stream has ended (the engine restarted).

    When the stream ends (the engine restarted) it is opened again, and the engine asked at
    once: workers may have come and gone meanwhile. Without docker ``wait`` is a plain sleep.
    """

    ENDINGS = ("die", "destroy", "oom")

    def __init__(self, volume: str | None = None) -> None:
        self.volume = volume  # None: the workers of every volume
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._closed = threading.Event()
        self._everything = True  # the first look asks about every worker
        self._ended: set[str] = set()
        self._last_look = float("-inf")

    def start(self) -> EngineEvents:
        threading.Thread(target=self._follow, name="engine-events", daemon=True).start()
        return self

    def _follow(self) -> None:
        # Filtered by the engine: a busy engine (other batches, builds) does not wake this one.
        filters = ["type=container", f"label={config.LABEL_ROLE}=worker"]
        if self.volume:
            filters.append(f"label={config.LABEL_VOLUME}={self.volume}")
        filters += [f"event={action}" for action in ("start", *self.ENDINGS)]
        argv = ["events", *[arg for f in filters for arg in ("--filter", f)], "--format", "{{json .}}"]
        pause = 1.0
        while not self._closed.is_set():
            try:
                proc = docker_stream(*argv)
            except DockerMissing:
                return
            self._proc = proc
            if self._read(proc):
                pause = 1.0
            proc.wait()
            if self._closed.is_set():
                return
            # The engine restarted, or the stream broke: workers may have come and gone unseen.
            self.ask_again()
            self._event.set()
            self._closed.wait(pause)
            pause = min(pause * 2, 15.0)

    def _read(self, proc: subprocess.Popen[str]) -> bool:
        """Follow the stream until it ends; whether it carried any event."""
        assert proc.stdout is not None
        any_event = False
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            any_event = True
            action = event.get("Action") or event.get("status")
            name = ((event.get("Actor") or {}).get("Attributes") or {}).get("name")
            if action in self.ENDINGS and isinstance(name, str):
                with self._lock:
                    self._ended.add(name)
            self._event.set()
        return any_event

    def wait(self, timeout: float) -> None:
        """Sleep until an event, a ``wake``, or ``timeout``."""
        self._event.wait(timeout)
        self._event.clear()

    def wake(self) -> None:
        """End the current ``wait`` now (another thread has news)."""
        self._event.set()

    def ask_again(self) -> None:
        """The next look asks about every worker (the last one failed)."""
        with self._lock:
            self._everything = True

    def look(self) -> EngineLook:
        """What to ask the engine now; a look at every worker resets the count."""
        now = time.monotonic()
        streaming = self._proc is not None and self._proc.poll() is None
        every = EVENTS_CHECK_SECONDS if streaming else ENGINE_CHECK_SECONDS
        with self._lock:
            if self._everything or now - self._last_look > every:
                self._everything, self._last_look = False, now
                self._ended.clear()
                return EVERYTHING
            names, self._ended = frozenset(self._ended), set()
        return EngineLook(names=names)

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


def engine_for(env: Mapping[str, str], volume: str | None = None) -> DockerEngine | SwarmEngine:
    """The engine the batch on ``volume`` (default: $ORCHESTRATOR_VOLUME) runs its workers on."""
    volume = volume or environment.VOLUME.require(env)
    kind = environment.ENGINE.require(env)
    if kind == config.ENGINE_SWARM:
        from .swarm import SwarmEngine

        return SwarmEngine(volume)
    if kind != config.ENGINE_DOCKER:
        raise InvalidInput(f"{environment.ENGINE.name} must be one of {', '.join(config.ENGINES)}, not {kind!r}")
    return DockerEngine(volume)


class DockerEngine:
    """The engine as reconcile and the dispatcher need it, limited to this volume's workers.

    Worker names carry only the task id, so a batch on another volume may have a worker of
    the same name: it is left alone, as if it did not exist.
    """

    def __init__(self, volume: str):
        self.volume = volume

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

    def logs(self, name: str) -> str:
        """What the worker container printed, as `docker logs` shows it."""
        proc = docker("logs", name, check=False, timeout=60)
        if proc.returncode:
            raise UserError(f"no container {name}")
        return text(proc)

    def release(self) -> list[str]:
        """What the engine keeps for the batch besides its workers: nothing (a swarm keeps secrets)."""
        return []
