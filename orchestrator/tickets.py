"""A worker's tickets: what a worker started by a control plane holds in place of any credential.

A ticket names one attempt of one task and one use: ``relay`` (its agent's API requests, through
the control plane's relay) or ``git`` (its runtime's fetch of the mirror and hand-back of the
task's branch, through the control plane's git channel). It is an HMAC, under a key only the
control plane holds, of the use, the task id and the attempt: the control plane checks one without
keeping a list (a ticket made before a restart of the control plane still holds), and a ticket is
worthless anywhere else, and for any other task or use. The relay and the git channel refuse a
ticket once its attempt has a result (the task ended: revoked).

The relay ticket is the agent's (it is in its Claude Code's environment); the git ticket is the
runtime's alone, kept out of the agent's environment: the agent never talks to the git channel.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from . import environment
from .store import OrchestrationDir

RELAY = "relay"
GIT = "git"
EGRESS = "egress"  # its agent's connections through the control plane's egress proxy
USES = (RELAY, GIT, EGRESS)
# In the control plane's workspace (a volume of its own, its user's alone): a control plane made
# anew by run.py takes the key of the one before, and the workers still running keep their tickets.
KEY_FILE = ".worker-ticket-key"
KEY_BYTES = 32


@dataclass(frozen=True)
class TaskTicket:
    """What a valid ticket names."""

    task_id: str
    attempt: int


def key_folder(env: Mapping[str, str]) -> Path:
    """Where the control plane keeps the key: $ORCHESTRATOR_KEYS_DIR, else its workspace."""
    return Path(environment.KEYS_DIR.get(env) or environment.WORKSPACE.require(env))


class Tickets:
    """Makes and reads the tickets of one control plane's workers."""

    def __init__(self, key: bytes):
        if len(key) < KEY_BYTES:
            raise ValueError("a ticket key is at least 32 bytes")
        self._key = key

    @classmethod
    def in_folder(cls, folder: Path, *, create: bool = False) -> Tickets | None:
        """The control plane's key, kept in ``folder`` (made once, with ``create``); None when there is none."""
        path = folder / KEY_FILE
        try:
            return cls(bytes.fromhex(path.read_text(encoding="ascii").strip()))
        except FileNotFoundError:
            if not create:
                return None
        except (OSError, ValueError) as exc:
            raise ValueError(f"the worker ticket key {path} cannot be read: {exc}") from None
        key = secrets.token_bytes(KEY_BYTES)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(key.hex())
        return cls(key)

    def _mac(self, use: str, payload: str) -> str:
        return hmac.new(self._key, f"{use}\0{payload}".encode(), hashlib.sha256).hexdigest()

    def make(self, use: str, task_id: str, attempt: int | None) -> str:
        if use not in USES:
            raise ValueError(f"no ticket for {use!r}")
        payload = f"{task_id}/{attempt or 1}"
        encoded = base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")
        return f"{use}-{encoded}.{self._mac(use, payload)}"

    def read(self, use: str, ticket: str) -> TaskTicket | None:
        """What the ticket names, when it is one of ours for this use; None otherwise."""
        prefix = f"{use}-"
        if use not in USES or not ticket.startswith(prefix) or len(ticket) > 512:
            return None
        encoded, _, mac = ticket[len(prefix) :].rpartition(".")
        try:
            payload = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
        except (binascii.Error, ValueError):
            return None
        if not hmac.compare_digest(mac, self._mac(use, payload)):
            return None
        task_id, _, attempt = payload.rpartition("/")
        if not task_id or not attempt.isdigit():
            return None
        return TaskTicket(task_id, int(attempt))


def ended(orch: OrchestrationDir, ticket: TaskTicket) -> bool:
    """Whether the ticket's attempt has ended: its result, or a later attempt's, is written (a
    result that cannot be read counts as written: the ticket is refused rather than trusted)."""
    path = orch.result_path(ticket.task_id)
    if not path.exists():
        return False
    try:
        result = orch.load_result(ticket.task_id)
    except Exception:  # noqa: BLE001 (damaged: refuse)
        return True
    return result is None or (result.attempt or 1) >= ticket.attempt
