"""Who is asking the egress proxy: a ticket per task, carried in the proxy URL.

The control plane issues a ticket when it starts a task's worker and puts it in the worker's
proxy URL (``proxy_environment``); clients send it as ``Proxy-Authorization: Basic``, and
``ProxyTickets`` is the ``identify`` of ``EgressProxy`` that checks it. A ticket opens the
proxy for that task's policy and nothing else, and is revoked when the task ends.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import secrets
import threading
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ProxyTickets:
    """The control plane's ``identify``: a random ticket per task, which the task's worker
    gets in its proxy URL, and, when given, the networks its connections must come from."""

    def __init__(self) -> None:
        self._tickets: dict[str, tuple[str, tuple[Network, ...]]] = {}
        self._lock = threading.Lock()

    def issue(self, task: str, *, networks: Sequence[str] = ()) -> str:
        ticket = "egress-" + secrets.token_urlsafe(32)
        nets = tuple(ipaddress.ip_network(net) for net in networks)
        with self._lock:
            self._tickets[task] = (ticket, nets)
        return ticket

    def revoke(self, task: str) -> None:
        with self._lock:
            self._tickets.pop(task, None)

    def __call__(self, client: tuple[str, int], authorization: str | None) -> str | None:
        credentials = basic_credentials(authorization)
        if credentials is None:
            return None
        task, ticket = credentials
        with self._lock:
            known = self._tickets.get(task)
        if known is None or not hmac.compare_digest(ticket.encode(), known[0].encode()):
            return None
        if known[1] and not any(ipaddress.ip_address(client[0]) in net for net in known[1]):
            return None
        return task


def basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    """(user, password) of a ``Basic`` Proxy-Authorization value, or None."""
    scheme, _, encoded = (authorization or "").strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, colon, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if colon else None


def proxy_environment(proxy: str, task: str, ticket: str, *, no_proxy: Sequence[str] = ()) -> dict[str, str]:
    """The variables that send a worker's HTTP clients through the proxy at ``proxy``
    (``host:port``), in both spellings, since tools read one or the other."""
    url = f"http://{task}:{ticket}@{proxy}"
    exempt = ",".join(no_proxy)
    return {"HTTP_PROXY": url, "HTTPS_PROXY": url, "http_proxy": url, "https_proxy": url,
            "NO_PROXY": exempt, "no_proxy": exempt}  # fmt: skip
