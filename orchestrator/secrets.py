"""Reading the token and the SSH key, and keeping them out of everything the project prints."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .config import CONTAINER_GID, CONTAINER_HOME, CONTAINER_UID
from .docker import FileToCopy, copy_files
from .errors import UserError

TOKEN_ENV = "CLAUDE_CODE_OAUTH_TOKEN"
DEFAULT_TOKEN_FILE = "~/.claude-token"
DEFAULT_SSH_KEY = "~/.ssh/id_ed25519"
# Where run.py puts the user's known_hosts in the manager, so that spawn-worker passes it on.
PINNED_KNOWN_HOSTS_NAME = "known_hosts_pinned"
PINNED_KNOWN_HOSTS = f"~/.ssh/{PINNED_KNOWN_HOSTS_NAME}"
GIT_TOKEN_ENV = "GIT_TOKEN"  # a token for HTTPS remotes, in the containers' environment only
REDACTED = "[REDACTED]"

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
    return value


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


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every secret value and every URL credential replaced."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    return _URL_CREDENTIALS.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", text)


# Every variable of ours that holds a secret, in any of the containers.
SECRET_ENV = (TOKEN_ENV, "ANTHROPIC_API_KEY", GIT_TOKEN_ENV)


def scrubber(env: Mapping[str, str]) -> Callable[[str], str]:
    """``redact`` with every secret ``env`` holds: for whatever is printed or written from it."""
    values = [env.get(name) for name in SECRET_ENV]
    return lambda text: redact(text, values)


def read_known_hosts(path: str | os.PathLike[str], *, required: bool) -> bytes | None:
    # Not secret, but read with the same checks.
    text = _read_optional_file(path, "known_hosts file", required=required)
    return None if text is None else (text + "\n").encode("utf-8")


@dataclass(frozen=True)
class GitAccess:
    """What git needs to reach the repository. None of it goes on a command line."""

    ssh_key: bytes | None = None
    known_hosts: bytes | None = None  # given: only these host keys are trusted (else: first use)
    token: str | None = None  # for HTTPS remotes, handed to git by a credential helper

    @classmethod
    def read(
        cls,
        *,
        ssh_key: str | None,
        known_hosts: str | None,
        token_file: str | None,
        env: Mapping[str, str],
    ) -> GitAccess:
        """From the options given, else the defaults: ~/.ssh/id_ed25519 and ~/.ssh/known_hosts_pinned
        when they exist, and $GIT_TOKEN (which run.py sets in the manager)."""
        return cls(
            ssh_key=read_ssh_key(ssh_key or DEFAULT_SSH_KEY, required=ssh_key is not None),
            known_hosts=read_known_hosts(known_hosts or PINNED_KNOWN_HOSTS, required=known_hosts is not None),
            token=read_secret_file(token_file, "git token file") if token_file else env.get(GIT_TOKEN_ENV) or None,
        )

    def environment(self) -> dict[str, str]:
        return {GIT_TOKEN_ENV: self.token} if self.token else {}

    def give(self, container: str) -> None:
        """Put the key and the known hosts where ssh looks for them in a created container.

        They travel through the Docker API, so this works from the host and from inside the
        manager alike; and the files belong to the container's user, whoever owns them here.
        """
        files = []
        if self.ssh_key:
            files.append(FileToCopy(".ssh/id_ed25519", self.ssh_key, 0o600))
        if self.known_hosts:
            files.append(FileToCopy(f".ssh/{PINNED_KNOWN_HOSTS_NAME}", self.known_hosts, 0o644))
        if files:
            copy_files(container, CONTAINER_HOME, files, uid=CONTAINER_UID, gid=CONTAINER_GID)
