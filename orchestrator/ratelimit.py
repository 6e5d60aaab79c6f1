"""The relay's gate to the API: a bound on requests in flight across all accounts, which the
API's rate limits lower and successes raise again.

When the API answers 429 (rate limited) or 529 (overloaded), the gate closes for the pause the
answer asks for (``retry-after``, in seconds, plus up to a quarter more, so that the requests
held back do not all come back at the same instant) or, without one, for an exponential pause
(1 s, 2 s, 4 s, ... at most ``MAX_PAUSE``). It lowers its bound to the number of other requests
the API was answering when it refused (one less at least: the refusals of a burst bring it down
to what the API took at once), or, for a request refused alone, halves it (once per pause); it
raises it again by one after each ``raise_after`` successes, up to the bound it was given.
Fan-out then costs the API one request per opening, not one per worker, and a rate limit is
absorbed by waiting instead of multiplied by every client's retries.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

MAX_PAUSE = 60.0
FIRST_PAUSE = 1.0
JITTER = 0.25


@dataclass(frozen=True)
class GateView:
    bound: int
    max_bound: int
    in_flight: int
    queued: int
    backing_off: bool
    backoff_seconds_left: float
    backoff_until: float | None  # time.time() at which it opens again
    reason: str  # why it last backed off ("retry-after 6 s (429)")

    def to_json(self) -> dict[str, object]:
        return {
            "bound": self.bound,
            "max_bound": self.max_bound,
            "in_flight": self.in_flight,
            "queued": self.queued,
            "backing_off": self.backing_off,
            "backoff_seconds_left": round(self.backoff_seconds_left, 3),
            "backoff_until": self.backoff_until,
            "reason": self.reason,
        }


class RateGate:
    def __init__(
        self,
        max_in_flight: int,
        *,
        raise_after: int = 10,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ):
        if max_in_flight < 1:
            raise ValueError("the bound on requests in flight must be at least 1")
        self.max_bound = max_in_flight
        self.bound = max_in_flight
        self.raise_after = max(1, raise_after)
        self.clock = clock
        self.jitter = jitter
        self.in_flight = 0
        self.queued = 0
        self.open_at = 0.0  # clock() before which nothing is let through
        self.reason = ""
        self._successes = 0
        self._pauses_in_a_row = 0
        self._changed = threading.Condition()

    def enter(self, deadline: float) -> bool:
        """Wait for a place in flight; False when ``deadline`` (a ``clock()`` time) comes first."""
        with self._changed:
            self.queued += 1
            try:
                while True:
                    now = self.clock()
                    if now >= self.open_at and self.in_flight < self.bound:
                        self.in_flight += 1
                        return True
                    if now >= deadline:
                        return False
                    wait = min(deadline, self.open_at) - now if now < self.open_at else deadline - now
                    self._changed.wait(min(max(wait, 0.001), 60.0))
            finally:
                self.queued -= 1

    def leave(self, *, succeeded: bool) -> None:
        with self._changed:
            self.in_flight -= 1
            if succeeded:
                self._pauses_in_a_row = 0
                self._successes += 1
                if self._successes >= self.raise_after and self.bound < self.max_bound:
                    self.bound += 1
                    self._successes = 0
            self._changed.notify_all()

    def back_off(self, status: int, retry_after: float | None) -> float:
        """The API refused for its limits: close for a while; returns the clock time it opens again."""
        with self._changed:
            now = self.clock()
            if retry_after is None:
                pause = min(MAX_PAUSE, FIRST_PAUSE * 2**self._pauses_in_a_row)
                self.reason = f"{status} without retry-after: a pause of {pause:g} s"
            else:
                pause = retry_after
                self.reason = f"retry-after {retry_after:g} s ({status})"
            pause *= 1 + JITTER * self.jitter()
            others = self.in_flight - 1  # what the API was answering besides the refused request
            if others > 0:
                # It takes about that many at once: the bound goes down to it (by one at least),
                # once per refusal, so that a burst's refusals bring it to what the API took.
                self.bound = max(1, min(self.bound - 1, others))
            elif now >= self.open_at:  # refused alone: a limit in time, not in number; once per pause
                self.bound = max(1, self.bound // 2)
            if now >= self.open_at:  # the first refusal of this pause, not its echoes
                self._pauses_in_a_row += 1
            self._successes = 0
            self.open_at = max(self.open_at, now + pause)
            self._changed.notify_all()
            return self.open_at

    def view(self) -> GateView:
        with self._changed:
            left = max(0.0, self.open_at - self.clock())
            return GateView(
                bound=self.bound,
                max_bound=self.max_bound,
                in_flight=self.in_flight,
                queued=self.queued,
                backing_off=left > 0,
                backoff_seconds_left=left,
                backoff_until=time.time() + left if left > 0 else None,
                reason=self.reason,
            )


def retry_after_seconds(value: str | None) -> float | None:
    """The API's ``retry-after`` header: a number of seconds (an HTTP date is not what it sends)."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return min(seconds, 24 * 3600.0) if seconds >= 0 else None
