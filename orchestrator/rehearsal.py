"""run.py --rehearsal: the whole system, with no token and no remote.

Everything runs as in a real batch (the control plane, the manager's and every worker's real
Claude Code, orch, spawn-worker, the relay, the git channel, the board), but for two stand-ins the
control plane serves (control/rehearsal.py): a scripted model in place of the API, and a
repository of its own in place of origin (the sample app, or a copy of ``--repo``). The manager's
Claude Code starts on the script's request. Results say ``"rehearsal": true``.

The script is JSON (orchestrator/scripted/script_file.py documents the format); without
``--script``, the sample's (rehearsal-sample.json): a request split into four tasks, one
depending on another, one that fails and is retried, one stopped by its budget, then merged.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from . import config, environment
from .docker import FileToCopy
from .errors import InvalidInput
from .launch_control import CONTROL_WORKSPACE
from .scripted.script_file import load as load_script
from .secrets import ClaudeCredential, Secrets

SAMPLE = "sample"
SCRIPT_FROM_PERSON = "script"
SAMPLE_SCRIPT = Path(__file__).with_name("rehearsal-sample.json")
SCRIPT_NAME = ".rehearsal-script.json"  # in the control plane's home, copied there by run.py
ORIGIN = f"{CONTROL_WORKSPACE}/rehearsal/origin.git"  # on the control plane's workspace volume
SAMPLE_REQUEST = "Add a dark mode to the app"
REHEARSAL_NAME = "claude-rehearsal"  # the manager's, unless --name: claude-rehearsal-control, ...
REHEARSAL_VOLUME = "rehearsal-volume"  # the shared volume's, unless --volume or $ORCHESTRATOR_VOLUME
# What the relay sends the scripted model in place of a credential. Not a secret: the model
# answers anyone, on the control plane's loopback.
PLACEHOLDER = ClaudeCredential("rehearsal-no-credential")


def add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "rehearsal", "the whole system with a scripted model and a local repository: no token, no remote, no cost"
    )
    group.add_argument(
        "--rehearsal",
        action="store_true",
        help="run a rehearsal: the API is a scripted model in the control plane; origin is a repository of the "
        "control plane's (the sample app, or a copy of --repo, which is never pushed to); the manager starts on "
        "the script's request",
    )
    group.add_argument(
        "--script",
        metavar="FILE",
        help="with --rehearsal, the model's script (JSON; see the README), instead of the sample's",
    )


@dataclass(frozen=True)
class Plan:
    """A rehearsal, as run.py checked it before starting anything."""

    request: str
    script: bytes | None  # the person's, to copy into the control plane; None: the sample's
    source: str | None  # the person's --repo, to copy

    @property
    def files(self) -> list[FileToCopy]:
        return [] if self.script is None else [FileToCopy(SCRIPT_NAME, self.script, 0o644)]


def own_names(args: argparse.Namespace, env: Mapping[str, str], default_name: str) -> argparse.Namespace:
    """A rehearsal on names of its own, unless the person gave some: its volume, manager and
    clone are never those a real batch takes by default (whose workspace would then hold a clone
    of the rehearsal's origin, and its volume the rehearsal's tasks)."""
    given_volume = env.get(environment.VOLUME.name) or args.volume != environment.VOLUME.default
    return argparse.Namespace(**{
        **vars(args),
        "name": REHEARSAL_NAME if args.name == default_name else args.name,
        "volume": args.volume if given_volume else REHEARSAL_VOLUME,
    })  # fmt: skip


def plan(args: argparse.Namespace) -> Plan | None:
    """The rehearsal asked for, checked; None for a real batch."""
    if not args.rehearsal:
        if args.script:
            raise InvalidInput("--script is a rehearsal's: add --rehearsal")
        return None
    for given, option in (
        (args.manager_docker_socket, "--manager-docker-socket"),
        (args.engine == config.ENGINE_SWARM, "--engine swarm"),
        (args.no_repo, "--no-repo"),
        (args.api_url, "--api-url"),
    ):
        if given:
            raise InvalidInput(f"--rehearsal runs with the control plane, its scripted model and its own origin: "
                               f"not with {option}")  # fmt: skip
    path = Path(args.script).expanduser() if args.script else SAMPLE_SCRIPT
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read the script {path}: {exc.strerror or exc}") from None
    script = load_script(raw.decode("utf-8", errors="replace"), str(path))  # its faults, before any start
    return Plan(
        request=(script.request or SAMPLE_REQUEST).strip(),
        script=raw if args.script else None,
        source=args.repo,
    )


def secrets(args: argparse.Namespace, env: Mapping[str, str]) -> Secrets:
    """No Claude credential (the relay sends the model a placeholder); the git access, as for a real
    batch, when the control plane copies a ``--repo``."""
    if not args.repo:
        return Secrets(claude=PLACEHOLDER)
    access = Secrets.read_git_access(ssh_key=args.ssh_key, known_hosts=args.known_hosts,
                                     git_token_file=args.git_token, env=env)  # fmt: skip
    return replace(access, claude=PLACEHOLDER)


def settings(given: Plan, values: dict[str, str]) -> dict[str, str]:
    """run.py's settings, for a rehearsal."""
    return {
        **values,
        environment.REPO_URL.name: ORIGIN,
        environment.REHEARSAL.name: SCRIPT_FROM_PERSON if given.script is not None else SAMPLE,
        **({environment.REHEARSAL_SOURCE.name: given.source} if given.source else {}),
        environment.FIRST_REQUEST.name: given.request,
        environment.LOGIN_CHECK.name: "no",  # nothing to ask: the model is the control plane's
    }
