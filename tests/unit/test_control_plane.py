"""The control plane's parts on this machine, without Docker: what the manager may ask over the
channel (policy), the channel itself, the hand-over of the manager's own branch, and the mirror.
tests/e2e/test_control_plane.py runs them in containers; tests/e2e/test_hostile_manager.py attacks
them there."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator import git as orchestrator_git
from orchestrator import handover
from orchestrator.control import policy
from orchestrator.control.channel import MAX_COMMANDS, ChannelServer, Request, forward
from orchestrator.control.mirror import Mirror
from orchestrator.errors import InvalidInput, UserError
from tests.support.paths import ROOT

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def git(cwd: Path, *args: str) -> str:
    proc = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, **GIT_ENV}, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# --- What the manager may ask.

ENV = {"ORCHESTRATION_DIR": "/orchestration", "REPO_URL": "git@example.com:team/app.git", "REPO_BRANCH": "main"}


def checked(command: str, *argv: str) -> None:
    policy.check(Request(command, argv), ENV)


@pytest.mark.parametrize(
    "argv",
    [
        ("submit", "--prompt", "add a button"),
        ("status",),
        ("status", "--batch", "all"),
        ("start", "--parallel", "2"),
        ("merge", "--all", "--push"),
        ("logs", "task-001"),
        ("batch", "new", "Login screen"),
        ("push", "orchestrator/integration", "--bundle", ".orchestrator-handover/x.bundle"),
        ("--help",),
        ("no-such-command",),
    ],
)
def test_the_operations_of_a_batch_pass(argv: tuple[str, ...]) -> None:
    checked("orch", *argv)


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (("dispatch",), "`orch dispatch` is the control plane's own"),
        (("status", "--orchestration-dir", "/"), "--orchestration-dir is the control plane's"),
        # An abbreviation argparse takes is read as the command reads it.
        (("status", "--orch", "/etc"), "--orchestration-dir is the control plane's"),
        (("start", "--engine", "swarm"), "--engine is the control plane's"),
        (("merge", "--repo-dir", "/manager-workspace/repo"), "--repo-dir is the control plane's"),
        (("merge", "--branch-prefix", ""), "--branch-prefix is the control plane's"),
    ],
)
def test_the_control_planes_choices_are_refused_in_orch(argv: tuple[str, ...], named: str) -> None:
    with pytest.raises(InvalidInput, match=named):
        checked("orch", *argv)


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (("--image-prefix", "evil/", "flutter", "task-001"), "--image-prefix"),
        (("--volume", "other-orchestration", "flutter", "task-001"), "--volume"),
        (("--network", "host", "flutter", "task-001"), "--network"),
        (("flutter", "task-001", "--repo", "https://attacker.example/x.git"), "--repo"),
        (("flutter", "task-001", "--api-url", "http://attacker.example"), "--api-url"),
        (("flutter", "task-001", "--ssh-key", "/home/claude/.ssh/id_ed25519"), "--ssh-key"),
        (("flutter", "task-001", "--engine", "swarm"), "--engine"),
        (("flutter", "task-001", "--branch", "release"), "--branch"),
        # Spelled so that a check of its own could read it otherwise: abbreviated, with "=", before
        # the positionals. The policy reads it with the parser spawn.serve then runs.
        (("--image-p", "evil/", "flutter", "task-001"), "--image-prefix"),
        (("flutter", "task-001", "--rep=https://attacker.example/x.git"), "--repo"),
        (("--api-url=http://attacker.example", "flutter", "task-001"), "--api-url"),
        (("flutter", "task-001", "--netw", "host"), "--network"),
    ],
)
def test_the_control_planes_choices_are_refused_in_spawn_worker(argv: tuple[str, ...], named: str) -> None:
    with pytest.raises(InvalidInput, match=f"{named} is the control plane's to choose"):
        checked("spawn-worker", *argv)


def test_a_plain_spawn_worker_passes() -> None:
    checked("spawn-worker", "flutter", "task-001")
    checked("spawn-worker", "flutter", "task-001", "--timeout", "600", "--memory", "2g")


def test_a_request_names_one_of_two_commands_and_carries_strings() -> None:
    with pytest.raises(InvalidInput, match="not 'sh'"):
        Request.from_json({"command": "sh", "argv": ["-c", "id"]})
    with pytest.raises(InvalidInput, match="argv must be a list of strings"):
        Request.from_json({"command": "orch", "argv": ["status", 1]})
    with pytest.raises(InvalidInput, match="argv must be a list of strings"):
        Request.from_json({"command": "orch", "argv": ["status\0"]})
    assert Request.from_json({"command": "orch", "argv": [], "columns": 10**9}).columns == 80


# --- The channel.


@pytest.fixture
def channel(tmp_path: Path) -> Iterator[ChannelServer]:
    # The commands run as in the control plane's image, where the package is installed.
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "ORCHESTRATION_DIR": str(tmp_path / "orchestration")}
    server = ChannelServer(tmp_path / "control.sock", check=lambda r: policy.check(r, env), env=env).start()
    yield server
    server.stop()


def exchange(path: Path, request: dict[str, object]) -> list[dict[str, object]]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(path))
        sock.sendall(json.dumps(request).encode() + b"\n")
        with sock.makefile("rb") as answers:
            return [json.loads(line) for line in answers]


def test_the_channel_runs_the_command_and_sends_its_output_and_exit_code(channel: ChannelServer) -> None:
    frames = exchange(channel.path, {"command": "orch", "argv": ["--help"]})
    assert frames[-1] == {"exit": 0}
    assert "usage: orch" in "".join(str(f.get("out", "")) for f in frames)


def test_the_channel_refuses_what_the_policy_refuses_and_runs_nothing(channel: ChannelServer, tmp_path: Path) -> None:
    frames = exchange(channel.path, {"command": "orch", "argv": ["dispatch"]})
    assert frames == [
        {"err": "orch: error: `orch dispatch` is the control plane's own; the manager may not run it\n"},
        {"exit": 2},
    ]
    frames = exchange(channel.path, {"command": "bash", "argv": ["-c", "id"]})
    assert "not 'bash'" in str(frames[0]["err"]) and frames[-1] == {"exit": 2}
    assert not (tmp_path / "orchestration").exists()


def test_the_client_prints_what_the_command_printed(channel: ChannelServer, capsys: pytest.CaptureFixture) -> None:
    assert forward(channel.path, Request("orch", ("status", "--orchestration-dir", "/x"))) == 2
    assert "--orchestration-dir is the control plane's to choose" in capsys.readouterr().err
    assert forward(channel.path.with_name("nowhere.sock"), Request("orch", ("status",)), reconnect=0.5) == 1
    err = capsys.readouterr().err
    assert "waiting for the control plane" in err and "the control plane cannot be reached" in err


def test_a_manager_holding_every_slot_gets_a_refusal_not_the_last_process(tmp_path: Path) -> None:
    release = threading.Event()
    held = threading.Semaphore(0)

    def hold(_request: Request) -> None:
        held.release()
        release.wait(60)
        raise InvalidInput("released")

    server = ChannelServer(tmp_path / "c.sock", check=hold, env={}).start()
    socks = []
    try:
        for _ in range(MAX_COMMANDS):
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(str(server.path))
            sock.sendall(b'{"command": "orch", "argv": []}\n')
            socks.append(sock)
        for _ in range(MAX_COMMANDS):
            assert held.acquire(timeout=30)
        frames = exchange(server.path, {"command": "orch", "argv": []})
        assert frames == [
            {"err": f"control plane: error: {MAX_COMMANDS} commands run at once already; try again\n"},
            {"exit": 1},
        ]
    finally:
        release.set()
        for sock in socks:
            sock.close()
        server.stop()


# --- The hand-over of the manager's branch.


class Repos:
    """origin, the control plane's clone of it, and the manager's clone (whose workspace the
    control plane reads, as it does the manager's volume, read-only)."""

    def __init__(self, tmp: Path):
        self.origin = tmp / "origin.git"
        seed = tmp / "seed"
        seed.mkdir()
        git(seed, "init", "-q", "-b", "main")
        (seed / "README.md").write_text("hello\n")
        git(seed, "add", "-A")
        git(seed, "commit", "-qm", "seed")
        git(tmp, "clone", "-q", "--bare", str(seed), str(self.origin))
        self.control = tmp / "control" / "repo"
        git(tmp, "clone", "-q", str(self.origin), str(self.control))
        self.workspace = tmp / "manager"
        self.manager = self.workspace / "repo"
        git(tmp, "clone", "-q", str(self.origin), str(self.manager))

    def commit(self, clone: Path, branch: str, path: str, text: str) -> str:
        git(clone, "checkout", "-q", "-B", branch)
        (clone / path).write_text(text)
        git(clone, "add", "-A")
        git(clone, "commit", "-qm", f"edit {path}")
        return git(clone, "rev-parse", "HEAD").strip()

    def hand_over(self, branch: str) -> str:
        made = handover.make_bundle(self.manager, branch)
        bundle = handover.read_bundle(Path(handover.HANDOVER_DIR) / made.name, self.workspace)
        try:
            return handover.push(self.control, bundle, branch, url=str(self.origin), env={}, scrub=str)
        finally:
            bundle.unlink()


@pytest.fixture
def repos(tmp_path: Path) -> Repos:
    return Repos(tmp_path)


def test_the_managers_branch_is_pushed_as_a_fast_forward(repos: Repos) -> None:
    tip = repos.commit(repos.manager, "orchestrator/integration", "a.txt", "merged\n")
    assert repos.hand_over("orchestrator/integration") == "pushed orchestrator/integration to origin"
    assert git(repos.origin, "rev-parse", "orchestrator/integration").strip() == tip
    tip = repos.commit(repos.manager, "orchestrator/integration", "a.txt", "merged again\n")
    assert repos.hand_over("orchestrator/integration") == "pushed orchestrator/integration to origin (1 commit)"
    assert git(repos.origin, "rev-parse", "orchestrator/integration").strip() == tip
    assert repos.hand_over("orchestrator/integration") == "origin's orchestrator/integration holds it already"


def test_a_branch_that_rewrites_origins_is_never_forced(repos: Repos) -> None:
    repos.commit(repos.manager, "orchestrator/integration", "a.txt", "one\n")
    repos.hand_over("orchestrator/integration")
    before = git(repos.origin, "rev-parse", "orchestrator/integration").strip()
    git(repos.manager, "reset", "-q", "--hard", "main")
    repos.commit(repos.manager, "orchestrator/integration", "a.txt", "rewritten\n")
    with pytest.raises(UserError, match="nothing is ever force-pushed"):
        repos.hand_over("orchestrator/integration")
    assert git(repos.origin, "rev-parse", "orchestrator/integration").strip() == before


@pytest.mark.parametrize("branch", ["main", "release", "orchestratorX", "refs/heads/main", "orchestrator/../main"])
def test_the_manager_pushes_under_the_prefix_only(branch: str) -> None:
    with pytest.raises(InvalidInput):
        handover.check_target(branch, "orchestrator/", "orchestrator/integration")
    assert handover.check_target("orchestrator/fix-1", "orchestrator/", "orchestrator/integration")


def test_a_hand_over_is_read_as_a_file_of_the_managers_and_nothing_else(repos: Repos, tmp_path: Path) -> None:
    secret = tmp_path / "control-home" / "credential"
    secret.parent.mkdir()
    secret.write_text("sk-ant-secret\n")
    folder = repos.workspace / handover.HANDOVER_DIR
    folder.mkdir()
    (folder / "link.bundle").symlink_to(secret)
    os.mkfifo(folder / "fifo.bundle")
    for name in ("link.bundle", "fifo.bundle"):
        with pytest.raises(UserError, match=r"cannot be read|is not a file"):
            handover.read_bundle(Path(handover.HANDOVER_DIR) / name, repos.workspace)
    with pytest.raises(InvalidInput, match="not a hand-over"):
        handover.read_bundle(Path("elsewhere") / "x.bundle", repos.workspace)
    # The folder itself a link to the control plane's files: not followed either.
    (folder / "link.bundle").unlink()
    (folder / "fifo.bundle").unlink()
    folder.rmdir()
    folder.symlink_to(secret.parent)
    with pytest.raises(UserError, match="cannot be read"):
        handover.read_bundle(Path(handover.HANDOVER_DIR) / "credential", repos.workspace)


def test_a_bundle_of_another_history_is_refused(repos: Repos, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    git(other, "init", "-q", "-b", "orchestrator/integration")
    (other / "x").write_text("x")
    git(other, "add", "-A")
    git(other, "commit", "-qm", "unrelated")
    git(other, "commit", "-qm", "child", "--allow-empty")
    bundle = tmp_path / "other.bundle"
    git(other, "bundle", "create", "-q", str(bundle), "orchestrator/integration", "^HEAD~1")
    with pytest.raises(UserError, match="does not fit origin's history"):
        handover.push(repos.control, bundle, "orchestrator/integration", url=str(repos.origin), env={}, scrub=str)
    assert "orchestrator/integration" not in git(repos.origin, "branch", "--list")


# --- The mirror.


def test_the_mirror_holds_origins_branches_and_refuses_another_repository(repos: Repos, tmp_path: Path) -> None:
    mirror = Mirror(tmp_path / "mirror", str(repos.origin), env={}, scrub=str)
    mirror.refresh()
    assert git(mirror.path, "rev-parse", "main") == git(repos.origin, "rev-parse", "main")
    other = Mirror(tmp_path / "mirror", str(tmp_path / "another.git"), env={}, scrub=str)
    with pytest.raises(UserError, match=r"the mirror kept for this orchestration is of .*origin\.git, not of"):
        other.refresh()


def test_a_workers_clone_borrows_from_the_mirror_which_all_may_read(repos: Repos, tmp_path: Path) -> None:
    mirror = Mirror(tmp_path / "mirror", str(repos.origin), env={}, scrub=str)
    umask = os.umask(0o007)  # the control plane's
    try:
        mirror.refresh()
    finally:
        os.umask(umask)
    # origin moves on after the mirror's fetch: the clone gets that from origin, the rest from the mirror.
    work = tmp_path / "work"
    subprocess.run(["git", "clone", "-q", str(repos.origin), str(work)], check=True)
    (work / "later.txt").write_text("later")
    git(work, "add", "-A")
    git(work, "commit", "-qm", "Later")
    git(work, "push", "-q", "origin", "HEAD:main")
    trace = tmp_path / "packets"
    clone = tmp_path / "clone"
    env = {**os.environ, "GIT_TRACE_PACKET": str(trace)}
    orchestrator_git.clone(f"file://{repos.origin}", "main", clone, scrub=str, env=env, reference=mirror.path)
    assert git(clone, "rev-parse", "HEAD") == git(repos.origin, "rev-parse", "main")
    # It told origin what the mirror has (so origin sent only the rest), and borrows the rest.
    assert "have " in trace.read_text()
    alternates = (clone / ".git" / "objects" / "info" / "alternates").read_text().split()
    assert alternates == [str(mirror.path / "objects")]
    git(clone, "fsck", "--no-dangling")
    # Its objects are readable by others: a worker's agent borrows them through its clone.
    objects = [os.path.join(d, f) for d, _, fs in os.walk(mirror.path / "objects") for f in fs]
    assert objects and all(os.stat(path).st_mode & 0o004 for path in objects)


def test_the_control_plane_has_help() -> None:
    argv = [sys.executable, "-m", "orchestrator.control.plane", "--help"]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and "control plane" in proc.stdout


def test_a_look_cut_short_by_a_restarting_control_plane_is_asked_again(tmp_path: Path, capsys) -> None:
    path = tmp_path / "c.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen()
    asked: list[str] = []

    def serve(count: int) -> None:
        for n in range(count):
            conn, _ = server.accept()
            with conn, conn.makefile("rb") as lines:
                asked.append(json.loads(lines.readline())["argv"][0])
                if n == 0:
                    conn.sendall(b'{"out": "half a tab')  # the control plane goes away mid-line
                else:
                    conn.sendall(b'{"out": "all of it\\n"}\n{"exit": 0}\n')

    thread = threading.Thread(target=serve, args=(2,))
    thread.start()
    assert forward(path, Request("orch", ("status",))) == 0
    thread.join(10)
    assert asked == ["status", "status"]
    captured = capsys.readouterr()
    assert captured.out == "all of it\n" and "the control plane went away; asking again" in captured.err
    # What changes something is not asked twice: the manager hears that it was cut, and how to look.
    thread = threading.Thread(target=serve, args=(1,))
    thread.start()
    assert forward(path, Request("orch", ("submit", "--prompt", "p"))) == 1
    thread.join(10)
    assert "went away during the command (`orch status` says what it did)" in capsys.readouterr().err
    server.close()


def test_a_door_joins_a_tcp_port_to_a_unix_socket_both_ways(tmp_path: Path) -> None:
    from orchestrator.control.door import Door, listen_tcp, listen_unix, unix

    backend = listen_unix(tmp_path / "relay.sock", 0o600)

    def echo() -> None:
        conn, _ = backend.accept()
        with conn:
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
            conn.sendall(b"got " + str(len(data)).encode())

    thread = threading.Thread(target=echo)
    thread.start()
    door = Door(listen_tcp("127.0.0.1"), unix(tmp_path / "relay.sock")).start()
    try:
        with socket.create_connection(door.listener.getsockname()[:2], timeout=30) as client:
            client.sendall(b"x" * 1_000_000)
            client.shutdown(socket.SHUT_WR)  # the end of the request reaches the other side
            answer = b""
            while chunk := client.recv(65536):
                answer += chunk
        assert answer == b"got 1000000"
    finally:
        door.close()
        thread.join(10)
        backend.close()


def test_the_policy_prints_nothing_of_its_own_while_other_threads_print(capsys) -> None:
    # The control plane's channel checks requests in threads while the rest of it prints its log.
    from orchestrator.control import policy

    env = {"ORCHESTRATOR_ENGINE": "docker"}
    policy.check(Request("orch", ("--help",)), env)
    policy.check(Request("spawn-worker", ("--no-such-option",)), env)
    assert capsys.readouterr() == ("", "")
