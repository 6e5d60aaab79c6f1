"""Git servers of the tests' own, on 127.0.0.1 (containers on the host network reach them there):
``git daemon`` (plain, no authentication), git's http-backend behind a small HTTP server that
wants a token, and sshd in a container, built from gitserver/, that knows one key of two."""

from __future__ import annotations

import base64
import os
import secrets
import shlex
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from orchestrator import images

from .commands import sh
from .end_to_end import PREFIX, ca_certs
from .paths import GITSERVER
from .ports import free_port
from .waiting import wait_until


def seed_repo(path: Path) -> Path:
    """A small repository with one commit on main."""
    path.mkdir(parents=True)
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    (path / "lib").mkdir()
    (path / "lib" / "main.dart").write_text("void main() {}\n")
    (path / "README.md").write_text("# App\n")
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "initial"]):
        subprocess.run(["git", *args], cwd=path, check=True, env=env, capture_output=True)
    return path


# ---- git daemon ----------------------------------------------------------------------------------


def start_git_daemon(
    base: Path, port: int, probe_url: str, *, receive_pack: bool = True, host: str = "127.0.0.1"
) -> subprocess.Popen[bytes]:
    """``git daemon`` serving the repositories under ``base`` on ``host``:``port``, once
    ``git ls-remote probe_url`` answers."""
    daemon = subprocess.Popen(
        ["git", "daemon", "--reuseaddr", "--export-all", *(["--enable=receive-pack"] if receive_pack else []),
         f"--base-path={base}", f"--listen={host}", f"--port={port}", str(base)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def answers() -> bool:
        return subprocess.run(["git", "ls-remote", probe_url], capture_output=True, check=False).returncode == 0

    try:
        wait_until(answers, f"git daemon to answer at {probe_url}", timeout=30)
    except AssertionError:
        daemon.terminate()
        raise
    return daemon


@dataclass
class GitServer:
    """git daemon on 127.0.0.1, reached by containers on the host network (or on the gateway of a
    Docker network of the test's own, reached by its containers)."""

    base: Path
    port: int
    host: str = "127.0.0.1"

    def repo(self, name: str) -> str:
        """A new seeded repository; returns its URL."""
        work = seed_repo(self.base.parent / "seeds" / name)
        bare = self.base / f"{name}.git"
        sh("git", "clone", "-q", "--bare", str(work), str(bare))
        return f"git://{self.host}:{self.port}/{name}.git"

    def refs(self, name: str) -> dict[str, str]:
        """The repository's branches, by name, and their commits."""
        listed = sh("git", "--git-dir", str(self.base / f"{name}.git"), "for-each-ref", "--format=%(refname:short) "
                    "%(objectname)", "refs/heads").stdout  # fmt: skip
        return dict(line.split() for line in listed.splitlines())

    def show(self, name: str, ref: str, path: str) -> str:
        return sh("git", "--git-dir", str(self.base / f"{name}.git"), "show", f"{ref}:{path}", check=False).stdout


@contextmanager
def serve_git_daemon(base: Path, host: str = "127.0.0.1") -> Iterator[GitServer]:
    """A GitServer of the repositories under ``base`` (made here), for as long as the block runs."""
    base.mkdir()
    server = GitServer(base, free_port(), host)
    daemon = start_git_daemon(base, server.port, server.repo("probe"), host=host)
    try:
        yield server
    finally:
        daemon.terminate()
        daemon.wait(10)


# ---- over HTTP, with a token ---------------------------------------------------------------------


@dataclass
class HttpGitServer:
    """git's own http-backend behind a stdlib HTTP server; Basic authentication with the user
    x-access-token, as GitHub takes tokens."""

    root: Path
    port: int
    token: str
    seen_users: list[str] = field(default_factory=list)

    def repo(self, name: str) -> str:
        work = seed_repo(self.root.parent / "http-seeds" / name)
        sh("git", "clone", "-q", "--bare", str(work), str(self.root / f"{name}.git"))
        return f"http://127.0.0.1:{self.port}/{name}.git"

    def show(self, name: str, ref: str, path: str) -> str:
        return sh("git", "-C", str(self.root / f"{name}.git"), "show", f"{ref}:{path}").stdout


def _http_handler(server: HttpGitServer) -> type[BaseHTTPRequestHandler]:
    expected = "Basic " + base64.b64encode(f"x-access-token:{server.token}".encode()).decode()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.backend()

        def do_POST(self) -> None:
            self.backend()

        def backend(self) -> None:
            if self.headers.get("Authorization") != expected:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="test"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            server.seen_users.append("x-access-token")
            path, _, query = self.path.partition("?")
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            env = {
                **os.environ,
                "GIT_PROJECT_ROOT": str(server.root),
                "GIT_HTTP_EXPORT_ALL": "1",
                "REMOTE_USER": "x-access-token",  # enables receive-pack
                "REQUEST_METHOD": self.command,
                "PATH_INFO": path,
                "QUERY_STRING": query,
                "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                "CONTENT_LENGTH": str(len(body)),
                "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
                "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
            }
            out = subprocess.run(
                ["git", "http-backend"], input=body, env=env, capture_output=True, timeout=60, check=False
            ).stdout
            head, _, payload = out.partition(b"\r\n\r\n")
            status = 200
            headers = []
            for line in head.decode().split("\r\n"):
                name, _, value = line.partition(": ")
                if name.lower() == "status":
                    status = int(value.split()[0])
                elif name:
                    headers.append((name, value))
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    return Handler


@contextmanager
def serve_http_git(root: Path) -> Iterator[HttpGitServer]:
    """An HttpGitServer of the repositories under ``root`` (made here), with a token of its own."""
    root.mkdir()
    state = HttpGitServer(root, 0, "ghp_" + secrets.token_hex(16))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _http_handler(state))
    state.port = httpd.server_address[1]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield state
    finally:
        httpd.shutdown()


# ---- over SSH ------------------------------------------------------------------------------------

GITSERVER_IMAGE = f"{PREFIX}gitserver"
REPOS = "/srv/git"


@dataclass(frozen=True)
class SshGitServer:
    """sshd on 127.0.0.1 only, in a container on the host network. One key pair is authorized,
    a second one is not, so that tests can check both sides."""

    container: str
    port: int
    key: Path  # authorized private key
    wrong_key: Path  # a valid key pair the server does not know
    known_hosts: Path  # the server's host key for [127.0.0.1]:port
    seeds: Path

    def url(self, name: str) -> str:
        return f"ssh://git@127.0.0.1:{self.port}{REPOS}/{name}.git"

    def ssh_command(self, key: Path | None = None) -> str:
        """A GIT_SSH_COMMAND that offers only ``key`` and trusts only the server's host key."""
        return shlex.join(
            ["ssh", "-i", str(key or self.key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
             "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes"]
        )  # fmt: skip

    def repo(self, name: str) -> str:
        """A new bare repository on the server, seeded with one commit on main; returns its URL."""
        work, bare = seed_repo(self.seeds / name), self.seeds / f"{name}.git"
        sh("git", "clone", "-q", "--bare", str(work), str(bare))
        # Copied in rather than pushed over SSH, so that a broken sshd fails the test, not the fixture.
        sh("docker", "cp", str(bare), f"{self.container}:{REPOS}/{name}.git")
        sh("docker", "exec", self.container, "chown", "-R", "git:git", f"{REPOS}/{name}.git")
        return self.url(name)

    def git(self, name: str, *args: str) -> str:
        # As user git: git refuses repositories owned by another user ("dubious ownership").
        return sh("docker", "exec", "--user", "git", self.container, "git", "-C", f"{REPOS}/{name}.git", *args).stdout

    def branches(self, name: str) -> dict[str, str]:
        """Branch name -> commit sha, as the server has them."""
        lines = self.git(name, "for-each-ref", "--format=%(refname:short) %(objectname)", "refs/heads").splitlines()
        return dict(line.split(" ", 1) for line in lines)

    def show(self, name: str, ref: str, path: str) -> str:
        return self.git(name, "show", f"{ref}:{path}")

    def authorize(self, private_key: Path) -> None:
        public = private_key.with_suffix(".pub").read_text().strip()
        sh("docker", "exec", self.container, "sh", "-c", 'printf "%s\\n" "$1" >> /etc/ssh/authorized_keys/git', "sh",
           public)  # fmt: skip

    def revoke(self, private_key: Path) -> None:
        """Take the key off the server; sshd reads the file at each login, so the next one fails."""
        public = private_key.with_suffix(".pub").read_text().strip()
        sh("docker", "exec", self.container, "sh", "-c",
           'grep -vxF "$1" /etc/ssh/authorized_keys/git > /tmp/keys; cat /tmp/keys > /etc/ssh/authorized_keys/git',
           "sh", public)  # fmt: skip


def keygen(path: Path) -> Path:
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"orchestrator-test-{path.name}", "-f", str(path))
    return path


def _ssh_banner(container: str, port: int) -> bool:
    """Whether sshd answers on the port; fails at once when its container has ended."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            if sock.recv(64).startswith(b"SSH-"):
                return True
    except OSError:
        pass
    if sh("docker", "inspect", "--format", "{{.State.Running}}", container).stdout.strip() != "true":
        logs = sh("docker", "logs", container, check=False)
        raise AssertionError(f"the SSH git server ended:\n{logs.stdout}{logs.stderr}")
    return False


@contextmanager
def serve_ssh_git(base: Path) -> Iterator[SshGitServer]:
    """The SSH git server, its image built first, with its keys and seeds under ``base``."""
    images.build_image(GITSERVER_IMAGE, GITSERVER, ca_certs=ca_certs())
    key, wrong_key = keygen(base / "id_authorized"), keygen(base / "id_wrong")
    container, port = f"{PREFIX}gitserver-{uuid.uuid4().hex[:8]}", free_port()
    # A public key is no secret, so it may go on the command line.
    sh("docker", "run", "--detach", "--name", container, "--network", "host", "--env", f"SSH_PORT={port}",
       "--env", f"AUTHORIZED_KEYS={key.with_suffix('.pub').read_text().strip()}", GITSERVER_IMAGE)  # fmt: skip
    try:

        def logs() -> str:
            said = sh("docker", "logs", container, check=False)
            return f"the SSH git server to answer; its log:\n{said.stdout}{said.stderr}"

        wait_until(lambda: _ssh_banner(container, port), logs, timeout=30)
        # Read through docker, not ssh-keyscan: whatever answers on the port is not trusted yet.
        host_key = sh("docker", "exec", container, "cat", "/etc/ssh/ssh_host_ed25519_key.pub").stdout.split()
        known_hosts = base / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
        seeds = base / "seeds"
        seeds.mkdir()
        yield SshGitServer(container, port, key, wrong_key, known_hosts, seeds)
    finally:
        subprocess.run(["docker", "rm", "--force", container], capture_output=True, timeout=60, check=False)
