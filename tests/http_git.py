"""A git server over HTTP that wants a token, for the credential-helper test: git's own
http-backend behind a small stdlib HTTP server on 127.0.0.1, reached by containers on the
host network. Basic authentication with user x-access-token, as GitHub takes tokens."""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from .engine import sh
from .helpers import seed_repo


@dataclass
class HttpGitServer:
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


def _handler(server: HttpGitServer) -> type[BaseHTTPRequestHandler]:
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


@pytest.fixture(scope="session")
def http_git_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpGitServer]:
    root = tmp_path_factory.mktemp("http-git") / "repos"
    root.mkdir()
    state = HttpGitServer(root, 0, "ghp_" + secrets.token_hex(16))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
