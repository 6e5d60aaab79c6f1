"""spawn-worker against a fake docker that records its argv."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from orchestrator import spawn
from orchestrator.control.channel import CHANNEL
from orchestrator.limits import WorkerLimits
from orchestrator.workerspec import worker_spec
from tests.support.fake_docker import FakeDocker
from tests.support.paths import ROOT


@pytest.fixture
def orchestration_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, token: str) -> Path:
    """The shared folder with task-001 in it, and what spawn-worker reads from the manager's
    environment: the folder, the repository, the token."""
    root = tmp_path / "orchestration"
    for sub in ("tasks", "results", "status", "logs"):
        (root / sub).mkdir(parents=True)
    (root / "tasks" / "task-001.json").write_text(json.dumps({"id": "task-001", "prompt": "Do it"}))
    monkeypatch.setenv("ORCHESTRATION_DIR", str(root))
    monkeypatch.setenv("REPO_URL", "git@github.com:me/app.git")
    monkeypatch.setenv("CLAUDE_CODE_OAUTH_TOKEN", token)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no default SSH key there
    return root


def run(*argv: str) -> int:
    return spawn.main(list(argv))


def test_starts_a_labelled_worker_with_everything_it_needs(
    fake_docker: FakeDocker, orchestration_dir: Path, token: str, capsys
):
    assert run("flutter", "task-001") == 0
    create = fake_docker.find("create")[0]
    argv = create["argv"]
    assert argv[argv.index("--name") + 1] == "worker-task-001"
    assert argv[-1] == "claude-flutter"
    assert "orchestrator.role=worker" in argv and "orchestrator.task-id=task-001" in argv
    assert "orchestrator.worker-type=flutter" in argv
    assert "orchestration-volume:/orchestration" in argv
    assert "--network" not in argv
    # Settings only: the token is copied in as a file, into the runtime's home.
    assert create["env"] == {
        "TASK_ID": "task-001",
        "WORKER_TYPE": "flutter",
        "REPO_URL": "git@github.com:me/app.git",
        "REPO_BRANCH": "main",
        "ANTHROPIC_MODEL": "claude-opus-4-5-20251101",
        "GIT_USER_NAME": "Claude Orchestrator",
        "GIT_USER_EMAIL": "orchestrator@localhost",
        "ORCHESTRATOR_BRANCH_PREFIX": "orchestrator/",
    }
    cp = fake_docker.find("cp", "-")[0]
    assert cp["argv"] == ["cp", "-", "worker-task-001:/root"]
    secret = next(m for m in cp["tar"] if m["name"] == ".claude-token")
    assert (secret["data"], secret["mode"], secret["uid"]) == (token + "\n", 0o600, 0)
    # Values travel through the environment: no NAME=value on the command line.
    assert not [a for a in argv if "=" in a and a.split("=")[0] in create["env"]]
    # Limited, with no capability but the runtime's, and time to hand the work back when stopped.
    assert argv[argv.index("--memory") + 1] == "4g" and argv[argv.index("--cpus") + 1] == "2"
    assert argv[argv.index("--pids-limit") + 1] == "1024" and argv[argv.index("--stop-timeout") + 1] == "120"
    assert argv[argv.index("--cap-drop") + 1] == "ALL"
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--cap-add"] == ["SETUID", "SETGID", "KILL"]
    assert argv[argv.index("--security-opt") + 1] == "no-new-privileges"
    assert fake_docker.find("start", "worker-task-001")
    status = json.loads((orchestration_dir / "status" / "task-001.json").read_text())
    assert (status["state"], status["container"], status["worker_type"]) == ("starting", "worker-task-001", "flutter")
    assert "docker logs -f worker-task-001" in capsys.readouterr().out


def test_the_token_is_on_no_command_line_and_in_no_file(
    fake_docker: FakeDocker, orchestration_dir: Path, token: str, capsys
):
    assert run("flutter", "task-001") == 0
    assert token not in json.dumps(fake_docker.argvs())
    assert token not in json.dumps([call["env"] for call in fake_docker.calls()])
    assert all(token not in p.read_text() for p in orchestration_dir.rglob("*") if p.is_file())
    assert token not in "".join(capsys.readouterr())


def test_options_and_environment_set_repo_model_network_volume_and_prefix(
    fake_docker: FakeDocker, orchestration_dir: Path, monkeypatch
):
    monkeypatch.setenv("ORCHESTRATOR_NETWORK", "host")
    monkeypatch.setenv("ORCHESTRATOR_VOLUME", "vol-x")
    monkeypatch.setenv("ORCHESTRATOR_IMAGE_PREFIX", "test-")
    monkeypatch.setenv("GIT_USER_NAME", "Ada")
    monkeypatch.setenv("ORCHESTRATOR_WORKER_MEMORY", "8g")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "https://gateway.example/anthropic")
    assert (
        run("flutter", "task-001", "--repo", "https://h/r.git", "--branch", "dev", "--model", "m1", "--timeout", "90",
            "--cpus", "1.5", "--pids-limit", "300")
        == 0
    )  # fmt: skip
    create = fake_docker.find("create")[0]
    argv = create["argv"]
    assert argv[argv.index("--network") + 1] == "host"
    assert "vol-x:/orchestration" in argv and argv[-1] == "test-flutter"
    assert (argv[argv.index("--memory") + 1], argv[argv.index("--cpus") + 1]) == ("8g", "1.5")
    assert argv[argv.index("--pids-limit") + 1] == "300"
    env = create["env"]
    assert (env["REPO_URL"], env["REPO_BRANCH"], env["ANTHROPIC_MODEL"]) == ("https://h/r.git", "dev", "m1")
    assert (env["TASK_TIMEOUT"], env["GIT_USER_NAME"]) == ("90", "Ada")
    assert env["ANTHROPIC_BASE_URL"] == "https://gateway.example/anthropic"


def test_the_ssh_key_is_copied_in_through_the_api(fake_docker: FakeDocker, orchestration_dir: Path, ssh_key: Path):
    assert run("flutter", "task-001", "--ssh-key", str(ssh_key)) == 0
    argvs = fake_docker.argvs()
    cp = fake_docker.find("cp", "-")[0]
    assert cp["argv"] == ["cp", "-", "worker-task-001:/root"]
    key = next(m for m in cp["tar"] if m["name"] == ".ssh/id_ed25519")
    assert (key["mode"], key["uid"], key["gid"]) == (0o600, 0, 0)
    assert key["data"] == ssh_key.read_text()
    folder = next(m for m in cp["tar"] if m["name"] == ".ssh")
    assert folder["mode"] == 0o700
    # Copied after create, before start; never bind-mounted.
    order = [a[0] for a in argvs]
    assert order.index("create") < order.index("cp") < order.index("start")
    assert not any(str(ssh_key) in arg for argv in argvs for arg in argv)


def test_the_token_may_come_from_a_file(fake_docker: FakeDocker, orchestration_dir: Path, monkeypatch, tmp_path: Path):
    monkeypatch.delenv("CLAUDE_CODE_OAUTH_TOKEN")
    (tmp_path / "tok").write_text("sk-from-file\n")
    assert run("flutter", "task-001", "--token", str(tmp_path / "tok")) == 0
    members = {m["name"]: m["data"] for m in fake_docker.find("cp", "-")[0]["tar"]}
    assert members[".claude-token"] == "sk-from-file\n"


def refused(capsys, code: int, *argv: str) -> str:
    assert run(*argv) == code
    err = capsys.readouterr().err
    assert err.startswith("spawn-worker: error: ") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    return err


def test_a_running_worker_for_the_task_refuses_a_second(fake_docker: FakeDocker, orchestration_dir: Path, capsys):
    fake_docker.add_container("worker-task-001", "inspect-running.json")
    assert "already has a running worker" in refused(capsys, 1, "flutter", "task-001")
    # The name was taken: that worker is left as it is, and so is its task.
    assert not fake_docker.find("cp") and not fake_docker.find("start") and not fake_docker.find("rm")
    assert not (orchestration_dir / "status" / "task-001.json").exists()


def test_an_exited_worker_is_left_for_the_person_to_look_at(fake_docker: FakeDocker, orchestration_dir: Path, capsys):
    fake_docker.add_container("worker-task-001", "inspect-exited.json")
    err = refused(capsys, 1, "flutter", "task-001")
    # The hint leads on without destroying anything: the next command that works.
    assert "exited with code 3" in err and "`orch retry task-001` runs it again" in err and "docker rm" not in err
    assert not fake_docker.find("start") and not fake_docker.find("rm")


@pytest.mark.parametrize(
    ("task_text", "code", "message"),
    [
        ('{"id": "task-001", "prompt": ""}', 2, "field 'prompt'"),
        ('{"id": "task-001", "prompt": "x", "timeout": "soon"}', 2, "field 'timeout'"),
        ("not json", 2, "not valid JSON"),
        (None, 2, "does not exist"),
    ],
)
def test_an_invalid_task_is_refused_and_nothing_is_left_behind(
    fake_docker: FakeDocker, orchestration_dir: Path, capsys, task_text, code, message
):
    path = orchestration_dir / "tasks" / "task-001.json"
    if task_text is None:
        path.unlink()
    else:
        path.write_text(task_text)
    assert message in refused(capsys, code, "flutter", "task-001")
    assert fake_docker.find("rm", "--force", "worker-task-001")
    assert not fake_docker.find("start")
    assert not (orchestration_dir / "status" / "task-001.json").exists()


def test_a_task_with_a_result_is_not_run_again(fake_docker: FakeDocker, orchestration_dir: Path, capsys):
    result = orchestration_dir / "results" / "task-001.json"
    result.write_text('{"task_id": "task-001"}')
    assert "ran already (`orch result task-001`); `orch retry task-001` runs it again" in refused(
        capsys, 1, "flutter", "task-001"
    )
    assert result.read_text() == '{"task_id": "task-001"}'
    assert not fake_docker.find("start")


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["flutter", "bad id"], 2, "TASK_ID 'bad id' is not a valid task id"),
        (["Flutter!", "task-001"], 2, "worker type 'Flutter!' is not valid"),
        (["flutter", "task-001", "--timeout", "0"], 1, "--timeout must be a positive"),
        (["flutter", "task-001", "--ssh-key", "/nonexistent/key"], 1, "SSH key /nonexistent/key does not exist"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(
    fake_docker: FakeDocker, orchestration_dir: Path, capsys, argv, code, message
):
    assert message in refused(capsys, code, *argv)
    assert not fake_docker.find("create")


def test_no_repository_and_no_token_are_explained(
    fake_docker: FakeDocker, orchestration_dir: Path, capsys, monkeypatch, tmp_path
):
    monkeypatch.delenv("REPO_URL")
    assert "pass --repo URL or set REPO_URL" in refused(capsys, 1, "flutter", "task-001")
    monkeypatch.setenv("REPO_URL", "git@h:r.git")
    monkeypatch.delenv("CLAUDE_CODE_OAUTH_TOKEN")
    assert "token file" in refused(capsys, 1, "flutter", "task-001")


def test_a_missing_image_says_how_to_build_it(fake_docker: FakeDocker, orchestration_dir: Path, capsys, monkeypatch):
    monkeypatch.setenv("FAKE_DOCKER_MISSING_IMAGES", "claude-flutter")
    assert "image claude-flutter not found" in refused(capsys, 1, "flutter", "task-001")


def test_an_unreachable_engine_is_one_line(fake_docker: FakeDocker, orchestration_dir: Path, capsys, monkeypatch):
    monkeypatch.setenv("FAKE_DOCKER_DOWN", "1")
    assert "Docker is not usable: Cannot connect to the Docker daemon" in refused(capsys, 1, "flutter", "task-001")


def test_no_docker_at_all_is_one_line(orchestration_dir: Path, capsys, monkeypatch, tmp_path: Path):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert "docker command was not found" in refused(capsys, 1, "flutter", "task-001")


def test_a_start_that_fails_is_recorded_and_cleaned_up(
    fake_docker: FakeDocker, orchestration_dir: Path, capsys, monkeypatch
):
    monkeypatch.setenv("FAKE_DOCKER_START_RC", "1")
    refused(capsys, 1, "flutter", "task-001")
    assert fake_docker.find("rm", "--force", "worker-task-001")
    status = json.loads((orchestration_dir / "status" / "task-001.json").read_text())
    assert status["state"] == "failed" and "did not start" in status["message"]


def test_git_access_reaches_the_worker_off_the_command_line(
    fake_docker: FakeDocker, orchestration_dir: Path, ssh_key: Path, tmp_path: Path
):
    git_token = tmp_path / "git-token"
    git_token.write_text("ghp_exampleGitToken123\n")
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("[git.example]:22 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIexample\n")
    assert run("flutter", "task-001", "--ssh-key", str(ssh_key), "--known-hosts", str(known_hosts),
               "--git-token", str(git_token), "--branch-prefix", "ai/") == 0  # fmt: skip
    create = fake_docker.find("create")[0]
    assert "GIT_TOKEN" not in create["env"]
    assert create["env"]["ORCHESTRATOR_BRANCH_PREFIX"] == "ai/"
    assert not any("ghp_exampleGitToken123" in arg for argv in fake_docker.argvs() for arg in argv)
    members = {m["name"]: m for m in fake_docker.find("cp", "-")[0]["tar"]}
    assert members[".git-token"]["data"] == "ghp_exampleGitToken123\n" and members[".git-token"]["mode"] == 0o600
    assert members[".ssh/known_hosts_pinned"]["data"] == known_hosts.read_text()
    assert members[".ssh/known_hosts_pinned"]["mode"] == 0o644


def test_a_bad_branch_prefix_is_refused(fake_docker: FakeDocker, orchestration_dir: Path, capsys):
    assert run("flutter", "task-001", "--branch-prefix", "bad..prefix/") == 2
    assert "--branch-prefix 'bad..prefix/'" in capsys.readouterr().err
    assert not fake_docker.find("create")


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [("--memory", "lots", "memory limit 'lots'"), ("--cpus", "0", "CPU limit '0'"), ("--pids-limit", "-5", "'-5'")],
)
def test_bad_limits_are_refused(fake_docker: FakeDocker, orchestration_dir: Path, capsys, option, value, message):
    assert run("flutter", "task-001", f"{option}={value}") == 2
    assert message in capsys.readouterr().err
    assert not fake_docker.find("create")


@pytest.mark.parametrize("prefix", ["ai/.hidden/", "x.lock/", "a//b/", "bad..prefix/"])
def test_branch_prefixes_git_refuses_are_refused(fake_docker: FakeDocker, orchestration_dir: Path, capsys, prefix: str):
    assert run("flutter", "task-001", "--branch-prefix", prefix) == 2
    assert "not usable in a branch name" in capsys.readouterr().err


def commands(fake_docker: FakeDocker) -> list[str]:
    return [" ".join(argv[:2]) if argv[0] in ("volume", "container") else argv[0] for argv in fake_docker.argvs()]


def test_in_the_manager_a_spawn_is_three_docker_calls(fake_docker: FakeDocker, orchestration_dir: Path, monkeypatch):
    monkeypatch.setenv("ORCHESTRATOR_STORAGE_QUOTA", "no")  # run.py found it out for the manager
    assert run("flutter", "task-001") == 0
    assert commands(fake_docker) == ["create", "cp", "start"]


def test_without_word_of_run_py_spawn_worker_asks_the_engine_about_storage_quotas(
    fake_docker: FakeDocker, orchestration_dir: Path
):
    assert run("flutter", "task-001") == 0
    assert commands(fake_docker) == ["info", "create", "cp", "start"]
    create = fake_docker.find("create")[0]["argv"]
    # No quota on this engine: the workspace is a tmpfs below the memory limit (4g less 512m).
    assert create[create.index("--mount") + 1] == (
        f"type=tmpfs,destination=/workspace,tmpfs-size={(4096 - 512) * 1024 * 1024},tmpfs-mode=1777"
    )


@pytest.fixture
def on_the_host(orchestration_dir: Path, tmp_path: Path, monkeypatch) -> list[str]:
    """spawn-worker where the volume is not mounted: the engine's folder of it is tmp/orchestration."""
    monkeypatch.setenv("FAKE_DOCKER_VOLUMES", str(tmp_path))
    (orchestration_dir / "tasks" / "task-002.json").write_text(json.dumps({"id": "task-002", "prompt": "Do it too"}))
    return ["--volume", "orchestration", "--orchestration-dir", str(tmp_path / "not-mounted")]


