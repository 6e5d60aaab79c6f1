"""How a worker's runtime reaches origin and the Claude API: with the secrets copied into it
(spawn-worker outside a control plane), or through its control plane, holding none.

- ``OwnSecrets``: the Claude credential, git token or SSH key are files in the runtime's home;
  the runtime serves the agent a relay of its own on loopback (relay.py), clones from origin
  (borrowing the mirror's objects when one is mounted) and pushes there itself.
- ``ThroughControlPlane``: the worker holds two tickets of its task's (tickets.py). Its agent's
  relay is the control plane's, reached through a door on the worker's loopback to
  ``relay.sock``; its clone is of the control plane's mirror (mounted read-only), made fresh
  first over the git channel (``git.sock``), which also takes the task's branch back and pushes
  it. Nothing in the worker can reach origin or the API with a credential: there is none.
"""

from __future__ import annotations

import contextlib
import json
import threading
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from . import environment, worker_channel
from .control.door import Door, listen_tcp
from .control.egress_tickets import proxy_environment
from .doors import EGRESS, RELAY, Doors
from .errors import UserError
from .relay import ACCOUNT_PATH, NOTICES_PATH, ApiRelay, Notice
from .relay_request import NoticeKind
from .secrets import GIT_TOKEN_ENV, Secrets

# Of the relay's account, what a result keeps (``usage``).
USAGE_FIELDS = ("cost_usd", "budget_usd", "state", "requests", "retried", "input_tokens", "output_tokens",
                "cache_creation_tokens", "cache_read_tokens", "rate_limited", "overloaded", "over_budget", "refused",
                "queued_seconds", "unknown_models")  # fmt: skip


@dataclass(frozen=True)
class ApiEndpoint:
    """What the agent's CLI is given: the relay's URL, its ticket, and which credential it stands for."""

    url: str
    ticket: str
    api_key: bool
    # HTTP_PROXY and the rest, naming the door to the control plane's egress proxy with the
    # task's ticket; empty: no proxy (a worker of the original layout, on --network).
    proxy_env: Mapping[str, str] = field(default_factory=dict)


class Access(Protocol):
    through_control_plane: bool

    def check(self) -> None:
        """A clear error when the worker was started without what it needs."""

    def git_env(self, repo_url: str) -> dict[str, str]:
        """What git needs, in the runtime only, to reach origin."""

    def before_clone(self, say: Callable[[str], None], mirror: Path | None = None) -> None:
        """Anything that must come first (the control plane's mirror made fresh)."""

    def origin_access(self) -> contextlib.AbstractContextManager[object]:
        """Held while git talks to origin (an SSH key on disk only then)."""

    def api(self, on_notice: Callable[[Notice], None]) -> contextlib.AbstractContextManager[ApiEndpoint]:
        """The agent's way to the API, for as long as it runs."""

    def pusher(self) -> Callable[[Path, str], None] | None:
        """How the task's branch reaches origin; None: ``git push`` with the git credential."""


class OwnSecrets:
    through_control_plane = False

    def __init__(self, secrets: Secrets, home: Path, api_url: str | None):
        self.secrets = secrets
        self.home = home
        self.api_url = api_url

    def check(self) -> None:
        if self.secrets.claude is None:
            raise UserError("no Claude credential was given to the worker (spawn-worker --token)")

    def git_env(self, repo_url: str) -> dict[str, str]:
        env = {environment.REPO_URL.name: repo_url}
        if self.secrets.git_token:
            env[GIT_TOKEN_ENV] = self.secrets.git_token
        return env

    def before_clone(self, say: Callable[[str], None], mirror: Path | None = None) -> None:
        pass

    def origin_access(self) -> contextlib.AbstractContextManager[object]:
        return self.secrets.key_on_disk(self.home)

    @contextlib.contextmanager
    def api(self, on_notice: Callable[[Notice], None]) -> Iterator[ApiEndpoint]:
        credential = self.secrets.claude
        assert credential is not None
        with ApiRelay(credential, self.api_url, on_notice=on_notice) as relay:
            yield ApiEndpoint(relay.url, relay.ticket, credential.is_api_key)

    def pusher(self) -> Callable[[Path, str], None] | None:
        return None


