"""A scripted Anthropic Messages API, so that end-to-end tests run the real Claude Code CLI.

The CLI is pointed at this server (ANTHROPIC_BASE_URL=api.url, and any CLAUDE_CODE_OAUTH_TOKEN or
ANTHROPIC_API_KEY) and believes it talks to a model. Instead of a model, each conversation follows a
scenario written by the test: a list of turns, each one assistant message (text, tool calls), an HTTP
error, a delay or a response that never ends. The CLI runs its real tools (Bash, Write, Edit, Read, ...)
on the real files and sends the results back, which the test can read (`api.tool_results(marker)`).

How a request finds its turn
----------------------------
- The scenario: `api.script(marker, *turns)` registers turns under a marker string. A request belongs to
  the scenario whose marker appears in the text of its first user message (the prompt the CLI was given;
  Claude Code may add <system-reminder> blocks around it). If several markers appear, the longest wins.
  A request that matches none gets a 400 invalid_request_error whose message says so and quotes the
  prompt, so the agent's own result event explains the failure (or the `default` scenario, if given).
- The position in the scenario: the number of assistant turns already in `messages` (runs of consecutive
  assistant messages count once). Nothing is kept per conversation, so one server serves a manager and
  many workers at once, and a CLI's retry of a request arrives at the same position.
- The attempt: a counter per (marker, position), for `attempts(...)`: the first retries get errors, a
  later one the answer. Two conversations on one marker share these counters: give each its own marker.
- Past the end of a scenario, the answer is text("Done.") with stop_reason end_turn, and the agent ends.
- Requests without `tools` in the body (a title, a quota probe of the interactive CLI) get a short text
  and use no turn. An unstreamed request with tools is a turn: the CLI repeats a turn unstreamed after a
  404. HEAD /api/hello gets 200, POST /v1/messages/count_tokens {"input_tokens": 100}, anything else a
  404 error. All are recorded: `api.requests`, `api.requests_for(marker)`, `api.log()`.
- Capacity: `ScriptedAPI(capacity=K, retry_after=S)` answers a conversation request that arrives while K
  are being answered with 429 rate_limit_error and `retry-after: S`, recorded ("429 over capacity") but
  using no turn and no attempt. Counters: `api.answered(marker)` (conversation requests answered with a
  turn), `api.rate_limited` (429s given, scripted or over capacity), `api.max_in_flight` (the most
  conversation requests answered at once).

Usage is reported per reply, by default 1000 input and 100 output tokens and no cache tokens, so that the
CLI's total_cost_usd for a model with a known price is above 0 ($0.0045 a message for claude-sonnet-4-5);
`costing(reply, input=, output=, cache_creation=, cache_read=, model=)` sets other figures, and a model
for the answer to name (else it names the model the request asked for). As the API does, a stream's
message_start carries the input and cache tokens and 1 output token, its message_delta the output tokens
(cumulative); an unstreamed answer carries them all.

What the real CLI 2.1.332 sends and does (measured with a fresh HOME, headless `-p`)
-----------------------------------------------------------------------------------
- Requests: HEAD /api/hello first (no credentials), unless CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1
  (DISABLE_AUTOUPDATER=1 changes nothing here). Then only POST /v1/messages?beta=true, streamed, with
  12 tools; no side requests in `-p` mode. Interactive (on a terminal) adds two POST
  /v1/messages?beta=true without tools before the first turn, and /context POST
  /v1/messages/count_tokens?beta=true.
- Headers: `Authorization: Bearer <CLAUDE_CODE_OAUTH_TOKEN>`, or `x-api-key` with ANTHROPIC_API_KEY;
  anthropic-beta, anthropic-version, x-app: cli, X-Claude-Code-Session-Id, User-Agent
  "claude-cli/2.1.332 (external, sdk-cli)". X-Stainless-Retry-Count is always 0: the CLI retries by itself.
- The first user message is a <system-reminder> block (working folder, platform, ...) then the prompt.
  A reply's text and tool calls come back as one assistant message. Tool results come back with a
  "<system-reminder>... tokens left</system-reminder>" appended, which `tool_results` leaves out.
- Every failure ends in a result event with subtype "success" (sic), is_error true, api_error_status the
  HTTP status, and exit code 1. Counts below are requests in all, pauses between them:
  - 408, 409, 429, 500, 502, 503, 529: retried 10 times (11 requests), pauses about 0.6, 1.1, 2.2, 4.5,
    8.7, 17, 35, 35, 35, 35 s: 175-190 s to the failure. A `retry-after` header (seconds) makes a pause
    longer (6 gave 6.4 s) but never shorter (0 or 0.01 changed nothing); `retry-after-ms` is ignored.
    CLAUDE_CODE_MAX_RETRIES=N allows N retries instead (N=1: 2 requests).
  - Any of these with the header `x-should-retry: false` (error(..., should_retry=False)): 1 request.
  - 401: 2 requests, 0.6 s apart; result "Failed to authenticate. API Error: 401 <message>", except that
    the message "invalid x-api-key" gives "Not logged in · Please run /login".
  - 400: 6 requests without pause, each without some beta features (anthropic-beta entries, thinking
    display, tool search); result "API Error: 400 <message>".
  - 403: 1 request, "Failed to authenticate. API Error: 403 <message>". 413: 1 request, the CLI's own
    "Request too large (max 32MB)..." text. 404: repeated once unstreamed (`stream` false).
  - 402 (billing_error): 1 request, with or without x-should-retry; result "API Error: 402 <message>".
    With x-should-retry: false, 429 reads "API Error: Server is temporarily limiting requests (not your
    usage limit) · <message>" and 529 "API Error: 529 <message>. This is a server-side issue, usually
    temporary — try again in a moment. ...".
- Short error scenarios, then: attempts(error(529), error(529), text("ok")) recovers in about 2 s;
  attempts(error(529), error(529), error(529, should_retry=False)) fails with 529 in about 2 s (3
  requests); error(401) fails in under a second; error(500, should_retry=False) at once.
- --max-turns 1 and a tool call: the tool runs, its result is not sent; subtype error_max_turns.
- hang(): the CLI waits. Its stream idle watchdog cannot go below 300 s (a smaller
  CLAUDE_STREAM_IDLE_TIMEOUT_MS is raised to 300000), and API_TIMEOUT_MS=3000 did not end it within 60 s.
  Kill the CLI. If stop() cuts the stream instead, the CLI retries like a 5xx against the closed port and
  ends after about 145 s: is_error, api_error "connection_failed", "API Error: Connection refused ...".
  So stop the agents before the server.

Example
-------
    with ScriptedAPI() as api:
        api.script("TASK-1", reply(text("Creating it."), write("hello.txt", "hi\\n")), bash("cat hello.txt"))
        # claude -p "TASK-1: write hello.txt" with ANTHROPIC_BASE_URL=api.url, CLAUDE_CODE_OAUTH_TOKEN=x
        assert api.tool_results("TASK-1") == ["File created successfully at: hello.txt ...", "hi"]
"""

