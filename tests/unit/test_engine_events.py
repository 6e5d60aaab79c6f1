"""What docker events tell a loop that sleeps (orch wait, the dispatcher): wake up, and which
workers ended, so that only those are looked at; every worker now and then all the same."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from orchestrator import engine_events as engine
from orchestrator.engine_events import EVERYTHING, EngineEvents, EngineLook
from tests.support.fake_docker import FakeDocker
from tests.support.waiting import wait_until


def event(action: str, name: str) -> str:
    """A line of `docker events --format '{{json .}}'`, as the engine writes it."""
    attributes = {"image": "claude-flutter", "name": name, "orchestrator.role": "worker"}
    if action == "die":
        attributes["exitCode"] = "0"
    return json.dumps({"status": action, "id": "f" * 64, "from": "claude-flutter", "Type": "container",
                       "Action": action, "Actor": {"ID": "f" * 64, "Attributes": attributes}, "scope": "local",
                       "time": 1764111111, "timeNano": 1764111111000000000})  # fmt: skip


@pytest.fixture
def events_file(fake_docker: FakeDocker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "events.jsonl"
    monkeypatch.setenv("FAKE_DOCKER_EVENTS", str(path))
    return path


def test_the_workers_that_ended_are_named_and_only_they_are_looked_at(fake_docker, events_file, monkeypatch):
    monkeypatch.setenv("FAKE_DOCKER_EVENTS_HOLD", "1")
    lines = [event("start", "worker-a"), event("die", "worker-b"), "not json", event("destroy", "worker-c")]
    events_file.write_text("\n".join(lines) + "\n")
    with EngineEvents("vol-1") as events:
        assert events.look() == EVERYTHING  # the first look is at every worker
        named: set[str] = set()

        def both_ended_named() -> bool:
            look = events.look()  # the stream may be read between two looks: each names what came since
            assert look == EngineLook(names=look.names) and look.only == look.names, look
            named.update(look.names)
            return {"worker-b", "worker-c"} <= named

        wait_until(both_ended_named, lambda: f"the ends of worker-b and worker-c; named: {named}", timeout=10)
        assert named == {"worker-b", "worker-c"}  # not worker-a, which started, and read before them
        assert not events.look()  # nothing since: no question to the engine
    (argv,) = [a for a in fake_docker.argvs() if a[0] == "events"]
    filters = [argv[i + 1] for i, a in enumerate(argv) if a == "--filter"]
    assert "label=orchestrator.volume=vol-1" in filters and "label=orchestrator.role=worker" in filters
    assert {"event=start", "event=die", "event=destroy", "event=oom"} <= set(filters)


def test_every_worker_is_looked_at_now_and_then_and_after_a_failed_look(fake_docker, events_file, monkeypatch):
    monkeypatch.setenv("FAKE_DOCKER_EVENTS_HOLD", "1")
    events_file.write_text("")
    with EngineEvents("vol-1") as events:
        assert events.look() == EVERYTHING
        assert not events.look()
        events.ask_again()
        assert events.look() == EVERYTHING
        assert not events.look()
        # While the stream is open (once its process runs), the time for the next check has come.
        monkeypatch.setattr(engine, "EVENTS_CHECK_SECONDS", -1.0)
        wait_until(lambda: events.look() == EVERYTHING, "a look at every worker", timeout=10)


def test_a_stream_that_ends_is_opened_again_and_every_worker_looked_at(fake_docker, events_file):
    """The engine restarted: workers may have come and gone while nobody listened."""
    events_file.write_text("")  # the fake prints nothing and ends
    with EngineEvents("vol-1") as events:
        assert events.look() == EVERYTHING
        wait_until(lambda: len([a for a in fake_docker.argvs() if a[0] == "events"]) >= 2, "a second stream", 15)
        assert events.look() == EVERYTHING


def test_a_wake_ends_a_wait(fake_docker, events_file, monkeypatch):
    monkeypatch.setenv("FAKE_DOCKER_EVENTS_HOLD", "1")  # no event, and a stream that does not end
    events_file.write_text("")
    with EngineEvents() as events:
        waiter = threading.Thread(target=events.wait, args=(3600,), daemon=True)
        waiter.start()
        events.wake()
        wait_until(lambda: not waiter.is_alive(), "the wait to end", timeout=30)
