"""The egress proxy wired in: a control plane's worker has no network and a proxy ticket; the
task's policy made from run.py's, the batch's and the task's choices; the records and their
counts; and a request of the agent's through the worker's door, the doors' socket and the
control plane's proxy, to a server of the test's own."""

from __future__ import annotations

import base64
import ipaddress
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal

import pytest

from orchestrator import egress_choice
from orchestrator.control.egress import EgressRecord
from orchestrator.control.egress_policy import Policy, parse_policy
from orchestrator.control.egress_service import EgressIdentify, EgressLog, EgressService, TaskPolicies
from orchestrator.display import status_json
from orchestrator.doors import Doors
from orchestrator.egress_choice import EgressChoice
from orchestrator.egress_counts import counts_of
from orchestrator.errors import InvalidInput
from orchestrator.limits import WorkerLimits
from orchestrator.store import OrchestrationDir, write_json
from orchestrator.tasks import BatchSettings, State, Task, TaskResult
from orchestrator.tickets import EGRESS, RELAY, Tickets
from orchestrator.worker_access import ThroughControlPlane
from orchestrator.workerspec import worker_spec

DEFAULT = parse_policy("pub.dev:443\n", name="default", source="test")


def control_plane_spec(tmp_path: Path, task_id: str = "task-001", attempt: int = 2):
    Tickets.in_folder(tmp_path, create=True)
    env = {"ORCHESTRATOR_DOORS_VOLUME": "v-doors", "ORCHESTRATOR_KEYS_DIR": str(tmp_path),
           "CLAUDE_CODE_OAUTH_TOKEN": "t", "HOME": "/nonexistent", "ORCHESTRATOR_STORAGE_QUOTA": "no"}  # fmt: skip
    return worker_spec("flutter", task_id, env=env, repo="git://x/y.git", branch="main", model="m", api_url=None,
                       volume="v", network="host", image_prefix="claude-", limits=WorkerLimits.parse(None, None, None),
                       attempt=attempt)  # fmt: skip


def test_a_control_plane_s_worker_has_no_network_and_an_egress_ticket_of_its_task(tmp_path: Path):
    spec = control_plane_spec(tmp_path)
    argv = spec.create_argv()
    # Whatever --network run.py was given: the worker's only ways out are the doors' sockets.
    assert argv[argv.index("--network") + 1] == "none"
    assert argv.count("--network") == 1
    ticket = spec.environment()["ORCHESTRATOR_EGRESS_TICKET"]
    assert ticket not in argv  # travels through docker's environment, never argv
    found = Tickets.in_folder(tmp_path).read(EGRESS, ticket)  # type: ignore[union-attr]
    assert (found.task_id, found.attempt) == ("task-001", 2)  # type: ignore[union-attr]
    # Good for the proxy alone: not a relay ticket.
    assert Tickets.in_folder(tmp_path).read(RELAY, ticket) is None  # type: ignore[union-attr]


def test_a_worker_of_the_original_layout_keeps_its_network_and_has_no_proxy(tmp_path: Path):
    env = {"CLAUDE_CODE_OAUTH_TOKEN": "t", "HOME": "/nonexistent", "ORCHESTRATOR_STORAGE_QUOTA": "no"}
    spec = worker_spec("flutter", "task-001", env=env, repo="git://x/y.git", branch="main", model="m", api_url=None,
                       volume="v", network="my-net", image_prefix="claude-",
                       limits=WorkerLimits.parse(None, None, None))  # fmt: skip
    argv = spec.create_argv()
    assert argv[argv.index("--network") + 1] == "my-net"
    assert "ORCHESTRATOR_EGRESS_TICKET" not in spec.environment()


def names(policy: Policy) -> list[str]:
    return [pattern.text for pattern in policy.patterns]