from __future__ import annotations

import itertools
import json
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

SYSTEM_REMINDER = re.compile(r"<system-reminder>.*?</system-reminder>", re.DOTALL)
INPUT_TOKENS = 1000
OUTPUT_TOKENS = 100

# The error type the real API gives with each status; the CLI reads both.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


# ---- turns ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextBlock:
    text: str


@dataclass(frozen=True)
class ToolCall:
    name: str
    input: Mapping[str, object]


@dataclass(frozen=True)
class Usage:
    """The usage an answer reports, in tokens."""

    input: int = INPUT_TOKENS
    output: int = OUTPUT_TOKENS
    cache_creation: int = 0
    cache_read: int = 0


@dataclass(frozen=True)
class Reply:
    """One assistant message, streamed as the API streams it. Tool calls make its stop_reason tool_use.

    ``model`` is the model the answer names (None: the one the request asked for)."""

    blocks: tuple[TextBlock | ToolCall, ...]
    usage: Usage = Usage()
    model: str | None = None

    @property
    def stop_reason(self) -> str:
        return "tool_use" if any(isinstance(block, ToolCall) for block in self.blocks) else "end_turn"


@dataclass(frozen=True)
class Error:
    """An HTTP error with the API's JSON error body; `headers` such as x-should-retry go with it."""

    status: int
    message: str
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def error_type(self) -> str:
        return ERROR_TYPES.get(self.status, "api_error")