def test_on_the_host_the_volume_s_folder_is_written_directly(
    fake_docker: FakeDocker, orchestration_dir: Path, on_the_host
):
    assert run("flutter", "task-001", *on_the_host) == 0
    # Its folder is looked up while the container is created: no container of its own.
    assert commands(fake_docker)[0] == "info"
    assert sorted(commands(fake_docker)[1:3]) == ["create", "volume inspect"]
    # Then which managers run, for the hint on reading the result.
    assert commands(fake_docker)[3:] == ["cp", "start", "ps"]
    status = json.loads((orchestration_dir / "status" / "task-001.json").read_text())
    assert (status["state"], status["container"]) == ("starting", "worker-task-001")


def test_on_the_host_a_folder_out_of_reach_is_written_through_one_helper_kept_for_it(
    fake_docker: FakeDocker, orchestration_dir: Path, on_the_host, monkeypatch
):
    monkeypatch.setenv("FAKE_DOCKER_MOUNTPOINT", "/var/lib/docker-desktop-vm/volumes/orchestration/_data")
    assert run("flutter", "task-001", *on_the_host) == 0
    assert run("flutter", "task-002", *on_the_host) == 0
    helpers = fake_docker.find("run")
    assert len(helpers) == 1  # started once, then reused
    argv = helpers[0]["argv"]
    assert argv[argv.index("--name") + 1] == "orchestrator-volume-orchestration"
    assert "orchestration:/orchestration" in argv and argv[argv.index("--network") + 1] == "none"
    last_exec = [a for a in fake_docker.argvs() if a[0] == "exec"][-1]
    assert last_exec[-6:] == ["claim", "task-002", "--worker-type", "flutter", "--container", "worker-task-002"]
    for task_id in ("task-001", "task-002"):
        assert json.loads((orchestration_dir / "status" / f"{task_id}.json").read_text())["state"] == "starting"


