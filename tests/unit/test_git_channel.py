"""The worker's tickets and the control plane's git channel: a worker that holds no credential
gets origin's latest from the mirror and hands back its task's branch, and nothing else."""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path

import pytest

from orchestrator import git as orchestrator_git
from orchestrator import worker_channel
from orchestrator.control.git_channel import GitChannel
from orchestrator.control.mirror import Mirror
from orchestrator.git import GitError
from orchestrator.store import OrchestrationDir
from orchestrator.tasks import State, TaskResult, utc_now
from orchestrator.tickets import GIT, RELAY, TaskTicket, Tickets
from tests.unit.test_control_plane import Repos, git

KEY = bytes(range(32))


def test_a_ticket_names_its_task_attempt_and_use_and_nothing_else_reads_as_one() -> None:
    tickets = Tickets(KEY)
    ticket = tickets.make(RELAY, "task-001", 2)
    assert tickets.read(RELAY, ticket) == TaskTicket("task-001", 2)
    assert tickets.read(GIT, ticket) is None  # another use
    assert Tickets(bytes(32)).read(RELAY, ticket) is None  # another control plane's
    head, _, mac = ticket.rpartition(".")
    forged = tickets.make(RELAY, "task-002", 2).rpartition(".")[0] + "." + mac
    assert tickets.read(RELAY, forged) is None
    assert tickets.read(RELAY, head + "." + "0" * 64) is None
    assert tickets.read(RELAY, "") is None
    assert tickets.read(RELAY, "relay-" + "A" * 600) is None


def test_the_key_is_made_once_and_kept_for_its_user_alone(tmp_path: Path) -> None:
    assert Tickets.in_folder(tmp_path) is None
    made = Tickets.in_folder(tmp_path, create=True)
    assert made is not None
    again = Tickets.in_folder(tmp_path, create=True)
    assert again is not None
    assert again.read(GIT, made.make(GIT, "t", 1)) == TaskTicket("t", 1)
    assert (tmp_path / ".worker-ticket-key").stat().st_mode & 0o077 == 0


class Setup:
    def __init__(self, tmp: Path, limit: int = 1 << 30):
        self.repos = Repos(tmp)
        self.tickets = Tickets(KEY)
        self.orch = OrchestrationDir(tmp / "orch")
        self.orch.ensure()
        self.mirror = Mirror(tmp / "mirror", str(self.repos.origin), env={}, scrub=str)
        self.mirror.refresh()
        self.doors = tmp / "doors"
        self.doors.mkdir()
        self.said: list[str] = []
        self.channel = GitChannel(
            self.doors / "git.sock", tickets=self.tickets, orch=self.orch, mirror=self.mirror,
            work=tmp / "handback.git", env={}, scrub=str, prefix="orchestrator/", say=self.said.append, limit=limit,
        ).start()  # fmt: skip
        self.tmp = tmp

    def worker_clone(self, name: str) -> Path:
        clone = self.tmp / name
        orchestrator_git.clone_of_mirror(self.mirror.path, "main", clone, str(self.repos.origin))
        return clone

    def ticket(self, task_id: str = "task-001", attempt: int = 1, use: str = GIT) -> str:
        return self.tickets.make(use, task_id, attempt)


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


def test_a_workers_clone_is_of_the_mirror_made_fresh_and_names_origin(setup: Setup) -> None:
    # origin moves on after the mirror's first fetch: the fetch asked of the channel brings it.
    tip = setup.repos.commit(setup.repos.control, "main", "later.txt", "later\n")
    git(setup.repos.control, "push", "-q", "origin", "main")
    assert worker_channel.fetch(setup.doors, setup.ticket()) == "the mirror is as origin is now"
    clone = setup.worker_clone("clone")
    assert git(clone, "rev-parse", "HEAD").strip() == tip
    assert git(clone, "remote", "get-url", "origin").strip() == str(setup.repos.origin)
    alternates = (clone / ".git" / "objects" / "info" / "alternates").read_text().split()
    assert alternates == [str(setup.mirror.path / "objects")]


