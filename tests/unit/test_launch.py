"""bin/run.py against a fake docker that records its argv."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import launch
from tests.support.fake_docker import FakeDocker
from tests.support.paths import FAKES, ROOT, SAVED

CERT = """-----BEGIN CERTIFICATE-----
MIIBszCCAVmgAwIBAgIUJ0example0000000000000000000wCgYIKoZIzj0EAwIw
-----END CERTIFICATE-----
"""


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, docker_socket: Path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FAKE_DOCKER_VOLUMES", str(tmp_path / "volumes"))
    monkeypatch.setenv("GIT_USER_NAME", "Ada")
    monkeypatch.setenv("GIT_USER_EMAIL", "ada@example.org")
    return docker_socket


def run(*argv: str, login_check: bool = False) -> int:
    """run.py; the check of the token against the API has tests of its own. Without --repo, a
    manager without workers (run.py refuses none at all: tests of their own)."""
    options = argv[: argv.index("--")] if "--" in argv else argv
    repo = [] if "--repo" in options else ["--no-repo"]
    return launch.main([*repo, *argv] if login_check else ["--no-login-check", *repo, *argv])


def created(fake_docker: FakeDocker, name: str = "claude-manager") -> dict:
    """The `docker create` of the container ``name``, as recorded."""
    found = [c for c in fake_docker.find("create") if c["argv"][c["argv"].index("--name") + 1] == name]
    assert len(found) == 1, fake_docker.argvs()
    return found[0]


SETTINGS = {
    "REPO_URL": "git@github.com:me/app.git",
    "REPO_BRANCH": "main",
    "ANTHROPIC_MODEL": "m1",
    "GIT_USER_NAME": "Ada",
    "GIT_USER_EMAIL": "ada@example.org",
    "ORCHESTRATOR_VOLUME": "orchestration-volume",
    "ORCHESTRATOR_IMAGE_PREFIX": "claude-",
    "ORCHESTRATOR_ENGINE": "docker",
    "ORCHESTRATOR_BRANCH_PREFIX": "orchestrator/",
    "ORCHESTRATOR_WORKER_MEMORY": "4g",
    "ORCHESTRATOR_WORKER_CPUS": "2",
    "ORCHESTRATOR_WORKER_PIDS": "1024",
    "ORCHESTRATOR_WORKER_DISK": "10g",
    "ORCHESTRATOR_STORAGE_QUOTA": "no",
    "ORCHESTRATOR_STOP_TIMEOUT": "120",
    "ORCHESTRATOR_API_IN_FLIGHT": "8",
    "ORCHESTRATOR_LOGIN_CHECK": "no",  # run() passes --no-login-check: the batch's orch start holds to it
}


def test_the_control_plane_holds_the_socket_and_the_secrets_and_the_manager_neither(
    fake_docker: FakeDocker, host: Path, token_file: Path, token: str, ssh_key: Path, tmp_path: Path
):
    host.parent.chmod(0o755)
    code = run("--repo", "git@github.com:me/app.git", "--token", str(token_file), "--model", "m1", "--ssh-key",
               str(ssh_key))  # fmt: skip
    assert code == 0
    for volume in ("orchestration-volume", "claude-manager-workspace", "claude-manager-mirror", "claude-manager-run",
                   "claude-manager-control-workspace"):  # fmt: skip
        assert fake_docker.find("volume", "create", volume)
    control = created(fake_docker, "claude-manager-control")["argv"]
    assert f"{host.parent}:/run/host-docker" in control
    assert f"DOCKER_HOST=unix:///run/host-docker/{host.name}" in control
    assert control[control.index("--group-add") + 1] == str(host.stat().st_gid)
    assert "orchestration-volume:/orchestration" in control
    assert "claude-manager-workspace:/manager-workspace:ro" in control
    assert control[control.index("--label") + 1] == "orchestrator.role=control"
    assert control[-5:] == ["--", "python3", "-P", "-m", "orchestrator.control.plane"]
    assert control[control.index("--restart") + 1] == "on-failure"
    assert created(fake_docker, "claude-manager-control")["env"] == SETTINGS
    # The secrets go to the control plane, as files of its user; the manager gets none.
    copies = fake_docker.find("cp", "-")
    assert [c["argv"][-1] for c in copies] == ["claude-manager-control:/home/claude"]
    names = {m["name"]: m for m in copies[0]["tar"]}
    assert (names[".claude-token"]["data"], names[".claude-token"]["mode"]) == (token + "\n", 0o600)
    assert names[".ssh/id_ed25519"]["data"] == ssh_key.read_text()
    # The control plane is ready before the manager is created.
    order = [c["argv"][:2] for c in fake_docker.calls()]
    manager_created = next(
        i for i, c in enumerate(fake_docker.calls()) if c["argv"][:3] == ["create", "--name", "claude-manager"]
    )
    assert order.index(["start", "claude-manager-control"]) < manager_created
    manager = created(fake_docker)["argv"]
    joined = " ".join(manager)
    assert "/run/host-docker" not in joined and "--group-add" not in manager and str(host) not in joined
    assert "orchestration-volume:/orchestration:ro" in manager
    tasks = tmp_path / "volumes" / "orchestration-volume" / "tasks"
    assert manager[manager.index("--mount") + 1] == f"type=bind,source={tasks},target=/orchestration/tasks", manager
    assert "claude-manager-mirror:/mirror:ro" in manager and "claude-manager-run:/run/orchestrator:ro" in manager
    assert manager[manager.index("--network") + 1] == "none"  # it reaches the control plane's sockets alone
    assert not fake_docker.find("network")
    assert "DOCKER_HOST=unix:///run/orchestrator/docker.sock" in manager
    assert "ORCHESTRATOR_CONTROL=/run/orchestrator" in manager
    assert token not in repr(fake_docker.argvs()) and token not in repr([c["env"] for c in fake_docker.calls()])
    assert fake_docker.find("start", "--attach", "--interactive", "claude-manager")
    # The control plane ends with the manager.
    assert order.index(["stop", "--time"]) > order.index(["start", "--attach"])
    assert fake_docker.find("rm", "--force", "claude-manager-control")
    # The doors and the ticket key are the shared volume's: the next manager on the volume serves its workers.
    assert "orchestration-volume-doors:/run/orchestrator-workers" in control
    assert "orchestration-volume-keys:/run/orchestrator-keys" in control


def test_the_relays_bound_on_requests_in_flight_is_run_pys(fake_docker: FakeDocker, host: Path, token_file: Path):
    host.parent.chmod(0o755)
    assert run("--token", str(token_file), "--api-in-flight", "3") == 0
    assert created(fake_docker, "claude-manager-control")["env"]["ORCHESTRATOR_API_IN_FLIGHT"] == "3"


def test_a_bound_of_0_is_refused(fake_docker: FakeDocker, host: Path, token_file: Path, capsys):
    host.parent.chmod(0o755)
    assert run("--token", str(token_file), "--api-in-flight", "0") == 2
    assert "ORCHESTRATOR_API_IN_FLIGHT must be a positive whole number, not '0'" in capsys.readouterr().err
    assert not fake_docker.find("create")


def test_manager_docker_socket_gives_the_manager_the_socket_the_volume_and_the_secrets(
    fake_docker: FakeDocker, host: Path, token_file: Path, token: str
):
    host.parent.chmod(0o755)
    code = run("--repo", "git@github.com:me/app.git", "--token", str(token_file), "--model", "m1",
               "--manager-docker-socket")  # fmt: skip
    assert code == 0
    assert not fake_docker.find("network") and len(fake_docker.find("create")) == 1
    assert fake_docker.find("volume", "create", "orchestration-volume")
    create = fake_docker.find("create")[0]
    argv = create["argv"]
    assert argv[argv.index("--name") + 1] == "claude-manager"
    assert f"{host.parent}:/run/host-docker" in argv  # the socket's folder: a new socket file shows there
    assert f"DOCKER_HOST=unix:///run/host-docker/{host.name}" in argv
    assert argv[argv.index("--group-add") + 1] == str(host.stat().st_gid)
    assert "orchestration-volume:/orchestration" in argv
    assert "claude-manager-workspace:/workspace" in argv and fake_docker.find(
        "volume", "create", "claude-manager-workspace"
    )
    assert "--rm" not in argv and "--interactive" in argv  # run.py removes it once it has ended
    assert "--tty" not in argv  # stdin is not a terminal under pytest
    assert argv[-1] == "claude-orchestrator"
    # Settings only; the token is copied in as a file, for the manager's user.
    assert create["env"] == SETTINGS
    cp = fake_docker.find("cp", "-", "claude-manager:/home/claude")[0]
    secret = next(m for m in cp["tar"] if m["name"] == ".claude-token")
    assert (secret["data"], secret["mode"], secret["uid"]) == (token + "\n", 0o600, 1000)
    assert token not in repr(fake_docker.argvs()) and token not in repr([c["env"] for c in fake_docker.calls()])
    assert fake_docker.find("start", "--attach", "--interactive", "claude-manager")
    assert not fake_docker.find("build")  # the images exist


def test_a_command_after_double_dash_replaces_the_agent(fake_docker: FakeDocker, host: Path, token_file: Path):
    assert run("--token", str(token_file), "--network", "host", "--", "bash", "-c", "echo --repo") == 0
    argv = created(fake_docker)["argv"]
    assert argv[-5:] == ["claude-orchestrator", "--", "bash", "-c", "echo --repo"]
    assert "REPO_URL" not in created(fake_docker)["env"]
    # --network is the control plane's (and the workers'); the manager has none, whatever it is.
    control = created(fake_docker, "claude-manager-control")["argv"]
    assert control[control.index("--network") + 1] == "host" and argv[argv.index("--network") + 1] == "none"


def test_the_manager_s_exit_code_is_returned(fake_docker: FakeDocker, host: Path, token_file: Path, monkeypatch):
    monkeypatch.setenv("FAKE_DOCKER_ATTACH_RC", "7")
    assert run("--token", str(token_file), "--", "false") == 7
    assert run("--token", str(token_file), "--manager-docker-socket", "--", "false") == 7


def test_the_ssh_key_is_copied_into_the_container_not_mounted(
    fake_docker: FakeDocker, host: Path, token_file: Path, ssh_key: Path
):
    assert run("--token", str(token_file), "--ssh-key", str(ssh_key), "--manager-docker-socket") == 0
    cp = fake_docker.find("cp", "-", "claude-manager:/home/claude")[0]
    key = next(m for m in cp["tar"] if m["name"] == ".ssh/id_ed25519")
    assert (key["mode"], key["uid"], key["data"]) == (0o600, 1000, ssh_key.read_text())
    assert not any(str(ssh_key) in arg for argv in fake_docker.argvs() for arg in argv)


def test_the_default_key_is_used_when_it_exists(
    fake_docker: FakeDocker, host: Path, token_file: Path, ssh_key: Path, tmp_path: Path
):
    (tmp_path / "home" / ".ssh").mkdir(parents=True)
    (tmp_path / "home" / ".ssh" / "id_ed25519").write_text(ssh_key.read_text())
    assert run("--token", str(token_file)) == 0
    assert fake_docker.find("cp", "-")


def test_missing_images_are_built_worker_after_manager_with_the_ca_certificates(
    fake_docker: FakeDocker, host: Path, token_file: Path, tmp_path: Path, monkeypatch
):
    monkeypatch.setenv("FAKE_DOCKER_MISSING_IMAGES", "claude-orchestrator,claude-flutter")
    cert = tmp_path / "proxy.pem"
    cert.write_text(CERT)
    assert run("--token", str(token_file), "--ca-cert", str(cert)) == 0
    builds = fake_docker.find("build")
    assert [b["argv"][b["argv"].index("--tag") + 1] for b in builds] == ["claude-orchestrator", "claude-flutter"]
    assert "extra-0-proxy.crt" in builds[0]["ca_certificates"]
    assert builds[1]["argv"][-1] == str(ROOT / "flutter")
    assert "RUNTIME_IMAGE=claude-orchestrator" in builds[1]["argv"]
    # The certificate went into a copy of the context, never into the tree.
    assert not list((ROOT / "orchestrator" / "ca-certificates").glob("extra-*"))


def test_build_rebuilds_and_ca_certificates_come_from_the_environment(
    fake_docker: FakeDocker, host: Path, token_file: Path, tmp_path: Path, monkeypatch
):
    certs = [tmp_path / "a.crt", tmp_path / "b.crt"]
    for cert in certs:
        cert.write_text(CERT)
    monkeypatch.setenv("ORCHESTRATOR_CA_CERTS", ":".join(map(str, certs)))
    assert run("--token", str(token_file), "--build") == 0
    builds = fake_docker.find("build")
    assert len(builds) == 2
    assert {"extra-0-a.crt", "extra-1-b.crt"} <= set(builds[0]["ca_certificates"])


def refused(capsys, *argv: str) -> str:
    assert run(*argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("run.py: error: ") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    return err


def test_an_unreadable_token_file_is_one_line(fake_docker: FakeDocker, host: Path, tmp_path: Path, capsys):
    assert "token file" in refused(capsys, "--token", str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert "is empty" in refused(capsys, "--token", str(empty))
    assert "is a directory" in refused(capsys, "--token", str(tmp_path))
    assert not fake_docker.find("create")


def test_the_default_token_file_is_named_when_missing(fake_docker: FakeDocker, host: Path, capsys, tmp_path: Path):
    assert f"token file {tmp_path}/home/.claude-token does not exist" in refused(capsys)


def test_bad_key_and_bad_certificate_are_one_line(
    fake_docker: FakeDocker, host: Path, token_file: Path, tmp_path: Path, capsys
):
    assert "SSH key" in refused(capsys, "--token", str(token_file), "--ssh-key", str(tmp_path / "nokey"))
    not_a_key = tmp_path / "not-a-key"
    not_a_key.write_text("hello")
    assert "does not look like a private key" in refused(
        capsys, "--token", str(token_file), "--ssh-key", str(not_a_key)
    )
    assert "holds no PEM certificate" in refused(capsys, "--token", str(token_file), "--ca-cert", str(not_a_key))


def test_docker_missing_or_down_is_one_line(
    host: Path, token_file: Path, tmp_path: Path, capsys, monkeypatch, fake_docker
):
    monkeypatch.setenv("FAKE_DOCKER_DOWN", "1")
    assert "Docker is not usable" in refused(capsys, "--token", str(token_file))
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    assert "docker command was not found" in refused(capsys, "--token", str(token_file))


def test_a_remote_docker_host_is_refused(fake_docker: FakeDocker, host: Path, token_file: Path, capsys, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.0.0.1:2375")
    assert "needs a local Docker socket" in refused(capsys, "--token", str(token_file))


def test_a_manager_that_exists_already_is_explained(
    fake_docker: FakeDocker, host: Path, token_file: Path, capsys, monkeypatch, tmp_path
):
    # The fake answers `create` of a taken name like the real engine.
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "docker").write_text(
        "#!/bin/sh\n"
        'if [ "$1" = create ]; then echo \'Error response from daemon: Conflict. The container name "/claude-manager" '
        'is already in use by container \\"abc\\".\' >&2; exit 1; fi\n'
        f'exec {FAKES}/docker "$@"\n'
    )
    (fake / "docker").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{__import__('os').environ['PATH']}")
    assert "docker attach claude-manager" in refused(capsys, "--token", str(token_file))


def test_help_lists_every_option():
    out = subprocess.run(
        [sys.executable, str(ROOT / "bin" / "run.py"), "--help"], capture_output=True, text=True, check=False
    ).stdout
    for option in ("--repo", "--branch", "--token", "--ssh-key", "--model", "--build", "--ca-cert", "-- COMMAND"):
        assert option in out
    assert "claude-opus-4-5-20251101" in out and "~/.claude-token" in out


def test_every_bin_command_has_help():
    for name in ("run.py", "spawn-worker.py"):
        proc = subprocess.run(
            [sys.executable, str(ROOT / "bin" / name), "--help"], capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0 and proc.stdout.startswith("usage:")
    assert SAVED.is_dir()


def test_the_api_url_and_the_limits_reach_the_manager(fake_docker: FakeDocker, host: Path, token_file: Path):
    assert run("--token", str(token_file), "--api-url", "https://llm-gateway.example/anthropic", "--memory", "6g",
               "--cpus", "3", "--pids-limit", "500", "--stop-timeout", "300") == 0  # fmt: skip
    env = created(fake_docker)["env"]
    assert env == created(fake_docker, "claude-manager-control")["env"]
    assert env["ANTHROPIC_BASE_URL"] == "https://llm-gateway.example/anthropic"
    assert (env["ORCHESTRATOR_WORKER_MEMORY"], env["ORCHESTRATOR_WORKER_CPUS"]) == ("6g", "3")
    assert (env["ORCHESTRATOR_WORKER_PIDS"], env["ORCHESTRATOR_STOP_TIMEOUT"]) == ("500", "300")


def test_the_api_url_defaults_to_the_environment(fake_docker: FakeDocker, host: Path, token_file: Path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9999")
    assert run("--token", str(token_file), "--network", "host") == 0
    assert created(fake_docker)["env"]["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:9999"


def test_the_manager_is_removed_once_it_has_ended_and_one_left_by_an_engine_restart_is_replaced(
    fake_docker: FakeDocker, host: Path, token_file: Path
):
    # A manager that ended with the engine under it (no run.py was there to remove it).
    fake_docker.add_container("claude-manager", "inspect-exited.json")
    inspect = json.loads((fake_docker.containers / "claude-manager.json").read_text())
    inspect[0]["Config"]["Labels"] = {"orchestrator.role": "manager"}
    (fake_docker.containers / "claude-manager.json").write_text(json.dumps(inspect))
    assert run("--token", str(token_file)) == 0
    calls = [c["argv"][:3] for c in fake_docker.calls()]
    create = calls.index(["create", "--name", "claude-manager"])
    removals = [i for i, argv in enumerate(calls) if argv == ["rm", "--force", "claude-manager"]]
    assert removals[0] < create  # the old one, before the new one is created


def test_a_socket_in_a_closed_folder_is_mounted_itself(fake_docker: FakeDocker, host: Path, token_file: Path):
    host.parent.chmod(0o700)  # the control plane's user could not pass through it
    assert run("--token", str(token_file)) == 0
    argv = created(fake_docker, "claude-manager-control")["argv"]
    assert f"{host}:/run/host-docker/docker.sock" in argv
    assert "DOCKER_HOST=unix:///run/host-docker/docker.sock" in argv