@dataclass(frozen=True)
class Attempts:
    """The n-th request at this position gets turns[n]; the last turn answers every later attempt."""

    turns: tuple[Turn, ...]


@dataclass(frozen=True)
class Slow:
    """The turn, after a delay (cut short by the server's stop)."""

    seconds: float
    turn: Turn


@dataclass(frozen=True)
class Hang:
    """message_start, then nothing until the server stops."""


@dataclass(frozen=True)
class Dynamic:
    """A turn computed from the request, e.g. from an earlier tool result (a task id a command printed)."""

    make: Callable[[Request], Turn]


Turn = Reply | Error | Attempts | Slow | Hang | Dynamic

DONE = Reply((TextBlock("Done."),))


def text(words: str) -> Reply:
    return Reply((TextBlock(words),))


def tool(name: str, input: Mapping[str, object]) -> Reply:
    return Reply((ToolCall(name, dict(input)),))


def bash(command: str, description: str = "Run a command") -> Reply:
    return tool("Bash", {"command": command, "description": description})


def write(path: str, content: str) -> Reply:
    return tool("Write", {"file_path": path, "content": content})


def edit(path: str, old: str, new: str) -> Reply:
    return tool("Edit", {"file_path": path, "old_string": old, "new_string": new})


def read(path: str) -> Reply:
    return tool("Read", {"file_path": path})


def reply(*parts: Reply) -> Reply:
    """One message of several blocks: reply(text("Let me look."), bash("ls"), read("a.txt"))."""
    return Reply(tuple(block for part in parts for block in part.blocks))


def costing(
    turn: Reply,
    *,
    input: int = INPUT_TOKENS,
    output: int = OUTPUT_TOKENS,
    cache_creation: int = 0,
    cache_read: int = 0,
    model: str | None = None,
) -> Reply:
    """The reply with this usage, and naming this model if one is given: costing(text("Hi."), output=5000)."""
    return replace(turn, usage=Usage(input, output, cache_creation, cache_read), model=model)


def error(
    status: int,
    message: str | None = None,
    *,
    should_retry: bool | None = None,
    retry_after: float | None = None,
) -> Error:
    """should_retry sets the x-should-retry header, which the API uses to tell clients whether to retry;
    retry_after the retry-after header (seconds)."""
    headers = [] if should_retry is None else [("x-should-retry", "true" if should_retry else "false")]
    if retry_after is not None:
        headers.append(("retry-after", f"{retry_after:g}"))
    return Error(status, message or f"scripted {status} {ERROR_TYPES.get(status, 'api_error')}", tuple(headers))


def attempts(*turns: Turn) -> Attempts:
    if not turns:
        raise ValueError("attempts() needs at least one turn")
    return Attempts(turns)


def slow(seconds: float, turn: Turn) -> Slow:
    return Slow(seconds, turn)


def hang() -> Hang:
    return Hang()


def dynamic(make: Callable[[Request], Turn]) -> Dynamic:
    return Dynamic(make)


# ---- what arrived --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolResult:
    """A tool call's result as the agent sent it back; content without the reminders Claude Code appends."""

    tool_use_id: str
    content: str
    is_error: bool
    raw: object


