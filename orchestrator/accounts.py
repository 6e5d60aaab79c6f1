"""The relay's accounts: who may spend through it, what each spent, and its budget.

An account is a task, the manager, or a batch (a parent of tasks); each request is charged to
its ticket's account and to every parent above it. A ticket is a random value the relay issued;
the relay keeps only its SHA-256, so that looking one up tells nothing by its timing, and a
revoked ticket is forgotten. A request is let through only while the account and every parent
have spent less than their budgets; the cost is the relay's own figure (``pricing.py``), charged
as the answer's usage arrives, so a budget is found spent in the middle of a stream.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

TICKET_PREFIX = "relay-"
# A ticket the ledger did not issue -> (its account, the account's parent), or None to refuse it.
TicketResolver = Callable[[str], tuple[str, str | None] | None]


@dataclass
class _Account:
    id: str
    parent: str | None
    budget_usd: float | None = None
    cost_usd: float = 0.0
    requests: int = 0  # sent to the API, each resend after a rate limit too
    retried: int = 0  # of those, resends after a rate limit
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_tokens: int = 0
    cache_read_tokens: int = 0
    refused: int = 0  # requests for what Claude Code does not ask for
    over_budget: int = 0  # requests refused because a budget was spent
    rate_limited: int = 0  # 429s the API gave
    overloaded: int = 0  # 529s the API gave
    queued_seconds: float = 0.0
    in_flight: int = 0
    queued: int = 0  # requests waiting for one of the account's places in flight
    held: int = 0  # requests waiting at the relay's gate to the API (its bound, the API's rate limit)
    spent_told: bool = False
    unknown_models: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class AccountView:
    id: str
    parent: str | None
    budget_usd: float | None
    cost_usd: float
    requests: int
    retried: int
    input_tokens: int
    output_tokens: int
    cache_creation_tokens: int
    cache_read_tokens: int
    refused: int
    over_budget: int
    rate_limited: int
    overloaded: int
    queued_seconds: float
    in_flight: int
    queued: int
    held: int
    state: str  # "open", or "spent" once its budget (or a parent's) is spent
    unknown_models: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["cost_usd"] = round(self.cost_usd, 6)
        data["queued_seconds"] = round(self.queued_seconds, 3)
        data["unknown_models"] = list(self.unknown_models)
        return data


def _digest(ticket: str) -> bytes:
    return hashlib.sha256(ticket.encode("utf-8", "surrogateescape")).digest()


def _budget(usd: float | None) -> float | None:
    if usd is None:
        return None
    if isinstance(usd, bool) or not isinstance(usd, int | float) or not 0 <= usd < float("inf"):
        raise ValueError(f"a budget is a number of USD, 0 or more: {usd!r}")
    return float(usd)


class Ledger:
    """Accounts, their tickets, budgets and counters, and the bound on each one's requests in flight."""

    def __init__(self, account_in_flight: int, resolver: TicketResolver | None = None):
        if account_in_flight < 1:
            raise ValueError("the bound on an account's requests in flight must be at least 1")
        self.account_in_flight = account_in_flight
        self._accounts: dict[str, _Account] = {}
        self._tickets: dict[bytes, str] = {}
        self._changed = threading.Condition()
        # Tickets the ledger did not issue but may take: a control plane's workers' (tickets.py),
        # asked on every request, never remembered, so that a ticket is refused once revoked.
        self.resolver = resolver

    # accounts and tickets

    def issue_ticket(
        self, account_id: str, budget_usd: float | None = None, parent: str | None = None, *, ticket: str | None = None
    ) -> str:
        """A new ticket for the account (made on first use; a parent is made too if it is new).
        ``ticket``: one this ledger's owner issued before (a control plane restarted keeps its
        manager's), taken again as it is."""
        if not account_id:
            raise ValueError("an account needs an id")
        budget = _budget(budget_usd)
        if ticket is not None and (not ticket.startswith(TICKET_PREFIX) or len(ticket) < len(TICKET_PREFIX) + 32):
            raise ValueError("a ticket taken again must be one the relay made")
        ticket = ticket or TICKET_PREFIX + secrets.token_urlsafe(32)
        with self._changed:
            account = self._ensure(account_id, parent)
            if budget is not None:
                account.budget_usd = budget
                account.spent_told = False
            self._tickets[_digest(ticket)] = account_id
        return ticket

    def revoke(self, ticket: str) -> None:
        with self._changed:
            self._tickets.pop(_digest(ticket), None)

    def account_for(self, ticket: str) -> str | None:
        with self._changed:
            found = self._tickets.get(_digest(ticket))
        if found is not None or self.resolver is None:
            return found
        resolved = self.resolver(ticket)
        if resolved is None:
            return None
        account_id, parent = resolved
        with self._changed:
            self._ensure(account_id, parent)
        return account_id

    def open_account(self, account_id: str, parent: str | None, budget_usd: float | None) -> None:
        """The account (made when new, under ``parent``) with this budget; a budget that changes
        opens a spent account again when it is raised past what it spent."""
        budget = _budget(budget_usd)
        with self._changed:
            account = self._ensure(account_id, parent)
            if account.budget_usd != budget:
                account.budget_usd = budget
                account.spent_told = False

    _RESTORED = (
        "cost_usd", "requests", "retried", "input_tokens", "output_tokens", "cache_creation_tokens",
        "cache_read_tokens", "refused", "over_budget", "rate_limited", "overloaded", "queued_seconds",
    )  # fmt: skip

    def restore(self, view: Mapping[str, Any]) -> None:
        """An account's figures as an earlier relay left them (``AccountView.to_json``), added to
        this one's: a restarted control plane forgets no spending."""
        account_id, parent = str(view["id"]), view.get("parent")
        with self._changed:
            account = self._ensure(account_id, str(parent) if parent else None)
            for name in self._RESTORED:
                value = view.get(name)
                if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
                    setattr(account, name, type(getattr(account, name))(getattr(account, name) + value))
            if view.get("state") == "spent":
                account.spent_told = True

    def set_budget(self, account_id: str, usd: float | None) -> None:
        budget = _budget(usd)
        with self._changed:
            account = self._ensure(account_id, None)
            account.budget_usd = budget
            account.spent_told = False

    def _ensure(self, account_id: str, parent: str | None) -> _Account:
        account = self._accounts.get(account_id)
        if account is None:
            if parent is not None:
                if parent == account_id:
                    raise ValueError(f"{account_id} cannot be its own parent")
                self._ensure(parent, None)
            account = self._accounts[account_id] = _Account(account_id, parent)
        elif parent is not None and account.parent != parent:
            raise ValueError(f"{account_id} already belongs to {account.parent or 'no parent'}, not {parent}")
        return account

    def _chain(self, account_id: str) -> list[_Account]:
        """The account and its parents, nearest first."""
        chain: list[_Account] = []
        current: str | None = account_id
        while current is not None and current in self._accounts:
            chain.append(self._accounts[current])
            current = chain[-1].parent
        return chain

    # budgets

    def spent(self, account_id: str) -> tuple[str, str] | None:
        """(the account whose budget is spent, a line that says so), or None while all have some left."""
        with self._changed:
            for account in self._chain(account_id):
                if account.budget_usd is not None and account.cost_usd >= account.budget_usd:
                    return account.id, _spent_line(account)
        return None

    def charge(self, account_id: str, usd: float) -> list[tuple[str, str]]:
        """Add to the account's and its parents' cost; the budgets this spent, each named once."""
        crossed: list[tuple[str, str]] = []
        with self._changed:
            for account in self._chain(account_id):
                account.cost_usd += usd
                spent = account.budget_usd is not None and account.cost_usd >= account.budget_usd
                if spent and not account.spent_told:
                    account.spent_told = True
                    crossed.append((account.id, _spent_line(account)))
        return crossed

    def tell_spent(self, account_id: str) -> bool:
        """Whether the account's spent budget is news (a budget of 0, spent before any charge)."""
        with self._changed:
            account = self._accounts[account_id]
            news, account.spent_told = not account.spent_told, True
            return news

    # counters

    def count(self, account_id: str, **added: float) -> None:
        """Add to counters of the account only (not its parents): requests, refusals, 429s."""
        with self._changed:
            account = self._accounts[account_id]
            for name, value in added.items():
                setattr(account, name, getattr(account, name) + value)

    def add_tokens(self, account_id: str, **tokens: int) -> None:
        """Add token counts to the account and its parents."""
        with self._changed:
            for account in self._chain(account_id):
                for name, value in tokens.items():
                    setattr(account, name, getattr(account, name) + value)

    def unknown_model(self, account_id: str, model: str) -> bool:
        """Note a model the price table does not know; True the first time for this account."""
        with self._changed:
            account = self._accounts[account_id]
            news = model not in account.unknown_models
            account.unknown_models.add(model[:200])
            return news

    # the bound on an account's requests in flight

    def enter(self, account_id: str, deadline: float) -> bool:
        """Wait for one of the account's places in flight; False when ``deadline`` comes first."""
        started = time.monotonic()
        with self._changed:
            account = self._accounts[account_id]
            account.queued += 1
            try:
                while account.in_flight >= self.account_in_flight:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._changed.wait(min(left, 60.0))
                account.in_flight += 1
                return True
            finally:
                account.queued -= 1
                account.queued_seconds += time.monotonic() - started

    def leave(self, account_id: str) -> None:
        with self._changed:
            self._accounts[account_id].in_flight -= 1
            self._changed.notify_all()

    # views

    def account(self, account_id: str) -> AccountView:
        with self._changed:
            if account_id not in self._accounts:
                raise KeyError(f"no account {account_id!r}")
            account = self._accounts[account_id]
            spent = any(a.budget_usd is not None and a.cost_usd >= a.budget_usd for a in self._chain(account_id))
            return AccountView(
                id=account.id,
                parent=account.parent,
                budget_usd=account.budget_usd,
                cost_usd=account.cost_usd,
                requests=account.requests,
                retried=account.retried,
                input_tokens=account.input_tokens,
                output_tokens=account.output_tokens,
                cache_creation_tokens=account.cache_creation_tokens,
                cache_read_tokens=account.cache_read_tokens,
                refused=account.refused,
                over_budget=account.over_budget,
                rate_limited=account.rate_limited,
                overloaded=account.overloaded,
                queued_seconds=account.queued_seconds,
                in_flight=account.in_flight,
                queued=account.queued,
                held=account.held,
                state="spent" if spent else "open",
                unknown_models=tuple(sorted(account.unknown_models)),
            )

    def account_ids(self) -> list[str]:
        with self._changed:
            return sorted(self._accounts)


def _spent_line(account: _Account) -> str:
    return f"the budget of {account.id} is spent: ${account.cost_usd:.2f} of ${account.budget_usd or 0:.2f}"
