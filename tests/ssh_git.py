"""An SSH git server for the end-to-end tests, built from tests/gitserver and run on the host network.

sshd listens on 127.0.0.1 only: the host reaches it there, and so do containers on the host network.
One key pair is authorized, a second one is not, so that tests can check both sides.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator import images

from .engine import PREFIX, sh
from .helpers import TESTS, free_port, seed_repo

GITSERVER_IMAGE = f"{PREFIX}gitserver"
REPOS = "/srv/git"
START_TIMEOUT = 30.0


@dataclass(frozen=True)
class SshGitServer:
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


def _wait_for_banner(container: str, port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                if sock.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        state = sh("docker", "inspect", "--format", "{{.State.Running}}", container).stdout.strip()
        if state != "true" or time.monotonic() > deadline:
            logs = sh("docker", "logs", container, check=False)
            raise AssertionError(f"the SSH git server did not start:\n{logs.stdout}{logs.stderr}")
        time.sleep(0.2)


@pytest.fixture(scope="session")
def ssh_git_server(engine: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshGitServer]:
    certs = [images.read_ca_cert(p) for p in os.environ.get("ORCHESTRATOR_CA_CERTS", "").split(os.pathsep) if p]
    images.build_image(GITSERVER_IMAGE, TESTS / "gitserver", ca_certs=certs)
    base = tmp_path_factory.mktemp("ssh-git")
    key, wrong_key = keygen(base / "id_authorized"), keygen(base / "id_wrong")
    container, port = f"{PREFIX}gitserver-{uuid.uuid4().hex[:8]}", free_port()
    # A public key is no secret, so it may go on the command line.
    sh("docker", "run", "--detach", "--name", container, "--network", "host", "--env", f"SSH_PORT={port}",
       "--env", f"AUTHORIZED_KEYS={key.with_suffix('.pub').read_text().strip()}", GITSERVER_IMAGE)  # fmt: skip
    try:
        _wait_for_banner(container, port)
        # Read through docker, not ssh-keyscan: whatever answers on the port is not trusted yet.
        host_key = sh("docker", "exec", container, "cat", "/etc/ssh/ssh_host_ed25519_key.pub").stdout.split()
        known_hosts = base / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
        seeds = base / "seeds"
        seeds.mkdir()
        yield SshGitServer(container, port, key, wrong_key, known_hosts, seeds)
    finally:
        subprocess.run(["docker", "rm", "--force", container], capture_output=True, timeout=60, check=False)
