"""Where a worker reaches its control plane: a folder of sockets, or, for a swarm job on another
node, a host on the batch's network with a port per service; the git channel and the mirror's
copy work the same either way."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import doors as doors_module
from orchestrator import worker_channel
from orchestrator.control.door import Door, listen_tcp, unix
from orchestrator.doors import GIT, Doors
from orchestrator.git import GitError
from tests.unit.test_git_channel import Setup, git


def test_doors_are_a_folder_or_a_host() -> None:
    assert Doors.parse("/run/orchestrator") == Doors(folder=Path("/run/orchestrator"))
    found = Doors.parse("tcp://orchestrator-control")
    assert found == Doors(host="orchestrator-control") and found.over_network
    assert found.where(GIT) == "orchestrator-control:7702"
    assert not Doors.parse("/x").over_network


def test_a_swarm_job_fetches_and_copies_the_mirror_over_tcp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    setup = Setup(tmp_path)
    listener = listen_tcp("127.0.0.1")
    monkeypatch.setitem(doors_module.PORTS, GIT, listener.getsockname()[1])
    door = Door(listener, unix(setup.doors / GIT)).start()
    try:
        over_tcp = Doors(host="127.0.0.1")
        assert worker_channel.fetch(over_tcp, setup.ticket()) == "the mirror is as origin is now"
        copy = tmp_path / "copy" / "repo.git"
        copy.parent.mkdir()
        said = worker_channel.copy_mirror(over_tcp, setup.ticket(), copy)
        assert said.startswith("copied the mirror")
        assert git(copy, "rev-parse", "main") == git(setup.mirror.path, "rev-parse", "main")
    finally:
        door.close()


def test_a_host_that_does_not_resolve_is_out_of_reach(monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator import delivery

    with pytest.raises(GitError) as caught:
        worker_channel.fetch(Doors(host="no-such-host.invalid"), "git-x.y")
    assert "connection refused" in str(caught.value) and delivery.unreachable(caught.value)
