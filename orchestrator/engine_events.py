"""TODO"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from dataclasses import dataclass

from . import config
from .docker import (
    DockerMissing,
    docker_stream,
)

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
