"""Reading the token and the SSH key, and keeping them out of everything the project prints."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from .config import CONTAINER_GID, CONTAINER_HOME, CONTAINER_UID
from .docker import FileToCopy, copy_files
from .errors import UserError

TOKEN_ENV = "CLAUDE_CODE_OAUTH_TOKEN"
DEFAULT_TOKEN_FILE = "~/.claude-token"
DEFAULT_SSH_KEY = "~/.ssh/id_ed25519"
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


def read_ssh_key(path: str | os.PathLike[str], *, required: bool) -> bytes | None:
    """The private key's bytes; None when it is the default path and does not exist."""
    resolved = Path(path).expanduser()
    if not required and not resolved.exists():
        return None
    text = read_secret_file(resolved, "SSH key")
    if "PRIVATE KEY" not in text:
        raise UserError(f"SSH key {resolved} does not look like a private key")
    return (text + "\n").encode("utf-8")


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every secret value and every URL credential replaced."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    return _URL_CREDENTIALS.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", text)


def give_ssh_key(container: str, key: bytes) -> None:
    """Put the key where ssh looks for it (~/.ssh/id_ed25519) in a created container.

    It travels through the Docker API, so this works from the host and from inside the
    manager alike; and the file belongs to the container's user, whoever owns it here.
    """
    copy_files(
        container, CONTAINER_HOME, [FileToCopy(".ssh/id_ed25519", key, 0o600)], uid=CONTAINER_UID, gid=CONTAINER_GID
    )
