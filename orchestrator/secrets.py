"""Secrets: reading them, carrying them into containers, and keeping them out of everything
the project prints.

A secret never goes on a command line or into a container's environment (both show in
``docker inspect``, and the environment to every process of the same user). It is copied
into the created container as a file through the Docker API, into the home of the user
that holds it: ``claude`` in the manager, ``root`` (the worker runtime) in a worker, where
the agent's user cannot read it. The worker runtime reads the files and removes them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from .docker import FileToCopy, copy_files
from .errors import UserError

log = logging.getLogger("orchestrator.secrets")

DEFAULT_TOKEN_FILE = "~/.claude-token"
DEFAULT_SSH_KEY = "~/.ssh/id_ed25519"
REDACTED = "[REDACTED]"

# Where the secrets land in a container, relative to the holder's home. spawn-worker in the
# manager finds them there by default, as on a person's machine.
TOKEN_NAME = ".claude-token"
GIT_TOKEN_NAME = ".git-token"
SSH_KEY_NAME = ".ssh/id_ed25519"
PINNED_KNOWN_HOSTS_NAME = ".ssh/known_hosts_pinned"  # not secret, but carried the same way
PINNED_KNOWN_HOSTS = f"~/{PINNED_KNOWN_HOSTS_NAME}"

# The variables that hold a secret in the processes that need one (the manager's Claude Code
# and git); every output of the project is scrubbed of their values.
OAUTH_TOKEN_ENV = "CLAUDE_CODE_OAUTH_TOKEN"
API_KEY_ENV = "ANTHROPIC_API_KEY"
GIT_TOKEN_ENV = "GIT_TOKEN"
SECRET_ENV = (OAUTH_TOKEN_ENV, API_KEY_ENV, "ANTHROPIC_AUTH_TOKEN", GIT_TOKEN_ENV)

# Credentials in an HTTP(S) URL (https://x-access-token:ghp_...@github.com/...). The user
# part of an ssh:// URL (git@) is a login name, not a secret, and stays readable.
_URL_CREDENTIALS = re.compile(r"(?P<scheme>https?://)[^/@\s]+@", re.IGNORECASE)


def read_secret_file(path: str | os.PathLike[str], what: str) -> str:
    """The file's content without surrounding white space; one clear error when it is unusable."""
    resolved = Path(path).expanduser()
    try:
        value = resolved.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise UserError(f"{what} {resolved} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"{what} {resolved} is a directory, not a file") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise UserError(f"cannot read {what} {resolved}: {reason}") from None
    if not value:
        raise UserError(f"{what} {resolved} is empty")
    warn_if_others_can_read(resolved, what)
    return value


def warn_if_others_can_read(path: Path, what: str) -> None:
    """A secret that other users of the machine can read is worth a word (it is still used)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning("%s %s can be read by other users of this machine (mode %03o); `chmod 600 %s` keeps it yours",
                    what, path, stat.S_IMODE(mode), path)  # fmt: skip


def _read_optional_file(path: str | os.PathLike[str], what: str, *, required: bool) -> str | None:
    """The file's text; None when it is only a default and does not exist."""
    resolved = Path(path).expanduser()
    if not required and not resolved.exists():
        return None
    return read_secret_file(resolved, what)


def read_ssh_key(path: str | os.PathLike[str], *, required: bool) -> bytes | None:
    """The private key's bytes; None when it is the default path and does not exist."""
    text = _read_optional_file(path, "SSH key", required=required)
    if text is None:
        return None
    if "PRIVATE KEY" not in text:
        raise UserError(f"SSH key {Path(path).expanduser()} does not look like a private key")
    return (text + "\n").encode("utf-8")


def read_known_hosts(path: str | os.PathLike[str], *, required: bool) -> bytes | None:
    # Not secret, but read with the same checks.
    text = _read_optional_file(path, "known_hosts file", required=required)
    return None if text is None else (text + "\n").encode("utf-8")


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every secret value and every URL credential replaced."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    return _URL_CREDENTIALS.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", text)


def scrubber(secrets: Iterable[str | None]) -> Callable[[str], str]:
    """``redact`` with these secrets: for whatever is printed or written near them."""
    values = [s for s in secrets if s]
    return lambda text: redact(text, values)


def env_secrets(env: Mapping[str, str]) -> list[str]:
    """The secret values an environment holds (the manager's processes have some)."""
    return [env[name] for name in SECRET_ENV if env.get(name)]


@dataclass(frozen=True)
class ClaudeCredential:
    """The Claude credential: an OAuth token (``claude setup-token``) or an API key.

    Claude Code sends the first as ``Authorization: Bearer`` and the second as ``x-api-key``;
    which is which shows in the value (API keys start with ``sk-ant-api``).
    """

    value: str

    @property
    def is_api_key(self) -> bool:
        return self.value.startswith("sk-ant-api")

    @property
    def env_name(self) -> str:
        """The variable Claude Code takes it from."""
        return API_KEY_ENV if self.is_api_key else OAUTH_TOKEN_ENV

    def headers(self) -> dict[str, str]:
        """The request headers that carry it."""
        return {"x-api-key": self.value} if self.is_api_key else {"Authorization": f"Bearer {self.value}"}

    @classmethod
    def find(cls, token_file: str | None, env: Mapping[str, str]) -> ClaudeCredential:
        """From the file given, else ``$CLAUDE_CODE_OAUTH_TOKEN`` or ``$ANTHROPIC_API_KEY`` (which the
        manager's own processes have), else ``~/.claude-token``."""
        if token_file is None and env.get(OAUTH_TOKEN_ENV):
            return cls(env[OAUTH_TOKEN_ENV])
        if token_file is None and env.get(API_KEY_ENV):
            return cls(env[API_KEY_ENV])
        return cls(read_secret_file(token_file or DEFAULT_TOKEN_FILE, "token file"))


