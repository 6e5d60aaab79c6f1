"""The board as the control plane serves it: on the container's address for the host alone, its
secret kept for the person, `orch dashboard`, the manager refused the login link, and run.py's
--dashboard-port publishing the port on the host's loopback only."""

from __future__ import annotations

import http.client
import socket
import stat
from pathlib import Path

import pytest

from orchestrator import launch
from orchestrator.control import policy
from orchestrator.control.board_serve import board_secret, gateways, host_only, show_board
from orchestrator.control.channel import Request
from orchestrator.control.dashboard import Dashboard
from orchestrator.errors import InvalidInput, UserError
from orchestrator.store import OrchestrationDir
from tests.support.batch_helpers import FakeEngine, context
from tests.support.fake_board import FakeBoard
from tests.support.fake_docker import FakeDocker

# /proc/net/route of a container on a Docker bridge: its default route through the gateway.
ROUTES = """\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010011AC\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_host_is_the_networks_gateway_and_the_workers_beside_are_not() -> None:
    found = gateways(ROUTES)
    assert found == frozenset({"172.17.0.1"})
    allowed = host_only(found)
    assert allowed("172.17.0.1") and allowed("127.0.0.1") and allowed("::ffff:172.17.0.1") and allowed("::1")
    assert not allowed("172.17.0.5")  # a worker on the same network
    assert not allowed("10.0.0.1") and not allowed("not an address")
    assert gateways("Iface\tDestination\tGateway\n") == frozenset()


def test_a_board_on_the_containers_address_answers_only_to_127_0_0_1_and_the_host(backend: FakeBoard) -> None:
    port = free_port()
    peers: list[str] = []

    def only_the_first(peer: str) -> bool:
        peers.append(peer)
        return len(peers) == 1

    with Dashboard(backend, "127.0.0.1", port, bind="0.0.0.0", peer_allowed=only_the_first) as board:
        assert board.origin == f"http://127.0.0.1:{port}"
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/login", headers={"Host": f"127.0.0.1:{port}"})
        assert connection.getresponse().status == 200
        connection.close()
        # A peer it does not take is closed before anything is read or answered.
        refused = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        with pytest.raises((ConnectionError, http.client.RemoteDisconnected)):
            refused.request("GET", "/login", headers={"Host": f"127.0.0.1:{port}"})
            refused.getresponse()
        refused.close()
    assert peers == ["127.0.0.1", "127.0.0.1"]
    with pytest.raises(UserError, match="needs its port"):
        Dashboard(backend, "127.0.0.1", 0, bind="0.0.0.0")


def test_the_secret_is_made_once_and_read_by_its_user_alone(tmp_path: Path) -> None:
    secret = board_secret(tmp_path)
    assert len(secret) >= 40 and board_secret(tmp_path) == secret
    assert stat.S_IMODE((tmp_path / ".board-secret").stat().st_mode) == 0o600


def test_orch_dashboard_prints_the_address_and_the_login_link_only_when_asked(
    orch: OrchestrationDir, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    secret = board_secret(home)
    env = {"ORCHESTRATOR_DASHBOARD_PORT": "8765", "HOME": str(home), "ORCHESTRATOR_CONTROL_NAME": "me-control"}
    ctx = context(orch, FakeEngine(), env)
    assert show_board(ctx, login=False) == 0
    out, err = capsys.readouterr()
    assert out == "http://127.0.0.1:8765/\n" and secret not in out + err
    assert "`docker exec me-control orch dashboard --login`" in err
    assert show_board(ctx, login=True) == 0
    assert capsys.readouterr().out == f"http://127.0.0.1:8765/login#{secret}\n"
    with pytest.raises(UserError, match="no board here"):
        show_board(context(orch, FakeEngine(), {"HOME": str(home)}), login=True)
    with pytest.raises(UserError, match="not started"):
        show_board(context(orch, FakeEngine(), {**env, "HOME": str(tmp_path / "nobody")}), login=True)


@pytest.mark.parametrize("argv", [("dashboard", "--login"), ("dashboard", "--log"), ("dashboard", "--lo")])
def test_the_manager_is_refused_the_login_link(argv: tuple[str, ...]) -> None:
    env = {"ORCHESTRATION_DIR": "/orchestration"}
    policy.check(Request("orch", ("dashboard",)), env)
    with pytest.raises(InvalidInput, match="the board's login link is the person's"):
        policy.check(Request("orch", argv), env)


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, docker_socket: Path) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FAKE_DOCKER_VOLUMES", str(tmp_path / "volumes"))
    return docker_socket


def control_argv(fake_docker: FakeDocker) -> list[str]:
    found = [c["argv"] for c in fake_docker.find("create") if "claude-manager-control" in c["argv"]]
    assert len(found) == 1, fake_docker.argvs()
    return list(found[0])


@pytest.mark.parametrize(
    ("options", "published", "port"),
    [
        (["--dashboard-port", "8765"], "127.0.0.1:8765:8765", "8765"),
        (["--dashboard-port", "8765", "--network", "host"], None, "8765"),  # it listens on the host's loopback
        (["--dashboard-port", "off"], None, None),
    ],
)
def test_run_py_publishes_the_boards_port_on_the_hosts_loopback_alone(
    fake_docker: FakeDocker, host: Path, token_file: Path, options: list[str], published: str | None, port: str | None
) -> None:
    assert launch.main(["--no-login-check", "--no-repo", "--token", str(token_file), *options]) == 0
    argv = control_argv(fake_docker)
    publishes = [argv[i + 1] for i, arg in enumerate(argv) if arg in ("--publish", "-p")]
    assert publishes == ([published] if published else [])
    ports = [arg.split("=", 1)[1] for arg in argv if arg.startswith("ORCHESTRATOR_DASHBOARD_PORT=")]
    assert ports == ([port] if port else [])
    assert "ORCHESTRATOR_CONTROL_NAME=claude-manager-control" in argv
    manager = next(c["argv"] for c in fake_docker.find("create") if "claude-manager-control" not in c["argv"])
    assert "--publish" not in manager and not any("DASHBOARD" in arg for arg in manager)


def test_run_py_finds_a_free_port_by_default(fake_docker: FakeDocker, host: Path, token_file: Path) -> None:
    assert launch.main(["--no-login-check", "--no-repo", "--token", str(token_file)]) == 0
    argv = control_argv(fake_docker)
    published = argv[argv.index("--publish") + 1]
    address, outside, inside = published.split(":")
    assert address == "127.0.0.1" and outside == inside and 0 < int(outside) < 65536
    assert f"ORCHESTRATOR_DASHBOARD_PORT={outside}" in argv
    assert launch.dashboard_port("auto") != 0 and launch.dashboard_port(None) is not None
    with pytest.raises(InvalidInput, match="--dashboard-port"):
        launch.dashboard_port("70000")


def test_the_original_layout_has_no_board(fake_docker: FakeDocker, host: Path, token_file: Path) -> None:
    code = launch.main(["--no-login-check", "--no-repo", "--token", str(token_file), "--manager-docker-socket"])
    assert code == 0
    assert not any("--publish" in c["argv"] or "DASHBOARD" in " ".join(c["argv"]) for c in fake_docker.calls())
