"""The errors every command shares, and their fixed exit codes."""

from __future__ import annotations

# Fixed exit codes, the same for every command.
EXIT_OK = 0
EXIT_FAILURE = 1  # an expected failure: Docker refused, a file is missing, a worker failed
EXIT_USAGE = 2  # bad arguments or bad input (argparse uses 2 as well)
EXIT_INTERRUPTED = 130  # Ctrl-C


class UserError(Exception):
    """An expected failure, with a message a person can act on."""

    exit_code = EXIT_FAILURE


class InvalidInput(UserError):
    """The input (a file, an argument) is malformed; the message names what is wrong."""

    exit_code = EXIT_USAGE