def test_on_the_host_the_helper_s_refusal_is_one_line(
    fake_docker: FakeDocker, orchestration_dir: Path, on_the_host, capsys, monkeypatch
):
    monkeypatch.setenv("FAKE_DOCKER_MOUNTPOINT", "/elsewhere")
    (orchestration_dir / "results" / "task-001.json").write_text('{"task_id": "task-001"}')
    err = refused(capsys, 1, "flutter", "task-001", *on_the_host)
    assert "task task-001 ran already" in err and "volume: error" not in err
    assert fake_docker.find("rm", "--force", "worker-task-001") and not fake_docker.find("start")


def test_on_the_host_a_volume_that_does_not_exist_is_named(
    fake_docker: FakeDocker, orchestration_dir: Path, on_the_host, capsys
):
    err = refused(capsys, 1, "flutter", "task-001", *on_the_host[:-2], "--volume", "nope",
                  "--orchestration-dir", "/not-mounted")  # fmt: skip
    assert "the volume nope does not exist" in err
    assert fake_docker.find("rm", "--force", "worker-task-001")  # created meanwhile: removed


def test_on_the_host_a_bad_task_is_bad_input_through_the_helper_too(
    fake_docker: FakeDocker, orchestration_dir: Path, on_the_host, capsys, monkeypatch
):
    monkeypatch.setenv("FAKE_DOCKER_MOUNTPOINT", "/elsewhere")
    (orchestration_dir / "tasks" / "task-001.json").write_text('{"id": "task-001", "prompt": ""}')
    err = refused(capsys, 2, "flutter", "task-001", *on_the_host)
    assert "field 'prompt' must be a non-empty string" in err and "volume: error" not in err


