"""The API relay: the Claude API for agents, with a ticket each instead of the credential.

An agent's Claude Code talks to the relay (``ANTHROPIC_BASE_URL``) with a ticket where its
credential would be (a random value the relay issued to its account). The relay lets through only
the requests Claude Code makes, puts the real credential in place of the ticket, sends them to the
real endpoint (Anthropic's, or ``ANTHROPIC_BASE_URL``'s) and streams the answers back, unchanged,
while it reads their usage and charges the account. The credential never reaches an agent; a
ticket is worthless anywhere else, and within the relay it spends only its account's budget.

What Claude Code 2.1.332 asks of its ANTHROPIC_BASE_URL
-------------------------------------------------------
Recorded against the scripted API (tests/support/scripted_api.py, which records every request, 404s
included) with a fresh HOME, an OAuth token and an API key, nonessential traffic allowed:
- headless (``-p --output-format stream-json --verbose``), a prompt that runs a Bash tool:
  ``HEAD /api/hello`` without credentials, then ``POST /v1/messages?beta=true`` (streamed), one
  per turn. Nothing else.
- interactive, on a pseudo-terminal (a prompt typed, a Bash tool run, the answer shown, /exit):
  ``HEAD /api/hello``; two ``POST /v1/messages?beta=true`` without tools (a title, a quota probe);
  then the turns, as headless. Typing ``/context`` adds ``POST /v1/messages/count_tokens?beta=true``
  (one per part of the context; free of charge on the API).
So the relay passes on exactly those two POSTs, to /v1/messages and /v1/messages/count_tokens,
with that query string (``relay_input.ROUTES``); answers ``HEAD /api/hello`` itself (200, without
asking for a ticket, and nothing upstream); and answers anything else that carries a valid ticket
with 403 (``permission_error``), counted in the account and reported as a notice (the first
``REFUSALS_TOLD``). A request without a valid ticket gets 401, and nothing goes upstream.

Budgets
-------
A request goes upstream only while its account and every parent have spent less than their
budgets; the cost is the relay's (``pricing.py``), charged as the usage arrives. Once a budget is
spent, the account's requests are answered with **402** ``billing_error`` and ``x-should-retry:
false``, naming the budget. Tried with the real CLI (headless and interactive): 402 is neither
retried nor reworded, the run ends at once with ``API Error: 402 the budget of task-001 is
spent: $1.02 of $1.00`` (is_error, api_error_status 402, exit 1; interactive: the same line, back
at the prompt). The others are worse: 429 and 529 with ``x-should-retry: false`` are not retried
but shown as "Server is temporarily limiting requests (not your usage limit)" and "a server-side
issue, usually temporary"; 403 reads "Failed to authenticate"; 400 is sent six times.

Each account has at most ``account_in_flight`` requests in flight; more wait in the relay, so
an agent that opens 100 requests at once sends them a few at a time. The budget is checked
when a request gets its place and again before each send, so what an account can spend beyond
its budget is bounded by what its ``account_in_flight`` requests already under way cost when it
is crossed (each at most its own input and ``max_tokens`` of output); a parent's by the sum
of its accounts' requests in flight.

Rate limits
-----------
All accounts share one gate (``ratelimit.py``): at most ``max_in_flight`` requests to the API
at once, lowered by the API's 429s and 529s. Such an answer is not passed on while the request
may still wait (``max_wait`` from its arrival; less than the 600 s Claude Code waits for an
answer): the relay waits the pause, tells it in a notice, and sends the request again (its body
is spooled). Past ``max_wait``, or when the API says ``x-should-retry: false``, the agent gets
the API's last answer as it came.
"""

from __future__ import annotations

import http.client
import http.server
import json
import logging
import re
import socket
import ssl
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import relay_input
from .accounts import AccountView, Ledger
from .pricing import PriceTable
from .ratelimit import RateGate
from .relay_request import Notice, NoticeKind, RequestContext, UpstreamUnreachable, send_error, serve_request
from .secrets import ClaudeCredential

log = logging.getLogger(__name__)

DEFAULT_UPSTREAM = "https://api.anthropic.com"
LINGER = 2.0  # seconds a closed connection's unread input is read and dropped
# The one path of the relay's own: a ticket's account, as measured here (GET, with the ticket).
ACCOUNT_PATH = "/orchestrator/account"
# And its notices (rate-limit waits, refusals) after a number, for a worker's log: the relay of a
# control plane is not in the worker, which would otherwise never say them.
NOTICES_PATH = "/orchestrator/notices"
_NOTICES_QUERY = re.compile(re.escape(NOTICES_PATH) + r"\?after=([0-9]{1,12})")
NOTICES_KEPT = 50  # an account's latest notices kept for its worker to read
REFUSALS_TOLD = 20  # an account's refused requests told as notices; the rest are counted