def test_many_fetches_at_once_share_a_few(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    count = []
    real = setup.mirror.refresh

    def counted() -> None:
        count.append(1)
        real()

    monkeypatch.setattr(setup.mirror, "refresh", counted)
    threads = [threading.Thread(target=worker_channel.fetch, args=(setup.doors, setup.ticket(f"t{i}"))) for i in
               range(20)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert 1 <= len(count) <= 3, count


def test_the_tasks_branch_is_pushed_and_the_mirror_takes_it(setup: Setup) -> None:
    clone = setup.worker_clone("clone")
    tip = setup.repos.commit(clone, "orchestrator/task-001", "a.txt", "work\n")
    said = worker_channel.push(setup.doors, setup.ticket(), clone, "orchestrator/task-001")
    assert said == "pushed orchestrator/task-001 to origin"
    assert git(setup.repos.origin, "rev-parse", "orchestrator/task-001").strip() == tip
    assert git(setup.mirror.path, "rev-parse", "orchestrator/task-001").strip() == tip
    # A dependent task's clone finds it in the mirror.
    dependent = setup.worker_clone("dependent")
    assert git(dependent, "rev-parse", "origin/orchestrator/task-001").strip() == tip
    # A retry's attempt pushes its own branch; a name taken on origin, the next free one.
    retry = setup.repos.commit(clone, "orchestrator/task-001-attempt-2", "a.txt", "again\n")
    worker_channel.push(setup.doors, setup.ticket(attempt=2), clone, "orchestrator/task-001-attempt-2")
    assert git(setup.repos.origin, "rev-parse", "orchestrator/task-001-attempt-2").strip() == retry
    setup.repos.commit(clone, "orchestrator/task-001-2", "b.txt", "b\n")
    worker_channel.push(setup.doors, setup.ticket(), clone, "orchestrator/task-001-2")


@pytest.mark.parametrize(
    "branch, task, use, why",
    [
        ("main", "task-001", GIT, "hands back orchestrator/task-001 only"),
        ("orchestrator/task-002", "task-001", GIT, "hands back orchestrator/task-001 only"),
        ("orchestrator/task-001-attempt-2", "task-001", GIT, "hands back orchestrator/task-001 only"),
        ("orchestrator/task-001-02", "task-001", GIT, "hands back orchestrator/task-001 only"),
        ("orchestrator/task-001", "task-001", RELAY, "does not know this ticket"),
    ],
)
def test_a_push_of_another_branch_or_with_another_ticket_is_refused(
    setup: Setup, branch: str, task: str, use: str, why: str
) -> None:
    clone = setup.worker_clone("clone")
    setup.repos.commit(clone, branch, "a.txt", "work\n")
    with pytest.raises(GitError, match=why):
        worker_channel.push(setup.doors, setup.ticket(task, use=use), clone, branch)
    assert git(setup.repos.origin, "for-each-ref", "--format=%(refname)").split() == ["refs/heads/main"]


def test_a_rewrite_is_never_forced(setup: Setup) -> None:
    clone = setup.worker_clone("clone")
    setup.repos.commit(clone, "orchestrator/task-001", "a.txt", "work\n")
    worker_channel.push(setup.doors, setup.ticket(), clone, "orchestrator/task-001")
    pushed = git(setup.repos.origin, "rev-parse", "orchestrator/task-001").strip()
    git(clone, "reset", "-q", "--hard", "HEAD~1")
    setup.repos.commit(clone, "orchestrator/task-001", "a.txt", "rewritten\n")
    with pytest.raises(GitError, match="nothing is ever force-pushed"):
        worker_channel.push(setup.doors, setup.ticket(), clone, "orchestrator/task-001")
    assert git(setup.repos.origin, "rev-parse", "orchestrator/task-001").strip() == pushed


def test_a_ticket_is_revoked_once_its_attempt_has_a_result(setup: Setup) -> None:
    setup.orch.write_result(TaskResult(task_id="task-001", status=State.SUCCESS, output="", completed_at=utc_now()))
    with pytest.raises(GitError, match="revoked"):
        worker_channel.fetch(setup.doors, setup.ticket())
    worker_channel.fetch(setup.doors, setup.ticket(attempt=2))  # the retry's attempt runs


def test_a_huge_or_lying_hand_back_is_refused(tmp_path: Path) -> None:
    setup = Setup(tmp_path, limit=1000)
    clone = setup.worker_clone("clone")
    (clone / "big.bin").write_bytes(os.urandom(4096))  # does not compress
    setup.repos.commit(clone, "orchestrator/task-001", "a.txt", "work\n")
    with pytest.raises(GitError, match="a hand-back is a bundle of at most 1000 bytes"):
        worker_channel.push(setup.doors, setup.ticket(), clone, "orchestrator/task-001")

    def ask(header: bytes, body: bytes = b"") -> dict[str, object]:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(setup.doors / "git.sock"))
            sock.sendall(header + body)
            sock.shutdown(socket.SHUT_WR)
            return json.loads(sock.makefile("rb").readline())

    said = ask(json.dumps({"op": "push", "ticket": setup.ticket(), "branch": "orchestrator/task-001",
                           "size": 500}).encode() + b"\n", b"x" * 10)  # fmt: skip
    assert said == {"ok": False, "error": "the hand-back ended after 10 of its 500 bytes"}
    assert ask(b"not json\n")["ok"] is False
    assert ask(b"{}\n") == {"ok": False, "error": "the git channel does not know this ticket"}
    assert ask(json.dumps({"op": "shell", "ticket": setup.ticket()}).encode() + b"\n")["ok"] is False
    assert git(setup.repos.origin, "for-each-ref", "--format=%(refname)").split() == ["refs/heads/main"]


def test_a_control_plane_out_of_reach_is_an_unreachable_server(tmp_path: Path) -> None:
    from orchestrator import delivery

    with pytest.raises(GitError) as caught:
        worker_channel.fetch(tmp_path, "git-x.y")
    assert delivery.unreachable(caught.value)


def test_a_fetch_waits_for_a_control_plane_that_comes_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A manager removed mid-batch: its workers wait for the next control plane on the volume.
    doors = tmp_path / "doors"
    doors.mkdir()
    said: list[str] = []
    started: list[Setup] = []
    monkeypatch.setattr(worker_channel, "WAIT_PAUSES", (0.2,))

    def come_back(line: str) -> None:
        said.append(line)
        if len(said) == 2:  # after two refusals, a control plane serves the doors
            (tmp_path / "later").mkdir()
            setup = Setup(tmp_path / "later")
            os.symlink(setup.doors / "git.sock", doors / "git.sock")
            started.append(setup)

    found = worker_channel.fetch(doors, Tickets(KEY).make(GIT, "task-001", 1), wait_for=60, say=come_back)
    assert found == "the mirror is as origin is now" and len(said) == 2
    assert said[0].startswith("the control plane is out of reach (the control plane's git channel: connection refused")
    # Without a wait, or past it, the refusal is the error.
    with pytest.raises(GitError, match="connection refused"):
        worker_channel.fetch(tmp_path, "git-x.y", wait_for=0.3, say=said.append)


def test_a_fetch_cut_by_a_stopping_control_plane_is_asked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The manager killed mid-spawn: its control plane stops while a new worker's fetch is under
    # way. The worker asks again (the next control plane) rather than fail its task.
    doors = tmp_path / "doors"
    doors.mkdir()
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(doors / "git.sock"))
    listener.listen()
    monkeypatch.setattr(worker_channel, "WAIT_PAUSES", (0.2,))

    def hang_up_once() -> None:
        conn, _ = listener.accept()
        conn.makefile("rb").readline()
        # The next control plane is made ready first, and takes the doors' name at once (a
        # rename): the worker's one pause is not a race with its start-up.
        setup = Setup(tmp_path / "later")
        os.symlink(setup.doors / "git.sock", doors / "next.sock")
        conn.close()  # stopped before it answered
        listener.close()
        os.replace(doors / "next.sock", doors / "git.sock")

    (tmp_path / "later").mkdir()
    thread = threading.Thread(target=hang_up_once)
    thread.start()
    said: list[str] = []
    found = worker_channel.fetch(doors, Tickets(KEY).make(GIT, "task-001", 1), wait_for=60, say=said.append)
    thread.join()
    assert found == "the mirror is as origin is now"
    assert len(said) == 1 and "the remote end hung up unexpectedly" in said[0], said