def test_as_a_swarm_job_the_worker_is_a_one_shot_service_with_its_secrets_as_swarm_secrets(
    fake_docker: FakeDocker, orchestration_dir: Path, token: str, capsys
):
    assert run("--engine", "swarm", "flutter", "task-001") == 0
    (created,) = fake_docker.find("secret", "create")
    assert created["argv"][-1] == "-" and token not in json.dumps(created)  # the value goes on stdin
    secret_name = created["argv"][-2]
    assert secret_name.startswith("orchestrator-orchestration-volume-claude-token-")
    (service,) = fake_docker.find("service", "create")
    argv = service["argv"]
    assert argv[argv.index("--name") + 1] == "worker-task-001" and argv[-1] == "claude-flutter"
    assert argv[argv.index("--mode") + 1] == "replicated-job"
    assert argv[argv.index("--restart-condition") + 1] == "none"
    assert argv[argv.index("--reserve-memory") + 1] == "4g" and argv[argv.index("--limit-pids") + 1] == "1024"
    assert f"source={secret_name},target=/root/.claude-token,uid=0,gid=0,mode=0400" in argv
    assert "type=volume,source=orchestration-volume,target=/orchestration" in argv
    assert "orchestrator.task-id=task-001" in argv and token not in json.dumps(service)
    assert service["env"]["TASK_ID"] == "task-001" and not fake_docker.find("create")
    status = json.loads((orchestration_dir / "status" / "task-001.json").read_text())
    assert (status["state"], status["container"]) == ("starting", "worker-task-001")
    assert "docker service logs -f worker-task-001" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("task", "state"),
    [
        ({"Status": {"State": "running"}}, {"Status": "running", "Running": True}),
        ({"Status": {"State": "complete", "ContainerStatus": {"ExitCode": 0}}},
         {"Status": "exited", "Running": False, "ExitCode": 0}),
        ({"Status": {"State": "failed", "ContainerStatus": {"ExitCode": 1}}},
         {"Status": "exited", "Running": False, "ExitCode": 1}),
        ({"Status": {"State": "shutdown", "ContainerStatus": {"ExitCode": 143}}},
         {"Status": "exited", "Running": False, "ExitCode": 143}),
        ({"Status": {"State": "orphaned"}}, {"Status": "exited", "Running": False, "ExitCode": 255,
                                             "Error": "its node went away"}),
        ({"Status": {"State": "rejected", "Err": "No such image: claude-flutter"}},
         {"Status": "exited", "Running": False, "ExitCode": None, "Error": "No such image: claude-flutter"}),
        ({"Status": {"State": "pending", "Err": "no suitable node"}, "CreatedAt": "2020-01-01T00:00:00.1Z"},
         {"Status": "exited", "Running": False, "ExitCode": None, "Error": "no node can run it: no suitable node"}),
    ],
)  # fmt: skip
def test_a_job_s_task_reads_as_a_container_s_state(task, state):
    from orchestrator.engine_swarm import task_as_container
    from orchestrator.reconcile import death_notice, interrupted

    assert task_as_container(task) == state
    if state.get("ExitCode") is None and "Error" in state:
        assert death_notice("worker-x", state).startswith("the worker worker-x never ran: ")
    assert interrupted(state) == (state.get("ExitCode") in (143, 255))