def test_the_most_specific_level_naming_a_policy_wins_with_the_hosts_below_it():
    run_py = EgressChoice(None, ("a.example",))
    batch = EgressChoice(None, ("b.example",))
    task = EgressChoice(None, ("c.example:8443",))
    made = egress_choice.resolve([run_py, batch, task], lambda: DEFAULT)
    assert made.name == "default" and names(made) == ["pub.dev:443", "a.example", "b.example", "c.example:8443"]
    # The batch says none: run.py's hosts are gone, the batch's and the task's stay.
    made = egress_choice.resolve([run_py, EgressChoice("none", ("b.example",)), task], lambda: DEFAULT)
    assert made.name == "none" and names(made) == ["b.example", "c.example:8443"]
    # The task says open: nothing above it counts.
    made = egress_choice.resolve([run_py, EgressChoice("none"), EgressChoice("open")], lambda: DEFAULT)
    assert made.any_host and names(made) == []
    assert made.refusal(ipaddress.ip_address("127.0.0.1"), 443) is not None  # open: public addresses only


def test_a_policy_file_travels_as_its_patterns(tmp_path: Path):
    policy_file = tmp_path / "policy.txt"
    policy_file.write_text("# ours\ngit.example.com:8443\n*.corp.example\n")
    choice = egress_choice.from_options(str(policy_file), ["extra.example"])
    assert choice == EgressChoice("file", ("git.example.com:8443", "*.corp.example", "extra.example"))
    env = egress_choice.to_environment(choice)
    assert env == ("file", "git.example.com:8443 *.corp.example extra.example")
    made = egress_choice.resolve([egress_choice.from_environment(*env)], lambda: DEFAULT)
    assert made.name == "file" and made.refusal("git.example.com", 8443) is None
    assert made.refusal("pub.dev", 443) is not None
    with pytest.raises(InvalidInput, match="policy file"):
        egress_choice.from_options(str(tmp_path / "missing.txt"), [])
    with pytest.raises(InvalidInput, match="--allow-host"):
        egress_choice.from_options("none", ["bad host"])


def test_task_and_batch_fields_are_checked_and_kept():
    task = Task.from_json({"id": "t-1", "prompt": "p", "egress": "none", "allow_hosts": ["x.example:8080"]})
    assert Task.from_json(task.to_json()) == task
    with pytest.raises(InvalidInput, match="field 'egress'"):
        Task.from_json({"id": "t-1", "prompt": "p", "egress": "/etc/passwd"})
    with pytest.raises(InvalidInput, match="field 'allow_hosts'"):
        Task.from_json({"id": "t-1", "prompt": "p", "allow_hosts": ["*"]})
    settings = BatchSettings.from_json({"egress": "open", "allow_hosts": ["y.example"]})
    assert BatchSettings.from_json(settings.to_json()) == settings


def test_the_proxy_makes_the_task_s_policy_when_a_connection_comes(orch: OrchestrationDir):
    write_json(orch.task_path("t-1"), Task(id="t-1", prompt="p", allow_hosts=("t.example",)).to_json())
    policies = TaskPolicies(orch, {"ORCHESTRATOR_EGRESS": "none", "ORCHESTRATOR_ALLOW_HOSTS": "r.example"}, "claude-")
    made = policies("t-1")
    assert made is not None and made.name == "none" and names(made) == ["r.example", "t.example"]
    # orch start --egress open: the next connection has it.
    orch.write_settings(BatchSettings(egress="open"))
    made = policies("t-1")
    assert made is not None and made.any_host
    assert policies("no-such-task") is None


def record(task: str | None, decision: Literal["allowed", "refused"] = "refused") -> EgressRecord:
    return EgressRecord(time=0.0, task=task, client="127.0.0.1:1", method="CONNECT", host="evil.example", port=443,
                        address=None, decision=decision, reason="not allowed", bytes_up=0, bytes_down=0,
                        duration=0.1)  # fmt: skip


def test_each_connection_is_a_line_of_its_task_s_records_counted_and_a_refusal_told(
    orch: OrchestrationDir, monkeypatch: pytest.MonkeyPatch
):
    told: list[tuple[str, str]] = []
    log = EgressLog(orch, lambda task, line: told.append((task, line)))
    log.record(record("t-1"))
    log.record(record("t-1", "allowed"))
    log.record(record(None))
    lines = (orch.root / "egress" / "t-1.jsonl").read_text().splitlines()
    assert [json.loads(line)["decision"] for line in lines] == ["refused", "allowed"]
    assert counts_of(orch, "t-1").to_json() == {"allowed": 1, "refused": 1, "unlogged": 0}  # type: ignore[union-attr]
    assert (orch.root / "egress" / ".unidentified.jsonl").exists()
    assert told == [("t-1", "egress: refused CONNECT evil.example:443: not allowed")]
    # Bounded: past the size, counted and not written.
    monkeypatch.setattr("orchestrator.control.egress_service.MAX_LOG_BYTES", len(lines[0]) * 2 + 2)
    log.record(record("t-1"))
    assert len((orch.root / "egress" / "t-1.jsonl").read_text().splitlines()) == 2
    assert counts_of(orch, "t-1").to_json() == {"allowed": 1, "refused": 2, "unlogged": 1}  # type: ignore[union-attr]


