"""One request through the relay, once its ticket and route are known: the account's place in
flight, its budget, the body, the gate to the API, the send (again after a rate limit), and the
answer streamed back while its usage is charged (see relay.py for why each step is there)."""

from __future__ import annotations

import enum
import http.client
import http.server
import json
import re
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import relay_input
from .metering import AnswerMeter
from .pricing import Usage
from .ratelimit import retry_after_seconds

if TYPE_CHECKING:
    from .relay import ApiRelay

# Headers that belong to one connection, not to the request (RFC 9110, 7.6.1), and those the
# relay sets itself.
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
               "transfer-encoding", "upgrade", "host", "content-length"}  # fmt: skip
_NOT_PASSED_ON = _HOP_BY_HOP | {"authorization", "x-api-key", "accept-encoding", "expect"}
_HEADER_NAME = re.compile(r"[A-Za-z0-9-]+")
_ERROR_BODY_LIMIT = 64 << 10
_PIECE = 64 << 10


class NoticeKind(enum.StrEnum):
    REFUSED = "refused"  # a request Claude Code does not make
    UNREACHABLE = "unreachable"  # the endpoint could not be reached
    BACKOFF = "backoff"  # the relay waits on the API's rate limit
    BUDGET_SPENT = "budget_spent"  # an account's budget is spent: its requests are refused from now on
    UNKNOWN_MODEL = "unknown_model"  # an answer's model is not in the price table: priced at its dearest
    RELAYED = "relayed"  # one of the above, told by the control plane's relay to the worker of the account


@dataclass(frozen=True)
class Notice:
    """One line for a log: what happened, to which account (None: the relay as a whole)."""

    kind: NoticeKind
    account: str | None
    message: str


class UpstreamUnreachable(Exception):
    pass


@dataclass(frozen=True)
class RequestContext:
    relay: ApiRelay
    handler: http.server.BaseHTTPRequestHandler
    account: str
    route: relay_input.Route
    deadline: float  # time.monotonic() after which the request waits no longer