@dataclass(frozen=True)
class RelaySettings:
    max_in_flight: int = 8  # requests to the API at once, all accounts together
    account_in_flight: int = 4  # requests of one account to the API at once
    max_wait: float = 300.0  # seconds a request may wait in the relay (the CLI waits 600 for an answer)
    raise_after: int = 10  # successes before the gate's bound, lowered by a rate limit, goes up by one
    body_limit: int = relay_input.API_BODY_LIMIT
    spool_in_memory: int = relay_input.SPOOL_IN_MEMORY
    upstream_timeout: float = 600.0  # what Claude Code itself waits for an answer
    prices_file: Path | None = None  # a JSON file whose entries replace those of prices.py
    host: str = "127.0.0.1"
    port: int = 0


class ApiRelay:
    """Serve the API on ``settings.host`` in threads. ``url`` and a ticket are what an agent gets.

    ``ticket`` is the ticket of ``account`` (the one agent of a worker's relay); a relay serving
    many agents issues one per account with ``issue_ticket``.
    """

    def __init__(
        self,
        credential: ClaudeCredential,
        upstream: str | None = None,
        *,
        on_notice: Callable[[Notice], None] = lambda notice: None,
        settings: RelaySettings = RelaySettings(),  # frozen: one for all is fine
        account: str = "agent",
        budget_usd: float | None = None,
    ):
        self.credential = credential
        self.upstream = (upstream or DEFAULT_UPSTREAM).rstrip("/")
        parts = urllib.parse.urlsplit(self.upstream)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise ValueError(f"not an endpoint of the API: {self.upstream!r}")
        self.on_notice = on_notice
        self.settings = settings
        self.prices = PriceTable.load(settings.prices_file)
        self.ledger = Ledger(settings.account_in_flight)
        self.gate = RateGate(settings.max_in_flight, raise_after=settings.raise_after)
        self.unauthorized = 0  # requests without a valid ticket
        self._lock = threading.Lock()
        self._notices: dict[str, deque[tuple[int, str]]] = {}
        self._notices_told = 0
        self.ticket = self.issue_ticket(account, budget_usd)
        self._server: _RelayServer | None = None
        self._thread: threading.Thread | None = None

    # accounts

    def issue_ticket(
        self, account_id: str, budget_usd: float | None = None, parent: str | None = None, *, ticket: str | None = None
    ) -> str:
        """A ticket that spends from ``account_id`` (and its parent's budget, given one); ``ticket``
        takes one issued before again."""
        return self.ledger.issue_ticket(account_id, budget_usd, parent, ticket=ticket)

    def revoke(self, ticket: str) -> None:
        self.ledger.revoke(ticket)

    def set_budget(self, account_id: str, usd: float | None) -> None:
        """The account's budget in USD (None: none); a parent account is made if it is new."""
        self.ledger.set_budget(account_id, usd)

    def account(self, account_id: str) -> AccountView:
        return self.ledger.account(account_id)

    def stats(self) -> dict[str, Any]:
        """Everything, JSON-ready: each account, the gate to the API, the settings."""
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.settings).items()}
        return {
            "accounts": {account: self.ledger.account(account).to_json() for account in self.ledger.account_ids()},
            "gate": self.gate.view().to_json(),
            "unauthorized": self.unauthorized,
            "settings": settings,
        }

    def notify(self, kind: NoticeKind, account: str | None, message: str) -> None:
        if account is not None:
            with self._lock:
                self._notices_told += 1
                self._notices.setdefault(account, deque(maxlen=NOTICES_KEPT)).append((self._notices_told, message))
        try:
            self.on_notice(Notice(kind, account, message))
        except Exception:  # a caller's failing log must not break a request in flight
            log.exception("the relay's notice callback failed")

    def notices(self, account_id: str, after: int = 0) -> list[tuple[int, str]]:
        """The account's latest notices numbered above ``after``, oldest first."""
        with self._lock:
            return [(n, line) for n, line in self._notices.get(account_id, ()) if n > after]

    # serving

    @property
    def url(self) -> str:
        assert self._server is not None, "the relay is not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def agent_environment(self, ticket: str | None = None) -> dict[str, str]:
        """What an agent's Claude Code needs to use the relay: its URL, and a ticket in the
        variable the real credential would be in (so that the headers it sends are the same)."""
        return {"ANTHROPIC_BASE_URL": self.url, self.credential.env_name: ticket or self.ticket}

    def start(self) -> ApiRelay:
        relay = self

        class Handler(_RelayHandler):
            pass

        Handler.relay = relay
        self._server = _RelayServer((self.settings.host, self.settings.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="api-relay", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> ApiRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def upstream_url(self, route: relay_input.Route) -> str:
        """The endpoint's URL for a route: built from the route, never from what the agent sent."""
        return self.upstream + route.target

    def open_upstream(self, request: urllib.request.Request) -> Any:
        """The endpoint's answer (an API error is an answer too), or UpstreamUnreachable."""
        try:
            return _OPENER.open(request, timeout=self.settings.upstream_timeout)
        except urllib.error.HTTPError as exc:
            return exc
        except (urllib.error.URLError, OSError, ssl.SSLError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise UpstreamUnreachable(f"the API relay cannot reach {self.upstream}: {reason}") from None


class _RelayServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # agents connect in bursts (socketserver's 5 drops their connections)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # An agent that goes away mid-request is a normal event, not worth a traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            log.error("the API relay failed on a request", exc_info=True)

    def shutdown_request(self, request: Any) -> None:
        # A refused body may still be coming: closed now, the connection would be reset, and the
        # agent could lose the answer before it reads it. What comes is read and dropped for a
        # moment first (the "lingering close" of web servers); a client that has read its answer
        # and closed ends it at once.
        try:
            request.shutdown(socket.SHUT_WR)
            request.settimeout(LINGER)
            until = time.monotonic() + LINGER
            while time.monotonic() < until and request.recv(1 << 16):
                pass
        except OSError:
            pass
        self.close_request(request)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect goes back to the agent as it is: following it would carry the credential to
    wherever it points."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


# urllib, not http.client: it goes through the proxy of HTTPS_PROXY when one is set.
_OPENER = urllib.request.build_opener(_NoRedirect)


def offered_ticket(headers: Any) -> str:
    """The ticket where Claude Code puts its credential: ``x-api-key``, or a Bearer authorization."""
    auth = headers.get("authorization") or ""
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return (headers.get("x-api-key") or "").strip()


class _RelayHandler(http.server.BaseHTTPRequestHandler):
    relay: ApiRelay
    protocol_version = "HTTP/1.1"
    timeout = 600  # a client silent this long is gone

    def log_message(self, format: str, *args: Any) -> None:
        pass  # notices say what matters; one line per request would drown a worker's log

    def handle_expect_100(self) -> bool:
        return True  # "100 Continue" only once the request is let through (relay_stream)

    def __getattr__(self, name: str) -> Any:
        # Every method, known or not, gets the same checks (the base class answers 501 to one it
        # has no do_ method for, without them).
        if name.startswith("do_"):
            return self._handle
        raise AttributeError(name)

    def _handle(self) -> None:
        relay = self.relay
        if (self.command, self.path) == (relay_input.PROBE.method, relay_input.PROBE.path):
            self.send_response(200)  # Claude Code's connectivity probe: answered here, nothing upstream
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        account = relay.ledger.account_for(offered_ticket(self.headers))
        if account is None:
            with relay._lock:
                relay.unauthorized += 1
            send_error(self, 401, "authentication_error", "the API relay does not know this ticket")
            return
        if (self.command, self.path) == ("GET", ACCOUNT_PATH):
            # The ticket's own account, as measured here: the worker's runtime puts it in the result.
            self._send_json(relay.ledger.account(account).to_json())
            return
        asked = _NOTICES_QUERY.fullmatch(self.path) if self.command == "GET" else None
        if asked is not None:
            self._send_json(relay.notices(account, int(asked.group(1))))
            return
        try:
            route = relay_input.route(self.command, self.path)
        except relay_input.Refused as refused:
            relay.ledger.count(account, refused=1)
            told = relay.ledger.account(account).refused
            if told <= REFUSALS_TOLD:  # a flood of them is counted, not written to the log line by line
                what = f"{self.command[:20]} {self.path[:200]!r}"
                more = "; from now on, such requests are only counted" if told == REFUSALS_TOLD else ""
                relay.notify(NoticeKind.REFUSED, account, f"the API relay refused {what}: {refused}{more}")
            send_error(self, 403, "permission_error", f"the API relay does not pass this request on: {refused}")
            return
        serve_request(RequestContext(relay, self, account, route, time.monotonic() + relay.settings.max_wait))

    def _send_json(self, value: object) -> None:
        body = json.dumps(value).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
