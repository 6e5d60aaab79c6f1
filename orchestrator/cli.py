"""What every command shares: the error boundary and the help formatting."""

from __future__ import annotations

import argparse
import errno
import logging
import sys
import textwrap
from collections.abc import Callable, Mapping

from . import config, environment
from .errors import EXIT_FAILURE, EXIT_INTERRUPTED, InvalidInput, UserError

log = logging.getLogger("orchestrator")


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, without breaking model and image names at their hyphens."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return textwrap.fill(
            " ".join(text.split()), width, initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False
        )


def add_placement_options(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    """Where containers go: the options run.py and spawn-worker share, defaulted from the
    environment that run.py hands to the manager."""
    parser.add_argument(
        "--volume",
        default=environment.VOLUME.get(env),
        help=f"the shared volume (default: ${environment.VOLUME.name}, else {environment.VOLUME.default})",
    )
    parser.add_argument(
        "--network",
        default=environment.NETWORK.get(env),
        help=f"Docker network of the containers started (default: ${environment.NETWORK.name}, else Docker's default)",
    )
    parser.add_argument(
        "--image-prefix",
        default=environment.IMAGE_PREFIX.get(env),
        help=f"image name prefix (default: ${environment.IMAGE_PREFIX.name}, else {environment.IMAGE_PREFIX.default})",
    )
    parser.add_argument(
        "--engine",
        choices=config.ENGINES,
        default=environment.ENGINE.get(env),
        help=f"what runs the workers: containers on this engine, or jobs of the swarm it manages "
        f"(default: ${environment.ENGINE.name}, else {environment.ENGINE.default})",
    )
    parser.add_argument("--debug", action="store_true", help="print the docker commands run, and tracebacks")


def add_git_access_options(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    """How git reaches the repository: the options run.py and spawn-worker share."""
    parser.add_argument(
        "--ssh-key", metavar="FILE", help="private key for git over SSH (default: ~/.ssh/id_ed25519, if it exists)"
    )
    parser.add_argument(
        "--known-hosts",
        metavar="FILE",
        help="known_hosts file: only its host keys are trusted (default: ~/.ssh/known_hosts_pinned if it "
        "exists, else a host key is accepted on first use)",
    )
    parser.add_argument(
        "--git-token",
        metavar="FILE",
        help="file holding a token for HTTPS remotes, given to git by a credential helper (default: "
        "~/.git-token if it exists)",
    )
    parser.add_argument(
        "--branch-prefix",
        default=environment.BRANCH_PREFIX.get(env),
        help=f"task branches are PREFIX + task id (default: ${environment.BRANCH_PREFIX.name}, else "
        f"{environment.BRANCH_PREFIX.default})",
    )


def add_api_option(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    parser.add_argument(
        "--api-url",
        metavar="URL",
        default=environment.ANTHROPIC_BASE_URL.get(env),
        help="the Claude API endpoint, for an LLM gateway or a company proxy (default: "
        f"${environment.ANTHROPIC_BASE_URL.name}, else Anthropic's)",
    )


def add_limit_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, env: Mapping[str, str] | None = None
) -> None:
    """What one worker may use, its defaults from ``env``; without one, an option left out means
    "as before"."""

    def default(var: environment.Var) -> str | None:
        return var.get(env) if env is not None else None

    parser.add_argument(
        "--memory",
        metavar="SIZE",
        default=default(environment.WORKER_MEMORY),
        help=f"memory limit of a worker, as docker run --memory takes it (default: ${environment.WORKER_MEMORY.name}, "
        f"else {environment.WORKER_MEMORY.default})",
    )
    parser.add_argument(
        "--cpus",
        metavar="N",
        default=default(environment.WORKER_CPUS),
        help=f"CPUs a worker may use (default: ${environment.WORKER_CPUS.name}, else "
        f"{environment.WORKER_CPUS.default})",
    )
    parser.add_argument(
        "--pids-limit",
        metavar="N",
        default=default(environment.WORKER_PIDS),
        help=f"processes a worker may run at once (default: ${environment.WORKER_PIDS.name}, else "
        f"{environment.WORKER_PIDS.default})",
    )
    parser.add_argument(
        "--disk",
        metavar="SIZE",
        default=default(environment.WORKER_DISK),
        help="what a worker's agent may write (its clone, home and temporary files), or 'none' for no bound; "
        "a tmpfs counted in the memory limit where the storage driver has no quota (default: "
        f"${environment.WORKER_DISK.name}, else {environment.WORKER_DISK.default})",
    )


def check_branch_prefix(prefix: str) -> str:
    """A prefix that git takes at the start of a branch name (git check-ref-format's rules)."""
    components = prefix.split("/")[:-1] if prefix.endswith("/") else prefix.split("/")
    if (
        not config.BRANCH_PREFIX_PATTERN.fullmatch(prefix)
        or ".." in prefix
        or "//" in prefix
        or any(part.startswith(".") or part.endswith(".lock") for part in components)
    ):
        raise InvalidInput(
            f"--branch-prefix {prefix!r} is not usable in a branch name (git refuses '..', '//', and a part "
            "that starts with '.' or ends with '.lock')"
        )
    return prefix


def run_command(prog: str, func: Callable[[], int], *, debug: bool = False) -> int:
    """Run ``func`` behind the one error boundary of a command.

    Expected failures print ``prog: error: message`` and return their exit code; anything
    else is a bug and keeps its traceback. ``debug`` shows the traceback for both.
    """
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format=f"{prog}: %(levelname)s: %(message)s",
    )
    try:
        return func()
    except UserError as exc:
        if debug:
            log.exception("expected failure")
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:
        # A full or read-only disk is the machine's state, not a bug: one line, no traceback.
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise
        if debug:
            log.exception("expected failure")
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"{prog}: error: cannot write{where}: {exc.strerror}; free some space and run it again", file=sys.stderr)
        return EXIT_FAILURE