def test_orch_status_json_counts_them_per_task(orch: OrchestrationDir):
    document = json.loads(status_json([], None, {}, None, {"t-1": {"allowed": 3, "refused": 2, "unlogged": 0}}))
    assert document["egress"] == {"t-1": {"allowed": 3, "refused": 2, "unlogged": 0}}


def test_a_ticket_names_its_task_until_its_attempt_ends(orch: OrchestrationDir, tmp_path: Path):
    tickets = Tickets.in_folder(tmp_path, create=True)
    assert tickets is not None
    identify = EgressIdentify(tickets, orch)
    ticket = tickets.make(EGRESS, "t-1", 1)
    assert identify(("127.0.0.1", 1), basic("t-1", ticket)) == "t-1"
    assert identify(("127.0.0.1", 1), basic("t-2", ticket)) is None  # another task's name
    assert identify(("127.0.0.1", 1), basic("t-1", tickets.make(RELAY, "t-1", 1))) is None
    assert identify(("127.0.0.1", 1), None) is None
    orch.write_result(TaskResult(task_id="t-1", status=State.SUCCESS, output="", completed_at="2026-01-01T00:00:00Z"))
    assert identify(("127.0.0.1", 1), basic("t-1", ticket)) is None


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def server() -> Iterator[int]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def test_the_agent_s_request_goes_through_its_door_and_the_control_plane_s_proxy(
    orch: OrchestrationDir, tmp_path: Path, server: int
):
    tickets = Tickets.in_folder(tmp_path, create=True)
    assert tickets is not None
    doors = tmp_path / "doors"
    doors.mkdir()
    write_json(orch.task_path("t-1"), Task(id="t-1", prompt="p", egress="none",
                                           allow_hosts=(f"127.0.0.1:{server}",)).to_json())  # fmt: skip
    told: list[str] = []
    service = EgressService(doors, tickets, orch, {}, "claude-", lambda task, line: told.append(line)).start()
    try:
        access = ThroughControlPlane(Doors(folder=doors), "relay-x", "git-x", False,
                                     egress=("t-1", tickets.make(EGRESS, "t-1", 1)))  # fmt: skip
        with access.api(lambda notice: None) as api:
            proxy = api.proxy_env["HTTP_PROXY"]
            assert api.proxy_env["NO_PROXY"] == api.proxy_env["no_proxy"] == "127.0.0.1,localhost"
            assert proxy.startswith("http://t-1:egress-") and proxy == api.proxy_env["https_proxy"]
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy}))
            with opener.open(f"http://127.0.0.1:{server}/", timeout=10) as answer:
                assert answer.read() == b"ok"
            with pytest.raises(urllib.error.HTTPError) as refused:
                opener.open("http://pub.dev/", timeout=10)
            assert refused.value.code == 403
            # The agent names another task with its own ticket (to use that task's policy, or to
            # write into its records): it is no task at all, and nothing lands in t-2's records.
            forged = proxy.replace("http://t-1:", "http://t-2:", 1)
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": forged}))
            with pytest.raises(urllib.error.HTTPError) as refused:
                opener.open(f"http://127.0.0.1:{server}/", timeout=10)
            assert refused.value.code == 407  # Proxy Authentication Required
    finally:
        service.stop()
    assert counts_of(orch, "t-1").to_json() == {"allowed": 1, "refused": 1, "unlogged": 0}  # type: ignore[union-attr]
    assert counts_of(orch, "t-2") is None and not (orch.root / "egress" / "t-2.jsonl").exists()
    assert told == ["egress: refused GET pub.dev:80: the name pub.dev is not allowed by the policy none"]