@dataclass(frozen=True)
class Secrets:
    """What a container needs to reach Claude and the repository. None of it is ever printed."""

    claude: ClaudeCredential | None = None
    git_token: str | None = None  # for HTTPS remotes, handed to git by a credential helper
    ssh_key: bytes | None = None
    known_hosts: bytes | None = None  # given: only these host keys are trusted (else: first use)

    @classmethod
    def read(
        cls,
        *,
        token_file: str | None,
        ssh_key: str | None,
        known_hosts: str | None,
        git_token_file: str | None,
        env: Mapping[str, str],
    ) -> Secrets:
        """From the files given, else the defaults: ``~/.claude-token`` (or ``$CLAUDE_CODE_OAUTH_TOKEN``),
        ``~/.ssh/id_ed25519`` and ``~/.ssh/known_hosts_pinned`` when they exist, and ``~/.git-token``
        (or ``$GIT_TOKEN``) when it exists."""
        claude = ClaudeCredential.find(token_file, env)
        access = cls.read_git_access(ssh_key=ssh_key, known_hosts=known_hosts, git_token_file=git_token_file, env=env)
        return replace(access, claude=claude)

    @classmethod
    def read_git_access(
        cls, *, ssh_key: str | None, known_hosts: str | None, git_token_file: str | None, env: Mapping[str, str]
    ) -> Secrets:
        """The git access alone (as read() reads it), without a Claude credential."""
        if git_token_file is not None:
            git_token: str | None = read_secret_file(git_token_file, "git token file")
        elif env.get(GIT_TOKEN_ENV):
            git_token = env[GIT_TOKEN_ENV]
        else:
            git_token = _read_optional_file(f"~/{GIT_TOKEN_NAME}", "git token file", required=False)
        return cls(
            git_token=git_token,
            ssh_key=read_ssh_key(ssh_key or DEFAULT_SSH_KEY, required=ssh_key is not None),
            known_hosts=read_known_hosts(known_hosts or PINNED_KNOWN_HOSTS, required=known_hosts is not None),
        )

    def values(self) -> list[str]:
        """The secret values, for scrubbing output."""
        return [v for v in (self.claude.value if self.claude else None, self.git_token) if v]

    def files(self) -> list[FileToCopy]:
        files = []
        if self.claude:
            files.append(FileToCopy(TOKEN_NAME, (self.claude.value + "\n").encode(), 0o600))
        if self.git_token:
            files.append(FileToCopy(GIT_TOKEN_NAME, (self.git_token + "\n").encode(), 0o600))
        if self.ssh_key:
            files.append(FileToCopy(SSH_KEY_NAME, self.ssh_key, 0o600))
        if self.known_hosts:
            files.append(FileToCopy(PINNED_KNOWN_HOSTS_NAME, self.known_hosts, 0o644))
        return files

    def give(self, container: str, home: str, *, uid: int, gid: int) -> None:
        """Copy them into a created container, into ``home``, owned by ``uid:gid``.

        They travel through the Docker API, so this works from the host and from inside the
        manager alike, and the files belong to the container's user whoever owns them here.
        """
        files = self.files()
        if files:
            copy_files(container, home, files, uid=uid, gid=gid)

    @classmethod
    def take(cls, home: Path) -> Secrets:
        """The secrets copied into ``home`` (the worker runtime's side), every file removed once
        read: none is on disk while the agent runs. The SSH key goes back on disk only while git
        talks to origin (``key_on_disk``)."""
        secrets = cls.take_copy(home)
        for name in (TOKEN_NAME, GIT_TOKEN_NAME, SSH_KEY_NAME):
            # A swarm secret is a read-only mount that stays: it is root's alone, like the copy.
            with contextlib.suppress(OSError):
                (home / name).unlink()
        return secrets

    @contextlib.contextmanager
    def key_on_disk(self, home: Path) -> Iterator[None]:
        """The SSH key in ``home/.ssh`` for as long as this lasts (ssh reads it from a file),
        then gone again. Nothing of the agent's runs meanwhile."""
        path = home / SSH_KEY_NAME
        if self.ssh_key is None or path.exists():  # no key, or a swarm secret's mount
            yield
            return
        path.parent.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(self.ssh_key)
            yield
        finally:
            with contextlib.suppress(OSError):
                path.unlink()

    @classmethod
    def take_copy(cls, home: Path) -> Secrets:
        """The secrets copied into ``home``, left in place (the manager's spawn-worker reads them again)."""
        token, git_token = home / TOKEN_NAME, home / GIT_TOKEN_NAME
        key, hosts = home / SSH_KEY_NAME, home / PINNED_KNOWN_HOSTS_NAME
        return cls(
            claude=ClaudeCredential(read_secret_file(token, "token file")) if token.exists() else None,
            git_token=read_secret_file(git_token, "git token file") if git_token.exists() else None,
            ssh_key=key.read_bytes() if key.exists() else None,
            known_hosts=hosts.read_bytes() if hosts.exists() else None,
        )

    @staticmethod
    def forget(home: Path) -> None:
        """Remove what ``take`` left for ssh."""
        for name in (TOKEN_NAME, GIT_TOKEN_NAME, SSH_KEY_NAME):
            with contextlib.suppress(OSError):
                (home / name).unlink()