@dataclass(frozen=True)
class _Held:
    """An API answer kept back while the relay waits to send its request again."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


def serve_request(ctx: RequestContext) -> None:
    relay, handler, account = ctx.relay, ctx.handler, ctx.account
    settings = relay.settings
    try:
        length = relay_input.declared_length(handler.headers, settings.body_limit)
    except relay_input.BodyRefused as refused:
        send_error(handler, refused.status, refused.error_type, str(refused))
        return
    if _refused_for_budget(ctx):
        return
    if not relay.ledger.enter(account, ctx.deadline):
        message = f"the API relay held this request {settings.max_wait:g} s behind the account's other requests"
        send_error(handler, 429, "rate_limit_error", message, should_retry=True)
        return
    try:
        if _refused_for_budget(ctx):  # spent by the requests it waited behind
            return
        if handler.headers.get("expect", "").lower() == "100-continue":
            handler.send_response_only(100)
            handler.end_headers()
        try:
            body = relay_input.spool_body(handler.rfile, length, settings.body_limit, settings.spool_in_memory)
        except relay_input.BodyRefused as refused:
            send_error(handler, refused.status, refused.error_type, str(refused))
            return
        with body:
            _send(ctx, body)
    finally:
        relay.ledger.leave(account)


def _refused_for_budget(ctx: RequestContext) -> bool:
    relay = ctx.relay
    spent = relay.ledger.spent(ctx.account)
    if spent is None:
        return False
    spender, line = spent
    relay.ledger.count(ctx.account, over_budget=1)
    if relay.ledger.tell_spent(spender):
        relay.notify(NoticeKind.BUDGET_SPENT, spender, line)
    send_error(ctx.handler, 402, "billing_error", line)
    return True


def _send(ctx: RequestContext, body: tempfile.SpooledTemporaryFile[bytes]) -> None:
    """Through the gate to the API, again after a rate limit while the request may still wait."""
    relay, handler, account = ctx.relay, ctx.handler, ctx.account
    size = body.seek(0, 2)
    headers = {
        name: value
        for name, value in handler.headers.items()
        if name.lower() not in _NOT_PASSED_ON and _HEADER_NAME.fullmatch(name)  # not "Authorization " either
    }
    headers["Accept-Encoding"] = "identity"  # the relay reads the usage in answers
    headers["Content-Length"] = str(size)
    headers.update(relay.credential.headers())
    held: _Held | None = None
    while True:
        waited_from = time.monotonic()
        relay.ledger.count(account, held=1)
        try:
            entered = relay.gate.enter(ctx.deadline)
        finally:
            relay.ledger.count(account, held=-1, queued_seconds=time.monotonic() - waited_from)
        if not entered:
            if held is not None:
                _pass_on(handler, held)
            else:
                message = f"the API relay held this request {relay.settings.max_wait:g} s for the API's rate limit"
                send_error(handler, 429, "rate_limit_error", message, should_retry=True)
            return
        succeeded = False
        try:
            if _refused_for_budget(ctx):
                return
            body.seek(0)
            relay.ledger.count(account, requests=1, retried=int(held is not None))
            request = urllib.request.Request(
                relay.upstream_url(ctx.route), data=body, headers=headers, method=ctx.route.method
            )
            try:
                answer = relay.open_upstream(request)
            except UpstreamUnreachable as exc:
                relay.notify(NoticeKind.UNREACHABLE, account, str(exc))
                send_error(handler, 502, "api_error", str(exc), should_retry=True)
                return
            try:
                if answer.status not in (429, 529):
                    succeeded = True
                    _stream_back(ctx, answer)
                    return
                held = _Held(answer.status, list(answer.headers.items()), _read_some(answer))
            finally:
                answer.close()
            relay.ledger.count(account, **{"rate_limited" if held.status == 429 else "overloaded": 1})
            retry_after = retry_after_seconds(answer.headers.get("retry-after"))
            open_at = relay.gate.back_off(held.status, retry_after)
            if answer.headers.get("x-should-retry", "").lower() == "false" or open_at >= ctx.deadline:
                _pass_on(handler, held)
                return
            relay.notify(NoticeKind.BACKOFF, account, f"waiting on the API's rate limit: {relay.gate.reason}")
        finally:
            relay.gate.leave(succeeded=succeeded)


def _read_some(answer: Any) -> bytes:
    try:
        return bytes(answer.read(_ERROR_BODY_LIMIT))
    except (OSError, http.client.HTTPException):
        return b""


class _Charger:
    """Charges an account for one answer as its usage grows: each report's cost less what the
    earlier reports of the same answer were charged."""

    def __init__(self, ctx: RequestContext):
        self.ctx = ctx
        self.charged = 0.0
        self.usage = Usage()

    def __call__(self, model: str | None, usage: Usage) -> None:
        relay, account = self.ctx.relay, self.ctx.account
        price = relay.prices.cost(model, usage)
        if not price.known and relay.ledger.unknown_model(account, model or "(no model named)"):
            relay.notify(
                NoticeKind.UNKNOWN_MODEL, account, f"the price of {model!r} is not known: charged at the dearest rates"
            )
        before, self.usage = self.usage, usage
        relay.ledger.add_tokens(
            account,
            input_tokens=usage.input_tokens - before.input_tokens,
            output_tokens=usage.output_tokens - before.output_tokens,
            cache_creation_tokens=usage.cache_creation_input_tokens - before.cache_creation_input_tokens,
            cache_read_tokens=usage.cache_read_input_tokens - before.cache_read_input_tokens,
        )
        cost, self.charged = price.usd - self.charged, price.usd
        for spender, line in relay.ledger.charge(account, cost):
            relay.notify(NoticeKind.BUDGET_SPENT, spender, line)


def _stream_back(ctx: RequestContext, answer: Any) -> None:
    """The answer to the agent as it comes, each piece at once (server-sent events come a few
    bytes at a time), and to the meter. An agent that goes away does not stop the reading: the
    API bills what it generates, so the relay reads the usage to the end."""
    handler = ctx.handler
    handler.send_response(answer.status)
    for name, value in answer.headers.items():
        if name.lower() not in _HOP_BY_HOP:
            handler.send_header(name, value)
    handler.send_header("Transfer-Encoding", "chunked")
    agent_here = _write(handler, b"", headers=True)
    meter = AnswerMeter(answer.headers.get("content-type", ""), _Charger(ctx))
    while True:
        try:
            piece = answer.read1(_PIECE)
        except (OSError, http.client.HTTPException):
            handler.close_connection = True  # the answer is cut: so is the agent's copy
            agent_here = False
            break
        if not piece:
            break
        meter.feed(piece)
        if agent_here:
            agent_here = _write(handler, b"%x\r\n%s\r\n" % (len(piece), piece))
    meter.close()
    if agent_here:
        _write(handler, b"0\r\n\r\n")


def _write(handler: http.server.BaseHTTPRequestHandler, data: bytes, *, headers: bool = False) -> bool:
    """False when the agent is gone."""
    try:
        if headers:
            handler.end_headers()
        else:
            handler.wfile.write(data)
        handler.wfile.flush()
        return True
    except (TimeoutError, BrokenPipeError, ConnectionResetError):
        handler.close_connection = True
        return False


def _pass_on(handler: http.server.BaseHTTPRequestHandler, held: _Held) -> None:
    """An API answer, as it came."""
    handler.send_response(held.status)
    for name, value in held.headers:
        if name.lower() not in _HOP_BY_HOP:
            handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(held.body)))
    if _write(handler, b"", headers=True):
        _write(handler, held.body)


def send_error(
    handler: http.server.BaseHTTPRequestHandler,
    status: int,
    error_type: str,
    message: str,
    *,
    should_retry: bool = False,
) -> None:
    """The relay's own answer, in the API's error shape. The connection is closed after it: a
    body the relay did not read must not be taken for the next request."""
    body = json.dumps({"type": "error", "error": {"type": error_type, "message": message}}).encode()
    handler.close_connection = True
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.send_header("x-should-retry", "true" if should_retry else "false")
    handler.send_header("Connection", "close")
    if _write(handler, b"", headers=True) and handler.command != "HEAD":
        _write(handler, body)