@dataclass(frozen=True)
class Request:
    """One request as it arrived, and how it was answered.

    kind: "conversation" (a POST /v1/messages with tools), "side" (one without tools), "hello",
    "count_tokens" or "other". marker, position and attempt are set for conversation requests that matched.
    """

    number: int
    received: float  # time.monotonic() on arrival
    method: str
    path: str
    headers: dict[str, str]
    body: object
    kind: str
    marker: str | None = None
    position: int | None = None
    attempt: int | None = None
    answer: str = ""

    def header(self, name: str) -> str | None:
        """A header by its name in any case, as HTTP has it."""
        wanted = name.lower()
        return next((value for key, value in self.headers.items() if key.lower() == wanted), None)

    @property
    def messages(self) -> list[dict]:
        messages = self.body.get("messages") if isinstance(self.body, dict) else None
        return [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []

    def prompt(self) -> str:
        """The text of the first user message without <system-reminder> sections: where markers are looked for.

        Claude Code puts its context (the environment, CLAUDE.md, git status with commit messages) in such
        sections of the first message, where another scenario's marker could appear by chance.
        """
        first = next((m for m in self.messages if m.get("role") == "user"), None)
        return _without_reminders(_text_of(first.get("content"))) if first else ""

    def tool_results(self) -> list[ToolResult]:
        """The results of tool calls in this request's history, in the order of the calls.

        Not in the order they came: the CLI runs the calls of one reply at once and sends their results
        back as they finish.
        """
        calls = [
            block.get("id")
            for message in self.messages
            if message.get("role") == "assistant" and isinstance(message.get("content"), list)
            for block in message["content"]
            if isinstance(block, dict) and block.get("type") == "tool_use"
        ]
        results = [
            ToolResult(
                str(block.get("tool_use_id")),
                _without_reminders(_text_of(block.get("content"))).strip("\n"),
                bool(block.get("is_error")),
                block.get("content"),
            )
            for message in self.messages
            if message.get("role") == "user" and isinstance(message.get("content"), list)
            for block in message["content"]
            if isinstance(block, dict) and block.get("type") == "tool_result"
        ]
        order = {tool_use_id: index for index, tool_use_id in enumerate(calls)}
        return sorted(results, key=lambda result: order.get(result.tool_use_id, len(order)))

    def summary(self) -> str:
        where = f" {self.marker!r}@{self.position}#{self.attempt}" if self.marker is not None else ""
        return f"{self.number} {self.method} {self.path} [{self.kind}{where}] -> {self.answer}"


def _text_of(content: object) -> str:
    """The text in a message's or tool result's content: a string, or a list of blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            block["text"] for block in content if isinstance(block, dict) and isinstance(block.get("text"), str)
        )
    return ""


def _without_reminders(text: str) -> str:
    return SYSTEM_REMINDER.sub("", text)


def assistant_turns(messages: Iterable[dict]) -> int:
    """Runs of assistant messages: the CLI may send one reply back as several messages."""
    turns = 0
    previous = None
    for message in messages:
        role = message.get("role")
        if role == "assistant" and previous != "assistant":
            turns += 1
        if role in ("user", "assistant"):
            previous = role
    return turns


# ---- the server ----------------------------------------------------------------------------------


class ScriptedAPI:
    """The scripted API on host:port (port 0: a free one). A context manager; stop() ends hanging answers.

    capacity: conversation requests answered at once; one more gets 429 rate_limit_error with
    ``retry-after: <retry_after>`` (and uses no turn). None: no limit.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        default: Iterable[Turn] | None = None,
        capacity: int | None = None,
        retry_after: float = 1.0,
    ) -> None:
        self.default = tuple(default) if default is not None else None
        self.capacity = capacity
        self.retry_after = retry_after
        self._in_flight = 0
        self._max_in_flight = 0
        self._rate_limited = 0
        self._answered: dict[str | None, int] = {}
        self._scenarios: dict[str, tuple[Turn, ...]] = {}
        self._requests: list[Request] = []
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


