"""Reading the API's own usage figures from an answer while it passes through, unchanged.

Server-sent events (``text/event-stream``): ``message_start`` carries ``message.model`` and
``message.usage`` (input, cache-creation and cache-read tokens, and the output tokens so far);
each ``message_delta`` carries ``usage`` with the cumulative output tokens (and, from newer API
versions, other cumulative counts). JSON answers carry ``model`` and ``usage`` at the top.

The meter holds little: one line of events at a time (a line longer than ``MAX_EVENT_LINE`` is
skipped: usage events are small, only content deltas grow), and of a JSON answer its beginning
and end (the API puts ``model`` first and ``usage`` last) unless it is small enough to hold whole.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from .pricing import Usage

MAX_EVENT_LINE = 1 << 20
JSON_WHOLE = 1 << 20  # a JSON answer up to this size is parsed whole
JSON_EDGE = 64 << 10  # of a larger one, this much of its beginning and of its end

# model, usage so far: called each time an answer's usage changes.
OnUsage = Callable[[str | None, Usage], None]


class AnswerMeter:
    """Feed it an answer's body piece by piece; it calls ``on_usage`` as the usage grows."""

    def __init__(self, content_type: str, on_usage: OnUsage):
        self.on_usage = on_usage
        self.events = content_type.split(";")[0].strip().lower() == "text/event-stream"
        self.model: str | None = None
        self.usage: Usage | None = None
        self._line = bytearray()
        self._skipping = False  # inside a line too long to hold
        self._head = bytearray()
        self._tail = bytearray()
        self._size = 0

    def feed(self, piece: bytes) -> None:
        if self.events:
            self._feed_events(piece)
        else:
            self._feed_json(piece)

    def close(self) -> None:
        """The answer has ended: a JSON answer is read now."""
        if self.events:
            self._feed_events(b"\n")
        elif self._size:
            self._read_json()

    # server-sent events

    def _feed_events(self, piece: bytes) -> None:
        start = 0
        while True:
            end = piece.find(b"\n", start)
            if end < 0:
                rest = piece[start:]
                if not self._skipping:
                    self._line += rest
                    if len(self._line) > MAX_EVENT_LINE:
                        self._line.clear()
                        self._skipping = True
                return
            if not self._skipping:
                self._line += piece[start:end]
                self._event_line(bytes(self._line))
            self._line.clear()
            self._skipping = False
            start = end + 1

    def _event_line(self, line: bytes) -> None:
        # The event's name is in its data too ("type"), so the data lines are enough.
        if not line.startswith(b"data:") or b'"message_' not in line[:64]:
            return
        try:
            data = json.loads(line[5:])
        except ValueError:
            return
        if not isinstance(data, dict):
            return
        if data.get("type") == "message_start" and isinstance(data.get("message"), dict):
            message = data["message"]
            if isinstance(message.get("model"), str):
                self.model = message["model"]
            self._report((self.usage or Usage()).updated(message.get("usage")))
        elif data.get("type") == "message_delta" and isinstance(data.get("usage"), dict):
            self._report((self.usage or Usage()).updated(data["usage"]))

    # JSON

    def _feed_json(self, piece: bytes) -> None:
        self._size += len(piece)
        if len(self._head) < JSON_WHOLE:
            self._head += piece[: JSON_WHOLE - len(self._head)]
        self._tail += piece
        if len(self._tail) > JSON_EDGE:
            del self._tail[: len(self._tail) - JSON_EDGE]

    def _read_json(self) -> None:
        if self._size <= JSON_WHOLE:
            try:
                data = json.loads(self._head)
            except ValueError:
                return
            if isinstance(data, dict):
                if isinstance(data.get("model"), str):
                    self.model = data["model"]
                if isinstance(data.get("usage"), dict):
                    self._report(Usage.from_api(data["usage"]))
            return
        model = _value_after(bytes(self._head[:JSON_EDGE]), b'"model":', first=True)
        self.model = model if isinstance(model, str) else None
        usage = _value_after(bytes(self._tail), b'"usage":', first=False)
        if isinstance(usage, dict):
            self._report(Usage.from_api(usage))

    def _report(self, usage: Usage) -> None:
        if usage != self.usage:
            self.usage = usage
            self.on_usage(self.model, usage)


def _value_after(text: bytes, key: bytes, *, first: bool) -> object:
    """The JSON value after ``key`` in a piece of a document too large to parse whole."""
    at = text.find(key) if first else text.rfind(key)
    if at < 0:
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(text[at + len(key) :].decode("utf-8", "replace").lstrip())
    except ValueError:
        return None
    return value
