"""The scripted API's HTTP server: `ScriptedAPI` serves scenarios of turns on a port of this machine.

How a request finds its turn, and what the real Claude Code CLI sends and does: the package docstring
(orchestrator/scripted/__init__.py).
"""

from __future__ import annotations

import itertools
import json
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from .answers import describe, message_object, resolve, tool_use_id
from .requests import Request, ToolResult, assistant_turns
from .turns import DONE, Error, Hang, Reply, TextBlock, Turn, text


class ScriptedAPI:
    """The scripted API on host:port (port 0: a free one). A context manager; stop() ends hanging answers.

    capacity: conversation requests answered at once; one more gets 429 rate_limit_error with
    ``retry-after: <retry_after>`` (and uses no turn). None: no limit.
    keep_requests: how many of the latest requests `requests` keeps (None: all, as tests read them all);
    a rehearsal serves for hours. The counters (`answered`, `rate_limited`, the attempts) count them all.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        default: Iterable[Turn] | None = None,
        capacity: int | None = None,
        retry_after: float = 1.0,
        keep_requests: int | None = None,
    ) -> None:
        if keep_requests is not None and keep_requests < 0:
            raise ValueError(f"keep_requests must be 0 or more, not {keep_requests}")
        self.default = tuple(default) if default is not None else None
        self.capacity = capacity
        self.retry_after = retry_after
        self._in_flight = 0
        self._max_in_flight = 0
        self._rate_limited = 0
        self._answered: dict[str | None, int] = {}
        self._scenarios: dict[str, tuple[Turn, ...]] = {}
        self._requests: deque[Request] = deque(maxlen=keep_requests)
        self._attempts: dict[tuple[str, int], int] = {}
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._refused: set[str] = set()
        self._httpd = _Server((host, port), _Handler, self)
        self._thread: threading.Thread | None = None

    # lifecycle

    def start(self) -> Self:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, args=(0.1,), name="scripted-api", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; answers that hang or wait return at once, leaving their connections to close."""
        self._stopping.set()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=10)
        self._httpd.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def host(self) -> str:
        return str(self._httpd.server_address[0])

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return self.url_for(host)

    def url_for(self, host: str) -> str:
        """The URL under another name for this machine, e.g. a Docker network's gateway address."""
        return f"http://{host}:{self.port}"

    # scenarios

    def script(self, marker: str, *turns: Turn) -> None:
        if not marker:
            raise ValueError("a scenario needs a non-empty marker")
        for turn in turns:
            if not isinstance(turn, Turn):
                raise TypeError(f"not a turn: {turn!r} (use text(...), bash(...), error(...), ...)")
        with self._lock:
            if marker in self._scenarios:
                raise ValueError(f"a scenario is already registered under {marker!r}")
            self._scenarios[marker] = turns

    def refuse(self, credential: str) -> None:
        """Answer every request that carries this token or key with 401, as the API does for one
        it does not accept."""
        with self._lock:
            self._refused.add(credential)

    def refuses(self, headers: Mapping[str, str]) -> bool:
        offered = headers.get("x-api-key") or (headers.get("authorization") or "").removeprefix("Bearer ")
        with self._lock:
            return offered in self._refused

    # what arrived

    @property
    def requests(self) -> list[Request]:
        with self._lock:
            return sorted(self._requests, key=lambda request: request.number)

    def requests_for(self, marker: str) -> list[Request]:
        """The conversation requests of one scenario, in order of arrival."""
        return [r for r in self.requests if r.kind == "conversation" and r.marker == marker]

    def unmatched(self) -> list[Request]:
        """Conversation requests with no scenario's marker (answered by the default scenario, if any)."""
        return [r for r in self.requests if r.kind == "conversation" and r.marker is None]

    def tool_result_blocks(self, marker: str) -> list[ToolResult]:
        """Each tool result the agents of a scenario sent back, once, in order."""
        seen: dict[str, ToolResult] = {}
        for request in self.requests_for(marker):
            for result in request.tool_results():
                seen.setdefault(result.tool_use_id, result)
        return list(seen.values())

    def tool_results(self, marker: str) -> list[str]:
        """What each tool call of a scenario gave back (a command's output, an error), in order."""
        return [result.content for result in self.tool_result_blocks(marker)]

    def authorizations(self) -> list[str]:
        """The Authorization header of each request that had one ("Bearer <token>")."""
        return [value for r in self.requests if (value := r.header("Authorization")) is not None]

    def api_keys(self) -> list[str]:
        """The x-api-key header of each request that had one."""
        return [value for r in self.requests if (value := r.header("x-api-key")) is not None]

    def log(self) -> str:
        """One line per request, for assertion messages."""
        return "\n".join(r.summary() for r in self.requests)

    def answered(self, marker: str | None) -> int:
        """Conversation requests of a scenario answered with one of its turns (None: unmatched ones)."""
        with self._lock:
            return self._answered.get(marker, 0)

    @property
    def rate_limited(self) -> int:
        """429s given: over capacity, or scripted."""
        with self._lock:
            return self._rate_limited

    @property
    def max_in_flight(self) -> int:
        """The most conversation requests being answered at once, so far."""
        with self._lock:
            return self._max_in_flight

    # used by the handler

    def _record(self, request: Request) -> None:
        with self._lock:
            self._requests.append(request)

    def _number(self) -> int:
        with self._lock:
            return next(self._numbers)

    def _find(self, prompt: str) -> tuple[str | None, tuple[Turn, ...] | None]:
        with self._lock:
            found = [marker for marker in self._scenarios if marker in prompt]
            if found:
                marker = max(found, key=len)
                return marker, self._scenarios[marker]
        return None, self.default

    def _markers(self) -> list[str]:
        with self._lock:
            return list(self._scenarios)

    def _enter(self) -> bool:
        """A place for a conversation request, or False when all ``capacity`` are taken."""
        with self._lock:
            if self.capacity is not None and self._in_flight >= self.capacity:
                return False
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            return True

    def _leave(self, marker: str | None) -> None:
        with self._lock:
            self._in_flight -= 1
            self._answered[marker] = self._answered.get(marker, 0) + 1

    def _count_429(self) -> None:
        with self._lock:
            self._rate_limited += 1

    def _next_attempt(self, marker: str | None, position: int) -> int:
        with self._lock:
            key = (marker or "", position)
            attempt = self._attempts.get(key, 0)
            self._attempts[key] = attempt + 1
            return attempt


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # many agents connect at once (socketserver's 5 would drop some)

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], api: ScriptedAPI) -> None:
        self.api = api
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A CLI killed in the middle of an answer is a normal event in these tests, not worth a traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    # HTTP/1.0: each answer closes its connection, so a stream needs no length and no chunking.
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: object) -> None:
        pass

    @property
    def api(self) -> ScriptedAPI:
        return self.server.api

    def _refused(self, number: int) -> bool:
        if not self.api.refuses({k.lower(): v for k, v in self.headers.items()}):
            return False
        self.api._record(self._request(number, None, "refused", answer="401 refused credential"))
        self._error(Error(401, "invalid authentication credentials"))
        return True

    def do_HEAD(self) -> None:
        number = self.api._number()
        status = 200 if self._route() == "/api/hello" else 404
        self.api._record(self._request(number, None, "hello" if status == 200 else "other", answer=str(status)))
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        number = self.api._number()
        if not self._refused(number):
            self._other(number, None)

    def do_POST(self) -> None:
        number = self.api._number()
        body = self._body()
        if self._refused(number):
            return
        route = self._route()
        if route == "/v1/messages/count_tokens":
            self.api._record(self._request(number, body, "count_tokens", answer="input_tokens 100"))
            self._json(200, {"input_tokens": 100})
        elif route == "/v1/messages" and isinstance(body, dict):
            # Not `stream`: the CLI repeats a turn unstreamed after some failures (a 404), tools and all.
            if body.get("tools"):
                self._conversation(number, body)
            else:
                self._side(number, body)
        else:
            self._other(number, body)

    # the routes

    def _conversation(self, number: int, body: dict) -> None:
        base = self._request(number, body, "conversation")
        marker, turns = self.api._find(base.prompt())
        if turns is None:
            message = (
                f"scripted_api: no scenario matched: none of the markers {self.api._markers()} "
                f"is in the first user message: {base.prompt()[:300]!r}"
            )
            self.api._record(replace(base, answer="400 no scenario matched"))
            self._error(Error(400, message))
            return
        position = assistant_turns(base.messages)
        if not self.api._enter():
            self.api._record(replace(base, marker=marker, position=position, answer="429 over capacity"))
            retry_after = (("retry-after", f"{self.api.retry_after:g}"),)
            self._error(Error(429, "scripted_api: over capacity", retry_after))
            return
        try:
            attempt = self.api._next_attempt(marker, position)
            request = replace(base, marker=marker, position=position, attempt=attempt)
            turn = turns[position] if position < len(turns) else DONE
            answer = resolve(turn, request, attempt)
            self.api._record(replace(request, answer=describe(answer)))
            if answer.delay and self.api._stopping.wait(answer.delay):
                return
            self._answer(answer.turn, str(body.get("model") or "claude-scripted"), bool(body.get("stream")))
        finally:
            self.api._leave(marker)

    def _side(self, number: int, body: dict) -> None:
        self.api._record(self._request(number, body, "side", answer="text"))
        model = str(body.get("model") or "claude-scripted")
        if body.get("stream"):
            self._stream(text("OK."), model)
        else:
            self._json(200, message_object(model, text("OK.")))

    def _other(self, number: int, body: object) -> None:
        self.api._record(self._request(number, body, "other", answer="404"))
        self._error(Error(404, f"scripted_api: nothing here: {self.command} {self.path}"))

    # the answer

    def _answer(self, turn: Reply | Error | Hang, model: str, stream: bool) -> None:
        try:
            if isinstance(turn, Error):
                self._error(turn)
            elif isinstance(turn, Hang):
                if stream:
                    self._start_stream()
                    self._event("message_start", {"type": "message_start", "message": message_object(model, None)})
                self.api._stopping.wait()
            elif stream:
                self._stream(turn, model)
            else:
                self._json(200, message_object(turn.model or model, turn, turn.usage))
        except ConnectionError:
            pass  # the CLI went away (killed, or gave up on a slow answer)

    def _stream(self, turn: Reply, model: str) -> None:
        self._start_stream()
        message = message_object(turn.model or model, None, turn.usage)
        self._event("message_start", {"type": "message_start", "message": message})
        for index, block in enumerate(turn.blocks):
            if isinstance(block, TextBlock):
                start: dict = {"type": "text", "text": ""}
                delta: dict = {"type": "text_delta", "text": block.text}
            else:
                start = {"type": "tool_use", "id": tool_use_id(), "name": block.name, "input": {}}
                delta = {"type": "input_json_delta", "partial_json": json.dumps(block.input)}
            self._event("content_block_start", {"type": "content_block_start", "index": index, "content_block": start})
            self._event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
            self._event("content_block_stop", {"type": "content_block_stop", "index": index})
        self._event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": turn.stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": turn.usage.output},  # cumulative, as the API reports it
            },
        )
        self._event("message_stop", {"type": "message_stop"})

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("request-id", f"req_scripted_{uuid.uuid4().hex[:20]}")
        self.end_headers()
        self.wfile.flush()

    def _event(self, name: str, data: dict) -> None:
        self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
        self.wfile.flush()

    def _error(self, error: Error) -> None:
        if error.status == 429:
            self.api._count_429()
        body = {"type": "error", "error": {"type": error.error_type, "message": error.message}}
        self._json(error.status, body, error.headers)

    def _json(self, status: int, body: object, headers: Iterable[tuple[str, str]] = ()) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("request-id", f"req_scripted_{uuid.uuid4().hex[:20]}")
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    # reading the request

    def _route(self) -> str:
        return self.path.partition("?")[0]

    def _body(self) -> object:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return raw.decode(errors="replace")

    def _request(self, number: int, body: object, kind: str, answer: str = "") -> Request:
        headers = dict(self.headers.items())
        return Request(number, time.monotonic(), self.command, self.path, headers, body, kind, answer=answer)
