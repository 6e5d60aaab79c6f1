"""Workers as Swarm jobs, end to end, on a single-node swarm of the tests' own: a batch with a
dependency, a failure, a cancel and a retry runs as replicated jobs; no secret shows in any
inspect; and `docker swarm leave --force` at the end leaves the engine as it was.

The swarm is made on the engine of the tests' own (tests/support/own_engine.py), so that the one
every other test uses never enters swarm mode."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.end_to_end import Bridge, Run, busy_for, make_bridge, start_manager
from tests.support.git_servers import GitServer, serve_git_daemon
from tests.support.own_engine import OwnEngine
from tests.support.scripted_api import ScriptedAPI, attempts, bash, error, text, write

CLONE = "/workspace/repo"
LONG_JOB = busy_for(600)


def engine_state(engine: OwnEngine) -> dict[str, object]:
    """What joining and leaving a swarm could change: its state, its networks, its secrets."""
    info = json.loads(engine.docker("info", "--format", "{{json .Swarm}}").stdout)
    networks = sorted(engine.docker("network", "ls", "--format", "{{.Name}}").stdout.split())
    return {"swarm": info.get("LocalNodeState"), "networks": networks}


@pytest.fixture(scope="module")
def swarm(own_engine: OwnEngine) -> Iterator[OwnEngine]:
    before = engine_state(own_engine)
    own_engine.docker("swarm", "init", "--advertise-addr", "127.0.0.1")
    try:
        yield own_engine
    finally:
        own_engine.docker("swarm", "leave", "--force")
        # The swarm's bridge to the host stays behind unless removed: it is not part of the engine as it was.
        own_engine.docker("network", "rm", "docker_gwbridge", check=False)
        after = engine_state(own_engine)
        assert after == before, f"the engine is not as it was: {before} -> {after}"


def test_a_batch_runs_as_swarm_jobs(
    run: Run, swarm: OwnEngine, token_file: Path, token: str, ssh_key: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):  # fmt: skip
    monkeypatch.setenv("DOCKER_HOST", swarm.host)
    # The control plane joins its jobs' overlay network, which a container on the host's network
    # cannot: the orchestration runs on a bridge of the test's own, the scripted API and the git
    # server on its gateway.
    bridge = make_bridge(f"{run.manager}-bridge")
    try:
        with ScriptedAPI(host=bridge.gateway) as api, serve_git_daemon(tmp_path / "repos", host=bridge.gateway) as git:
            batch_on_a_swarm(Run(run.id, run.volume, api), swarm, git, bridge, token_file, token, ssh_key, tmp_path)
    finally:
        swarm.docker("network", "rm", bridge.name, f"{run.volume}-workers", check=False)


def batch_on_a_swarm(run: Run, swarm: OwnEngine, git_server: GitServer, bridge: Bridge, token_file: Path, token: str,
                     ssh_key: Path, tmp_path: Path) -> None:  # fmt: skip
    git_token = tmp_path / "git-token"
    git_token.write_text("ghp_swarmTestToken0123456789\n")
    repo = git_server.repo(f"swarm-{run.id}")
    manager = start_manager(run, repo, token_file, "--engine", "swarm", "--ssh-key", str(ssh_key),
                            "--git-token", str(git_token), network=bridge.name)  # fmt: skip
    try:
        theme, settings, broken, slow = (run.task_id(n) for n in ("theme", "settings", "broken", "slow"))
        manager.orch("submit", "--id", theme, "--prompt",
                     run.prompt("theme", write(f"{CLONE}/lib/theme.dart", "dark\n"), text("theme done")))  # fmt: skip
        manager.orch("submit", "--id", settings, "--depends-on", theme, "--prompt",
                     run.prompt("settings", bash("cat lib/theme.dart"), text("settings done")))  # fmt: skip
        # Fails on its first attempt, succeeds on its retry.
        overloaded = error(529, "Overloaded", should_retry=False)
        manager.orch("submit", "--id", broken, "--prompt", run.prompt("broken", attempts(overloaded, text("fine now"))))
        manager.orch("submit", "--id", slow, "--prompt", run.prompt("slow", bash(LONG_JOB)))
        # A hostile agent on a job: straight to the API's server (the bridge's gateway), then through
        # the egress proxy to a host outside its policy. Neither gets out.
        escape = run.task_id("escape")
        direct = f"curl -sS -m 5 --noproxy '*' -o /dev/null {run.api.url}/v1/messages; echo direct=$?"
        proxied = "curl -sS -m 5 -o /dev/null -w 'proxied=%{http_code}' http://example.com/"
        lookup = "getent hosts exfil-7f3a9c.example.com; echo lookup=$?"
        manager.orch("submit", "--id", escape, "--prompt", run.prompt("escape", bash(direct), bash(proxied),
                                                                      bash(lookup), text("stayed in")))  # fmt: skip
        # More memory than any node has: the swarm never places it.
        huge = run.task_id("huge")
        manager.orch("submit", "--id", huge, "--memory", "4000g", "--prompt", run.prompt("huge", text("never")))
        manager.orch("start", "--all", "--max-workers", "4")
        manager.wait_for_log(slow, "-> Bash python3", timeout=180)  # the slow task at work
        assert manager.orch("cancel", slow).stdout.strip() == f"{slow}: cancelled"
        manager.orch("wait", "--all", check=False, timeout=600)
        status = manager.status()
        assert [status[t]["state"] for t in (theme, settings, broken, slow)] == [
            "success",
            "success",
            "failed",
            "cancelled",
        ]
        assert run.tool_results("settings")[0] == "dark"  # it started from its dependency's work
        went_direct, went_proxied, looked_up = run.tool_results("escape")[:3]
        # The name went no further than the control plane's name server, which answered NXDOMAIN.
        assert "lookup=2" in looked_up, looked_up
        control_log = swarm.docker("logs", f"{manager.name}-control").stdout
        assert "dns: NXDOMAIN" in control_log and "exfil-7f3a9c.example.com" in control_log, control_log[-2000:]
        assert "direct=0" not in went_direct and "direct=" in went_direct, went_direct
        assert "proxied=403" in went_proxied, went_proxied
        assert [r for r in run.api.requests if (r.header("user-agent") or "").startswith("curl")] == []
        assert "API Error: 529" in status[broken]["message"]
        assert status[huge]["state"] == "failed" and "never ran: no node can run it" in status[huge]["message"]
        assert "insufficient resources" in status[huge]["message"]
        retried = manager.orch("retry", broken).stdout
        assert f"{broken}: attempt 2 queued" in retried
        assert manager.orch("wait", broken, timeout=600).returncode == 0

        # They were jobs: one-shot services named worker-ID, labelled, never restarted.
        services = json.loads(swarm.docker("service", "inspect", f"worker-{theme}", f"worker-{settings}").stdout)
        for service in services:
            spec = service["Spec"]
            assert "ReplicatedJob" in spec["Mode"] and spec["Labels"]["orchestrator.volume"] == run.volume
            assert spec["TaskTemplate"]["RestartPolicy"]["Condition"] == "none"
            assert spec["TaskTemplate"]["Resources"]["Reservations"]["MemoryBytes"] > 0
        assert "theme done" in swarm.docker("service", "logs", f"worker-{theme}").stdout
        # From the manager, which holds no socket: its control plane's filtered API shows the jobs'
        # containers, and their logs; it refuses a service of the manager's own.
        seen = swarm.docker("exec", manager.name, "docker", "ps", "-a", "--filter", "name=worker-", "--format",
                            "{{.Names}}").stdout  # fmt: skip
        assert any(name.startswith(f"worker-{theme}.") for name in seen.split()), seen
        refused = swarm.docker("exec", manager.name, "docker", "service", "create", "--name", "evil", "busybox",
                               check=False)  # fmt: skip
        assert refused.returncode != 0 and "the manager may not use swarm services" in refused.stderr

        # No secret in any inspect: services, secrets, task containers.
        secrets = [token, "ghp_swarmTestToken0123456789", ssh_key.read_text().splitlines()[1]]
        names = swarm.docker("service", "ls", "-q").stdout.split()
        inspected = swarm.docker("service", "inspect", *names).stdout
        secret_ids = swarm.docker("secret", "ls", "-q").stdout.split()
        inspected += swarm.docker("secret", "inspect", *secret_ids).stdout if secret_ids else ""
        containers = swarm.docker("ps", "-aq").stdout.split()
        inspected += swarm.docker("inspect", *containers).stdout
        assert [s for s in secrets if s in inspected] == []
        assert run.volume_contains(token) == []
        # No secret at all: no Swarm secret was made; each job has its task's tickets, and the batch's
        # internal network, where its control plane is its only way out.
        assert secret_ids == []
        for service in services:
            env = service["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"]
            assert "ORCHESTRATOR_DOORS_DIR=tcp://orchestrator-control" in env
            assert any(v.startswith("ORCHESTRATOR_RELAY_TICKET=relay-") for v in env)
            assert "Secrets" not in service["Spec"]["TaskTemplate"]["ContainerSpec"]
        network = json.loads(swarm.docker("network", "inspect", f"{run.volume}-workers").stdout)[0]
        assert network["Internal"] and network["Driver"] == "overlay"
        attached = [n["Target"] for n in services[0]["Spec"]["TaskTemplate"]["Networks"]]
        assert attached == [network["Id"]] or attached == [network["Name"]], attached
        # The jobs copied the mirror over the channel (no volume of the control plane's on their node).
        assert "copied the mirror" in swarm.docker("service", "logs", f"worker-{theme}").stdout
        # Every request the API got carried the orchestration's credential, put there by the relay.
        assert set(run.api.authorizations()) == {f"Bearer {token}"}

        cleaned = manager.orch("cleanup").stdout
        assert "removed" in cleaned
        assert swarm.docker("service", "ls", "-q", "--filter", f"label=orchestrator.volume={run.volume}").stdout == ""
        assert swarm.docker("secret", "ls", "-q", "--filter", f"label=orchestrator.volume={run.volume}").stdout == ""
    finally:
        manager.remove()