@dataclass(frozen=True)
class _Answer:
    """What resolving a turn came to: a final turn and the delays on the way."""

    turn: Reply | Error | Hang
    delay: float = 0.0
    notes: tuple[str, ...] = ()


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
            answer = self._resolve(turn, request, attempt)
            self.api._record(replace(request, answer=_describe(answer)))
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
            self._json(200, _message(model, text("OK.")))

    def _other(self, number: int, body: object) -> None:
        self.api._record(self._request(number, body, "other", answer="404"))
        self._error(Error(404, f"scripted_api: nothing here: {self.command} {self.path}"))

    # turning a turn into an answer

    def _resolve(self, turn: Turn, request: Request, attempt: int) -> _Answer:
        delay = 0.0
        notes: list[str] = []
        for _ in range(100):  # a dynamic turn that keeps returning dynamic turns is a bug in the test
            if isinstance(turn, Attempts):
                turn = turn.turns[min(attempt, len(turn.turns) - 1)]
            elif isinstance(turn, Slow):
                delay += turn.seconds
                notes.append(f"after {turn.seconds:g}s")
                turn = turn.turn
            elif isinstance(turn, Dynamic):
                try:
                    turn = turn.make(request)
                except Exception as exc:  # noqa: BLE001  (a failing test function is told to the agent and the log)
                    return _Answer(Error(400, f"scripted_api: dynamic turn failed: {exc!r}"), delay, tuple(notes))
            else:
                return _Answer(turn, delay, tuple(notes))
        return _Answer(Error(400, "scripted_api: dynamic turns nested 100 deep"), delay, tuple(notes))

    def _answer(self, turn: Reply | Error | Hang, model: str, stream: bool) -> None:
        try:
            if isinstance(turn, Error):
                self._error(turn)
            elif isinstance(turn, Hang):
                if stream:
                    self._start_stream()
                    self._event("message_start", {"type": "message_start", "message": _message(model, None)})
                self.api._stopping.wait()
            elif stream:
                self._stream(turn, model)
            else:
                self._json(200, _message(turn.model or model, turn, turn.usage))
        except ConnectionError:
            pass  # the CLI went away (killed, or gave up on a slow answer)

    def _stream(self, turn: Reply, model: str) -> None:
        self._start_stream()
        message = _message(turn.model or model, None, turn.usage)
        self._event("message_start", {"type": "message_start", "message": message})
        for index, block in enumerate(turn.blocks):
            if isinstance(block, TextBlock):
                start: dict = {"type": "text", "text": ""}
                delta: dict = {"type": "text_delta", "text": block.text}
            else:
                start = {"type": "tool_use", "id": _tool_use_id(), "name": block.name, "input": {}}
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


def _describe(answer: _Answer) -> str:
    turn = answer.turn
    if isinstance(turn, Error):
        what = f"{turn.status} {turn.error_type}"
    elif isinstance(turn, Hang):
        what = "hang"
    else:
        what = f"{turn.stop_reason}: " + ", ".join(
            repr(block.text[:40]) if isinstance(block, TextBlock) else block.name for block in turn.blocks
        )
    return " ".join([*answer.notes, what])


def _message(model: str, turn: Reply | None, usage: Usage = Usage()) -> dict:
    """A message object: empty for message_start (output tokens so far: 1), whole for a non-streamed answer."""
    content = []
    if turn is not None:
        content = [
            {"type": "text", "text": block.text}
            if isinstance(block, TextBlock)
            else {"type": "tool_use", "id": _tool_use_id(), "name": block.name, "input": dict(block.input)}
            for block in turn.blocks
        ]
    return {
        "id": f"msg_scripted_{uuid.uuid4().hex[:20]}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": turn.stop_reason if turn is not None else None,
        "stop_sequence": None,
        "usage": {
            "input_tokens": usage.input,
            "output_tokens": usage.output if turn is not None else 1,
            "cache_creation_input_tokens": usage.cache_creation,
            "cache_read_input_tokens": usage.cache_read,
        },
    }


def _tool_use_id() -> str:
    return f"toolu_scripted_{uuid.uuid4().hex[:20]}"