def test_the_control_planes_refusal_is_never_asked_again(setup: Setup) -> None:
    said: list[str] = []
    with pytest.raises(GitError, match="the control plane refused: the git channel does not know this ticket"):
        worker_channel.fetch(setup.doors, "git-forged.0", wait_for=60, say=said.append)
    assert said == []


def test_a_stopping_channel_lets_the_requests_under_way_end(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    entered, release = threading.Event(), threading.Event()
    real = setup.mirror.refresh

    def slow() -> None:
        entered.set()
        release.wait(30)
        real()

    monkeypatch.setattr(setup.mirror, "refresh", slow)
    answers: list[str] = []
    fetching = threading.Thread(target=lambda: answers.append(worker_channel.fetch(setup.doors, setup.ticket())))
    fetching.start()
    assert entered.wait(30)
    cut: list[int] = []
    stopping = threading.Thread(target=lambda: cut.append(setup.channel.stop(drain=60)))
    stopping.start()
    stopping.join(0.5)
    assert stopping.is_alive()  # waits for the fetch under way
    with pytest.raises(GitError, match="connection refused"):
        worker_channel.fetch(setup.doors, setup.ticket())  # no new request once stopping
    release.set()
    fetching.join(30)
    stopping.join(30)
    assert answers == ["the mirror is as origin is now"] and cut == [0]


def test_a_stopping_channel_cuts_what_outlasts_its_drain(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    entered, release = threading.Event(), threading.Event()

    def slow() -> None:
        entered.set()
        release.wait(30)

    monkeypatch.setattr(setup.mirror, "refresh", slow)
    fetching = threading.Thread(target=worker_channel.fetch, args=(setup.doors, setup.ticket()), daemon=True)
    fetching.start()
    assert entered.wait(30)
    assert setup.channel.stop(drain=0.2) == 1
    release.set()
    fetching.join(30)


# The mirror, copied over the channel: a swarm worker's node has no mirror volume.


def branches(repo: Path) -> dict[str, str]:
    listing = git(repo, "for-each-ref", "--format=%(refname) %(objectname)", "refs/heads/")
    return dict(line.split() for line in listing.splitlines())


def count_builds(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    builds: list[Path] = []
    real = setup.channel._make_mirror_bundle

    def counted() -> Path:
        builds.append(made := real())
        return made

    monkeypatch.setattr(setup.channel, "_make_mirror_bundle", counted)
    return builds


def test_a_copy_of_the_mirror_holds_its_branches_and_clones(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    builds = count_builds(setup, monkeypatch)
    clone = setup.worker_clone("clone")
    tip = setup.repos.commit(clone, "orchestrator/task-001", "a.txt", "work\n")
    worker_channel.push(setup.doors, setup.ticket(), clone, "orchestrator/task-001")
    node = setup.tmp / "node"
    said = worker_channel.copy_mirror(setup.doors, setup.ticket("task-002"), node / "mirror.git")
    assert said.startswith("copied the mirror: 2 branches, ")
    copy = node / "mirror.git"
    assert git(copy, "rev-parse", "--is-bare-repository").strip() == "true"
    assert branches(copy) == branches(setup.mirror.path)
    assert set(branches(copy)) == {"refs/heads/main", "refs/heads/orchestrator/task-001"}
    assert branches(copy)["refs/heads/orchestrator/task-001"] == tip
    assert [p.name for p in node.iterdir()] == ["mirror.git"]  # the bundle received is gone
    # A worker clones from its copy as it would from the mirror.
    dependent = setup.tmp / "dependent"
    orchestrator_git.clone_of_mirror(copy, "orchestrator/task-001", dependent, str(setup.repos.origin))
    assert git(dependent, "rev-parse", "HEAD").strip() == tip
    assert (dependent / "a.txt").read_text() == "work\n"
    # Nothing changed: the bundle kept is sent again.
    worker_channel.copy_mirror(setup.doors, setup.ticket("task-003"), setup.tmp / "other" / "mirror.git")
    assert branches(setup.tmp / "other" / "mirror.git") == branches(setup.mirror.path)
    assert len(builds) == 1
    kept = list(setup.channel.cache.iterdir())
    assert kept == builds[:1]


def test_a_copy_after_the_mirror_changed_is_of_a_new_bundle_and_updates_the_copy(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    builds = count_builds(setup, monkeypatch)
    clone = setup.worker_clone("clone")
    setup.repos.commit(clone, "orchestrator/task-001", "a.txt", "work\n")
    worker_channel.push(setup.doors, setup.ticket(), clone, "orchestrator/task-001")
    copy = setup.tmp / "node" / "mirror.git"
    worker_channel.copy_mirror(setup.doors, setup.ticket(), copy)
    assert len(builds) == 1
    # origin moves on and drops the task's branch; the fetch asked of the channel brings both.
    tip = setup.repos.commit(setup.repos.control, "main", "later.txt", "later\n")
    git(setup.repos.control, "push", "-q", "origin", "main", ":orchestrator/task-001")
    worker_channel.fetch(setup.doors, setup.ticket())
    said = worker_channel.copy_mirror(setup.doors, setup.ticket(), copy)
    assert len(builds) == 2 and said.startswith("copied the mirror: 1 branch,")
    assert branches(copy) == branches(setup.mirror.path) == {"refs/heads/main": tip}
    assert list(setup.channel.cache.iterdir()) == builds[1:]  # the old bundle is gone
    # A hand-back taken into the mirror is a change too.
    setup.repos.commit(clone, "orchestrator/task-002", "b.txt", "more\n")
    worker_channel.push(setup.doors, setup.ticket("task-002"), clone, "orchestrator/task-002")
    worker_channel.copy_mirror(setup.doors, setup.ticket(), copy)
    assert len(builds) == 3
    assert branches(copy) == branches(setup.mirror.path)
    assert "refs/heads/orchestrator/task-002" in branches(copy)


def test_many_copies_at_once_share_one_bundle(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    builds = count_builds(setup, monkeypatch)
    errors: list[BaseException] = []

    def copy(i: int) -> None:
        try:
            worker_channel.copy_mirror(setup.doors, setup.ticket(f"t{i}"), setup.tmp / f"node-{i}" / "mirror.git")
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=copy, args=(i,)) for i in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(builds) == 1
    for i in range(10):
        assert branches(setup.tmp / f"node-{i}" / "mirror.git") == branches(setup.mirror.path)


def test_a_copy_with_an_unknown_or_revoked_ticket_is_refused_at_once(setup: Setup) -> None:
    said: list[str] = []
    copy = setup.tmp / "node" / "mirror.git"
    with pytest.raises(GitError, match="the control plane refused: the git channel does not know this ticket"):
        worker_channel.copy_mirror(setup.doors, "git-forged.0", copy, wait_for=60, say=said.append)
    with pytest.raises(GitError, match="the control plane refused: the git channel does not know this ticket"):
        worker_channel.copy_mirror(setup.doors, setup.ticket(use=RELAY), copy, wait_for=60, say=said.append)
    setup.orch.write_result(TaskResult(task_id="task-001", status=State.SUCCESS, output="", completed_at=utc_now()))
    with pytest.raises(GitError, match="revoked"):
        worker_channel.copy_mirror(setup.doors, setup.ticket(), copy, wait_for=60, say=said.append)
    assert said == [] and not copy.exists()
    assert list((setup.tmp / "node").iterdir()) == []


def test_a_copy_cut_short_is_an_unreachable_server(tmp_path: Path) -> None:
    from orchestrator import delivery

    doors = tmp_path / "doors"
    doors.mkdir()
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(doors / "git.sock"))
    listener.listen()

    def send_too_little() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.makefile("rb").readline()
            conn.sendall(json.dumps({"ok": True, "said": "x", "size": 500}).encode() + b"\n" + b"y" * 10)

    thread = threading.Thread(target=send_too_little)
    thread.start()
    with pytest.raises(GitError, match="the remote end hung up unexpectedly after 10 of 500 bytes") as caught:
        worker_channel.copy_mirror(doors, "git-x.y", tmp_path / "node" / "mirror.git")
    thread.join()
    listener.close()
    assert delivery.unreachable(caught.value)
    assert list((tmp_path / "node").iterdir()) == []


def test_a_copy_waits_for_a_control_plane_that_comes_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    doors = tmp_path / "doors"
    doors.mkdir()
    said: list[str] = []
    started: list[Setup] = []
    monkeypatch.setattr(worker_channel, "WAIT_PAUSES", (0.2,))

    def come_back(line: str) -> None:
        said.append(line)
        if len(said) == 1:
            (tmp_path / "later").mkdir()
            started.append(Setup(tmp_path / "later"))
            os.symlink(started[0].doors / "git.sock", doors / "git.sock")

    copy = tmp_path / "node" / "mirror.git"
    found = worker_channel.copy_mirror(doors, Tickets(KEY).make(GIT, "task-001", 1), copy, wait_for=60, say=come_back)
    assert found.startswith("copied the mirror: 1 branch,") and len(said) == 1
    assert branches(copy) == branches(started[0].mirror.path)
