"""What the person chose for a task's egress, at three levels: run.py (``--egress``,
``--allow-host``: the orchestration's), ``orch start`` (the batch's, in dispatcher.json) and
``orch submit`` (the task's, in its task file). The control plane's egress proxy makes the
task's policy of them when a connection of the task comes (control/egress_service.py).

The most specific level that names a policy wins, and the hosts of that level and of the levels
below it are added: a task that says ``none`` gets nothing, whatever run.py allowed; a task
that names no policy gets its batch's (or run.py's) with its own hosts added. No level naming
one: ``default``, the worker type's own list.

A policy FILE is read where it is named (run.py, on the person's machine) and travels as its
patterns under the name ``file``: the control plane cannot read the person's files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .control.egress_policy import NONE, OPEN, POLICY_NAMES, HostPattern, Policy, PolicyError, parse_policy
from .errors import InvalidInput

FILE = "file"  # a policy file's patterns, read where it was named
STORED = (*POLICY_NAMES, FILE)


@dataclass(frozen=True)
class EgressChoice:
    """One level's choice: a policy by name (None: this level names none) and hosts to add."""

    policy: str | None = None
    allow_hosts: tuple[str, ...] = ()

    @property
    def given(self) -> bool:
        return self.policy is not None or bool(self.allow_hosts)


def check_hosts(hosts: Iterable[object], what: str) -> tuple[str, ...]:
    """``--allow-host`` values (HOST[:PORT]), each checked now, so that a mistake is told where it is made."""
    found = []
    for host in hosts:
        if not isinstance(host, str):
            raise InvalidInput(f"{what}: a host is a string, HOST or HOST:PORT")
        try:
            HostPattern.parse(host.strip())
        except ValueError as exc:
            raise InvalidInput(f"{what}: {host[:80]!r}: {exc}") from None
        found.append(host.strip())
    return tuple(found)


def check_policy(value: object, what: str, *, stored: bool = False) -> str | None:
    """A policy by name: none, default or open (and ``file`` in what run.py passes on)."""
    if value is None:
        return None
    allowed = STORED if stored else POLICY_NAMES
    if value not in allowed:
        raise InvalidInput(f"{what} is {str(value)[:40]!r}: one of {', '.join(allowed)}")
    return str(value)


def from_options(egress: str | None, allow_hosts: Sequence[str] | None, what: str = "--egress") -> EgressChoice:
    """run.py's options: a policy by name, or a file read now, and the ``--allow-host`` values."""
    hosts = check_hosts(allow_hosts or (), "--allow-host")
    if egress is None or egress in POLICY_NAMES:
        return EgressChoice(egress, hosts)
    try:
        text = Path(egress).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{what} {egress}: not none, default, open, nor a policy file it can read ({exc})") from None
    try:
        policy = parse_policy(text, name=FILE, source=egress)
    except PolicyError as exc:
        raise InvalidInput(str(exc)) from None
    return EgressChoice(FILE, (*(pattern.text for pattern in policy.patterns), *hosts))


def to_environment(choice: EgressChoice) -> tuple[str | None, str | None]:
    """$ORCHESTRATOR_EGRESS and $ORCHESTRATOR_ALLOW_HOSTS (hosts separated by spaces)."""
    return choice.policy, " ".join(choice.allow_hosts) or None


def from_environment(policy: str | None, hosts: str | None) -> EgressChoice:
    return EgressChoice(
        check_policy(policy or None, "$ORCHESTRATOR_EGRESS", stored=True),
        check_hosts((hosts or "").split(), "$ORCHESTRATOR_ALLOW_HOSTS"),
    )


def resolve(levels: Sequence[EgressChoice], default_policy: Callable[[], Policy]) -> Policy:
    """The policy of ``levels``, the least specific first (run.py's, the batch's, the task's)."""
    chosen, start = "default", 0
    for index, level in enumerate(levels):
        if level.policy is not None:
            chosen, start = level.policy, index
    hosts = [host for level in levels[start:] for host in level.allow_hosts]
    if chosen == "none":
        return NONE.with_hosts(hosts)
    if chosen == "open":
        return OPEN.with_hosts(hosts)
    if chosen == FILE:
        return Policy(FILE).with_hosts(hosts)
    return default_policy().with_hosts(hosts)
