"""Errors shared by every command, and the error boundary that turns them into exit codes."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

# Fixed exit codes, the same for every command.
EXIT_OK = 0
EXIT_FAILURE = 1  # an expected failure: Docker refused, a file is missing, a worker failed
EXIT_USAGE = 2  # bad arguments or bad input (argparse uses 2 as well)
EXIT_INTERRUPTED = 130  # Ctrl-C

log = logging.getLogger("orchestrator")


class UserError(Exception):
    """An expected failure, with a message a person can act on."""

    exit_code = EXIT_FAILURE


class InvalidInput(UserError):
    """The input (a file, an argument) is malformed; the message names what is wrong."""

    exit_code = EXIT_USAGE


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
