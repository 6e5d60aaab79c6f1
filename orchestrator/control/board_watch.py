"""The board as the browsers follow it: polled from the backend while someone watches."""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections.abc import Iterator

from .board import BoardBackend

log = logging.getLogger("orchestrator.control.board_watch")
KEEPALIVE_SECONDS = 15.0  # a follower is woken this often without a change, to notice a closed browser


class BoardWatch:
    """Polls the backend's board while someone follows it, and tells the followers when it changed."""

    def __init__(self, backend: BoardBackend, interval: float) -> None:
        self._backend = backend
        self._interval = interval
        self._changed = threading.Condition()
        self._payload: bytes | None = None
        self._version = 0
        self._followers = 0
        self._stopped = False

    def run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._stopped or self._followers > 0)
                if self._stopped:
                    return
            payload = self._poll()  # outside the lock: the backend may be slow
            with self._changed:
                if payload is not None and payload != self._payload:
                    self._payload, self._version = payload, self._version + 1
                    self._changed.notify_all()
                self._changed.wait_for(lambda: self._stopped, timeout=self._interval)

    def _poll(self) -> bytes | None:
        try:
            return json.dumps(self._backend.board().to_json(), ensure_ascii=True, default=str).encode()
        except Exception:
            log.exception("the board's backend failed; the board keeps what it had")
            return None

    def follow(self, keepalive: float = KEEPALIVE_SECONDS) -> Iterator[bytes | None]:
        """The board each time it changed (first: as it is now); None after ``keepalive`` seconds
        without a change. Ends when the board stops."""
        with self._changed:
            if self._followers == 0:
                self._payload = None  # nobody polled for a while: wait for a fresh board
            self._followers += 1
            self._changed.notify_all()
        seen = -1  # the version last given
        try:
            while True:
                with self._changed:
                    self._changed.wait_for(functools.partial(self._stopped_or_news, seen), keepalive)
                    if self._stopped:
                        return
                    payload = self._payload if self._news(seen) else None
                    seen = self._version
                yield payload
        finally:
            with self._changed:
                self._followers -= 1

    def _news(self, seen: int) -> bool:
        return self._payload is not None and self._version != seen

    def _stopped_or_news(self, seen: int) -> bool:
        return self._stopped or self._news(seen)

    def stop(self) -> None:
        with self._changed:
            self._stopped = True
            self._changed.notify_all()