class ThroughControlPlane:
    through_control_plane = True

    def __init__(self, doors: Doors, relay_ticket: str | None, git_ticket: str | None, api_key: bool,
                 wait_for: float = 0.0, egress: tuple[str, str] | None = None):  # fmt: skip
        self.doors = doors
        self.egress = egress  # (task id, ticket)
        self.wait_for = wait_for  # seconds a control plane out of reach is waited for
        self.relay_ticket = relay_ticket
        self.git_ticket = git_ticket
        self.api_key = api_key

    def check(self) -> None:
        if not self.relay_ticket or not self.git_ticket:
            raise UserError(
                f"{environment.DOORS_DIR.name} is set, but not the task's tickets ({environment.RELAY_TICKET.name}, "
                f"{environment.GIT_TICKET.name}): workers of a control plane are started by it"
            )

    def git_env(self, repo_url: str) -> dict[str, str]:
        return {environment.REPO_URL.name: repo_url}  # and no credential: there is none here

    def before_clone(self, say: Callable[[str], None], mirror: Path | None = None) -> None:
        """The control plane's mirror made as origin is now; on a swarm, where its volume is not
        mounted, copied over the channel into ``mirror`` (the runtime's own folder)."""
        assert self.git_ticket
        worker_channel.fetch(self.doors, self.git_ticket, wait_for=self.wait_for, say=say)
        if self.doors.over_network:
            if mirror is None:
                raise UserError(f"{environment.MIRROR_DIR.name} is not set: a swarm worker copies the mirror there")
            say(worker_channel.copy_mirror(self.doors, self.git_ticket, mirror, wait_for=self.wait_for, say=say))

    def origin_access(self) -> contextlib.AbstractContextManager[object]:
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def api(self, on_notice: Callable[[Notice], None]) -> Iterator[ApiEndpoint]:
        assert self.relay_ticket
        listener = listen_tcp("127.0.0.1")
        door = Door(listener, self.doors.connector(RELAY)).start()
        proxy_env: dict[str, str] = {}
        proxy_door = None
        if self.egress is not None:
            # The worker has no network: the proxy is reached through a door on its loopback, as the relay is.
            proxy_listener = listen_tcp("127.0.0.1")
            proxy_door = Door(proxy_listener, self.doors.connector(EGRESS)).start()
            task, ticket = self.egress
            proxy_env = proxy_environment(f"127.0.0.1:{proxy_listener.getsockname()[1]}", task, ticket,
                                          no_proxy=("127.0.0.1", "localhost"))  # fmt: skip
        endpoint = ApiEndpoint(f"http://127.0.0.1:{listener.getsockname()[1]}", self.relay_ticket, self.api_key,
                               proxy_env)  # fmt: skip
        told = NoticeReader(endpoint, on_notice)
        done = threading.Event()
        reader = threading.Thread(target=told.follow, args=(done,), name="relay-notices", daemon=True)
        reader.start()
        try:
            yield endpoint
        finally:
            done.set()
            reader.join(timeout=NOTICES_EVERY + 35)
            door.close()
            if proxy_door is not None:
                proxy_door.close()

    def pusher(self) -> Callable[[Path, str], None] | None:
        ticket = self.git_ticket
        assert ticket

        def push(repo: Path, branch: str) -> None:
            worker_channel.push(self.doors, ticket, repo, branch)

        return push


def access_of(env_doors: str | None, secrets: Secrets, home: Path, api_url: str | None, *, relay_ticket: str | None,
              git_ticket: str | None, api_key: bool, wait_for: float = 0.0, egress_ticket: str | None = None,
              task_id: str = "") -> Access:  # fmt: skip
    if env_doors:
        egress = (task_id, egress_ticket) if egress_ticket and task_id else None
        return ThroughControlPlane(Doors.parse(env_doors), relay_ticket, git_ticket, api_key, wait_for, egress)
    return OwnSecrets(secrets, home, api_url)


NOTICES_EVERY = 2.0  # seconds between two looks at the relay's notices of the task


class NoticeReader:
    """The control plane's relay's notices of this task's account (its rate-limit waits, its
    refused requests), said in the worker's log as a relay of the worker's own says them."""

    def __init__(self, api: ApiEndpoint, on_notice: Callable[[Notice], None]):
        self.api = api
        self.on_notice = on_notice
        self.after = 0

    def read(self) -> None:
        found = _relay_json(self.api, f"{NOTICES_PATH}?after={self.after}")
        if not isinstance(found, list):
            return
        for entry in found:
            if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], int)):
                continue
            number, line = entry
            if number > self.after:
                self.after = number
                self.on_notice(Notice(NoticeKind.RELAYED, None, str(line)[:2000]))

    def follow(self, done: threading.Event) -> None:
        while not done.wait(NOTICES_EVERY):
            self.read()
        self.read()  # what the last requests brought


def _relay_json(api: ApiEndpoint, path: str) -> object:
    request = urllib.request.Request(api.url + path, headers={"x-api-key": api.ticket})
    # On loopback, never through a proxy the environment names.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=30) as answer:
            return json.loads(answer.read(1 << 20))
    except (OSError, ValueError):
        return None


def measured(api: ApiEndpoint) -> dict[str, object] | None:
    """What the relay measured of the ticket's account (the task's), or None when it cannot say."""
    found = _relay_json(api, ACCOUNT_PATH)
    if not isinstance(found, dict):
        return None
    return {name: found[name] for name in USAGE_FIELDS if name in found}
