"""Paths and small helpers shared by the tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
FIXTURES = TESTS / "fixtures"
STANDIN = TESTS / "standin"


@dataclass
class FakeDocker:
    log: Path
    containers: Path

    def calls(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def argvs(self) -> list[list[str]]:
        return [call["argv"] for call in self.calls()]

    def find(self, *prefix: str) -> list[dict]:
        return [call for call in self.calls() if call["argv"][: len(prefix)] == list(prefix)]

    def add_container(self, name: str, fixture: str) -> None:
        """`docker container inspect NAME` answers with a saved real inspect document."""
        (self.containers / f"{name}.json").write_text((FIXTURES / fixture).read_text())


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


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_git_daemon(base: Path, port: int, probe_url: str, *, receive_pack: bool = True) -> subprocess.Popen[bytes]:
    """``git daemon`` serving the repositories under ``base`` on 127.0.0.1:``port``, once
    ``git ls-remote probe_url`` answers."""
    daemon = subprocess.Popen(
        ["git", "daemon", "--reuseaddr", "--export-all", *(["--enable=receive-pack"] if receive_pack else []),
         f"--base-path={base}", "--listen=127.0.0.1", f"--port={port}", str(base)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while subprocess.run(["git", "ls-remote", probe_url], capture_output=True, check=False).returncode:
        if time.monotonic() > deadline:
            daemon.terminate()
            raise RuntimeError(f"git daemon did not start (no answer for {probe_url})")
        time.sleep(0.2)
    return daemon