def test_in_the_control_plane_a_worker_mounts_its_mirror_read_only(
    fake_docker: FakeDocker, orchestration_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    # The control plane names its mirror's volume: the worker clones borrowing from it, read-only.
    monkeypatch.setenv("ORCHESTRATOR_MIRROR_VOLUME", "app-mirror")
    assert run("flutter", "task-001") == 0
    create = fake_docker.find("create")[0]
    assert "app-mirror:/mirror:ro" in create["argv"]
    assert create["env"]["ORCHESTRATOR_MIRROR_DIR"] == "/mirror"


def test_without_a_control_plane_or_on_swarm_no_mirror_is_mounted(
    fake_docker: FakeDocker, orchestration_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    assert run("flutter", "task-001") == 0
    create = fake_docker.find("create")[0]
    assert not any("/mirror" in arg for arg in create["argv"])
    assert "ORCHESTRATOR_MIRROR_DIR" not in create["env"]
    # A volume lives on one node: a job placed on another would find it empty.
    monkeypatch.setenv("ORCHESTRATOR_MIRROR_VOLUME", "app-mirror")
    env = {"ORCHESTRATOR_MIRROR_VOLUME": "app-mirror", "CLAUDE_CODE_OAUTH_TOKEN": "t", "HOME": "/nonexistent"}
    limits = WorkerLimits.parse(None, None, None)
    spec = worker_spec("flutter", "task-002", env=env, repo="git://x/y.git", branch="main", model="m", api_url=None,
                       volume="v", network=None, image_prefix="claude-", limits=limits, engine="swarm")  # fmt: skip
    assert spec.mirror_volume is None


def test_a_control_planes_swarm_job_holds_tickets_and_no_secret_on_the_workers_network(tmp_path: Path) -> None:
    from orchestrator.engine_swarm import service_argv
    from orchestrator.tickets import Tickets

    Tickets.in_folder(tmp_path, create=True)
    env = {"ORCHESTRATOR_DOORS_VOLUME": "v-doors", "ORCHESTRATOR_MIRROR_VOLUME": "app-mirror",
           "ORCHESTRATOR_SWARM_CONTROL_ADDRESS": "10.0.9.2",
           "ORCHESTRATOR_KEYS_DIR": str(tmp_path), "CLAUDE_CODE_OAUTH_TOKEN": "sk-secret", "GIT_TOKEN": "ghp_x",
           "HOME": "/nonexistent"}  # fmt: skip
    limits = WorkerLimits.parse(None, None, None)
    spec = worker_spec("flutter", "task-002", env=env, repo="git://x/y.git", branch="main", model="m", api_url=None,
                       volume="v", network="bridge", image_prefix="claude-", limits=limits, engine="swarm")  # fmt: skip
    assert spec.secrets.files() == [] and spec.doors_volume is None and spec.mirror_volume is None
    worker_env = spec.environment()
    assert worker_env["ORCHESTRATOR_DOORS_DIR"] == "tcp://orchestrator-control"
    assert worker_env["ORCHESTRATOR_MIRROR_DIR"] == "/mirror"  # its copy, taken over the channel
    assert worker_env["ORCHESTRATOR_RELAY_TICKET"].startswith("relay-")
    assert not any(secret in str(worker_env) for secret in ("sk-secret", "ghp_x"))
    argv = service_argv(spec, {})
    assert argv[argv.index("--network") + 1] == "v-workers" and argv.count("--network") == 1
    assert "--secret" not in argv
    assert argv[argv.index("--dns") + 1] == "10.0.9.2"  # the control plane's name server, which resolves nothing


def test_the_control_plane_serves_a_plain_spawn_in_its_own_process(
    fake_docker: FakeDocker, orchestration_dir: Path, capsys
):
    # The manager's spawn-worker, done by the control plane's channel without an interpreter of its own.
    env = dict(os.environ)
    code, out, err = spawn.serve(["flutter", "task-001"], env) or (None, "", "")
    assert (code, err) == (0, "") and "started worker-task-001" in out and "docker logs -f worker-task-001" in out
    assert fake_docker.find("start", "worker-task-001")
    assert json.loads((orchestration_dir / "status" / "task-001.json").read_text())["state"] == "starting"
    assert capsys.readouterr().out == ""  # nothing went to the control plane's own output
    # Refused as spawn-worker refuses, in its words.
    code, out, err = spawn.serve(["flutter", "task-404"], env) or (None, "", "")
    assert code == 2 and err.startswith("spawn-worker: error: ") and "does not exist" in err and out == ""
    # Help, a mistake, --debug: the channel runs those as a command of their own, as before.
    for argv in (["--help"], ["flutter"], ["flutter", "task-001", "--cpus"], ["flutter", "task-001", "--debug"]):
        assert spawn.serve(argv, env) is None


def test_in_a_manager_the_commands_import_only_the_channel(tmp_path: Path):
    # orch and spawn-worker as the images install them: in a manager, what runs is the client alone.
    served = socket.socket(socket.AF_UNIX)
    served.bind(str(tmp_path / CHANNEL))
    served.listen(1)

    def answer() -> None:
        conn, _ = served.accept()
        with conn:
            conn.makefile("rb").readline()
            conn.sendall(b'{"out": "started worker-task-001\\n"}\n{"exit": 0}\n')

    threading.Thread(target=answer, daemon=True).start()
    script = (
        "import sys\nfrom orchestrator import entry\ncode = entry.main(['spawn-worker', 'flutter', 'task-001'])\n"
        "import json\nprint(code, json.dumps([m for m in sys.modules if m.startswith('orchestrator')]))"
    )
    env = {**os.environ, "ORCHESTRATOR_CONTROL": str(tmp_path), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-P", "-c", script], capture_output=True, text=True, check=False, env=env)
    said, _, modules = proc.stdout.partition("\n")
    code, modules = modules.split(" ", 1)
    assert (said, code) == ("started worker-task-001", "0"), proc.stderr
    assert not {"orchestrator.spawn", "orchestrator.orch", "orchestrator.docker"} & set(eval(modules))
    served.close()
