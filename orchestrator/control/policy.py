"""What the manager may ask of the control plane, and nothing else.

The manager's ``orch`` and ``spawn-worker`` send their command lines (channel.py); this module
parses each with the command's own parser (so that abbreviations such as ``--orch`` for
``--orchestration-dir`` are read as the command would read them) and refuses, naming the option,
any choice that belongs to the control plane: where the volume is, which engine runs workers,
which repository and credentials a worker gets, which images, which network. The operations of a
batch are allowed; ``orch dispatch`` is the control plane's own.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from ..errors import InvalidInput
from .channel import Request

# orch's subcommands the manager may run; dispatch is the control plane's.
ORCH_COMMANDS = frozenset({"submit", "start", "status", "wait", "result", "logs", "cancel", "retry", "cleanup",
                           "merge", "batch", "push", "dashboard"})  # fmt: skip
# Options whose value is the control plane's to choose, by the name argparse stores them under.
ORCH_FIXED = ("orchestration_dir", "engine", "volume", "repo_dir", "branch_prefix")
SPAWN_FIXED = ("repo", "branch", "token", "ssh_key", "known_hosts", "git_token", "api_url", "volume", "network",
               "image_prefix", "engine", "orchestration_dir", "branch_prefix")  # fmt: skip
_OPTION_NAMES = {"repo_dir": "--repo-dir", "orchestration_dir": "--orchestration-dir", "image_prefix": "--image-prefix",
                 "api_url": "--api-url", "ssh_key": "--ssh-key", "known_hosts": "--known-hosts",
                 "git_token": "--git-token", "branch_prefix": "--branch-prefix"}  # fmt: skip


def check(request: Request, env: Mapping[str, str]) -> None:
    """Refuse (InvalidInput) what the manager may not ask; let the rest through."""
    parser, fixed = _parser(request.command, env)
    defaults = _mark_given(parser, fixed)
    args = _parse(parser, request.argv)
    if args is None:
        return  # --help, or a usage error: the command itself says so, and does nothing
    if request.command == "orch" and args.command not in ORCH_COMMANDS:
        raise InvalidInput(f"`orch {args.command}` is the control plane's own; the manager may not run it")
    if request.command == "orch" and args.command == "dashboard" and args.login:
        # The secret opens the person's session on the board: an agent that held it could hand it on.
        raise InvalidInput(
            "the board's login link is the person's, not the manager's: run.py printed it, and "
            "`docker exec NAME-control orch dashboard --login` on the host prints it again"
        )
    for name in fixed:
        value = getattr(args, name, _NOT_GIVEN)
        if value is _NOT_GIVEN or value == defaults.get(name):
            continue
        option = _OPTION_NAMES.get(name, f"--{name.replace('_', '-')}")
        raise InvalidInput(
            f"{option} is the control plane's to choose, not the manager's (refused by the control plane's "
            "policy: every worker gets the orchestration's own repository, credentials, images and network)"
        )


_NOT_GIVEN = object()


def _mark_given(parser: argparse.ArgumentParser, fixed: tuple[str, ...]) -> dict[str, object]:
    """Make every fixed option of the parser and its subcommands default to a mark, so that the
    parsed arguments say which were given; their real defaults (the control plane's values)."""
    defaults: dict[str, object] = {}
    parsers = [parser]
    while parsers:
        current = parsers.pop()
        # What it would print (help, a usage error) is for the command itself, which runs next and
        # says it; not printed here, where the standard output is the control plane's, and its
        # other threads' (redirecting it for one parse would swallow theirs).
        setattr(current, "_print_message", _print_nothing)  # noqa: B010
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
            elif action.dest in fixed:
                defaults.setdefault(action.dest, action.default)
                action.default = _NOT_GIVEN
    return defaults


def _parser(command: str, env: Mapping[str, str]) -> tuple[argparse.ArgumentParser, tuple[str, ...]]:
    if command == "orch":
        from ..orch import build_parser as orch_parser

        return orch_parser(env), ORCH_FIXED
    from ..spawn import build_parser as spawn_parser

    return spawn_parser(env), SPAWN_FIXED


def _print_nothing(message: str, file: object = None) -> None:
    pass


def _parse(parser: argparse.ArgumentParser, argv: object) -> argparse.Namespace | None:
    """The arguments as the command reads them; None when it would only print help or refuse."""
    try:
        return parser.parse_args(list(argv))  # type: ignore[call-overload]
    except SystemExit:
        return None
