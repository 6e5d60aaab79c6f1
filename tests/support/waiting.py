"""The one way the tests wait for something to happen: poll a condition until a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# Between polls: short at first, so that a cheap check answers at once; then longer, so that a
# check that asks Docker (docker exec, docker logs) is not asked many times a second.
FIRST_PAUSE = 0.01
LONGEST_PAUSE = 0.25


def wait_until(predicate: Callable[[], T | None], what: str | Callable[[], str], timeout: float = 60.0) -> T:
    """Poll ``predicate`` until it returns something true, and return that.

    After ``timeout`` seconds it fails (AssertionError) naming ``what``: a text, or a function
    called then, to say what was seen (a log, a state). ``predicate`` may raise to fail at once,
    when what it waits for can no longer happen (the process ended)."""
    deadline = time.monotonic() + timeout
    pause = FIRST_PAUSE
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:g} s for {what() if callable(what) else what}")
        time.sleep(pause)  # the interval of a poll with a deadline, not a synchronization
        pause = min(pause * 2, LONGEST_PAUSE)
