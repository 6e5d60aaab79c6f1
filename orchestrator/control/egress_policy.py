"""Egress policies: which hosts and ports a task's connections may reach through the egress
proxy, and which addresses no connection may reach whatever the policy says.

A policy is a list of host patterns, one a line in a policy file::

    pub.dev                 # exactly this name, ports 80 and 443
    *.googleapis.com        # any name under it (not googleapis.com itself), ports 80 and 443
    git.example.com:8443    # only that port
    203.0.113.7:443         # an address, listed literally
    [2001:db8::7]:443       # an IPv6 address, in brackets when a port follows

Besides files there are three policies by name: ``none`` (nothing), ``open`` (every host and
port, except the forbidden addresses) and ``default`` (the worker type's file,
``flutter/egress-allow.txt`` for flutter). ``--allow-host HOST[:PORT]`` adds patterns to any of
them.

Names and addresses never mix: an address in a request (``127.0.0.1``, ``2130706433``,
``0x7f.1``, ``[::1]``) matches only an address listed literally, never a name pattern. A name
is resolved by the proxy, once per connection, and every address it resolves to must be
public (see ``forbidden``): an allowed name that points at loopback, the cloud metadata
service or the control plane's own network (DNS rebinding) is refused. A listed address is the
one way to reach a non-public address, and only by naming that address.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import InvalidInput

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Host = str | Address  # a name, lower case and without a trailing dot; or an address

DEFAULT_PORTS = frozenset({80, 443})
POLICY_NAMES = ("none", "default", "open")  # the policies chosen by name; anything else is a file
MAX_NAME_LENGTH = 253  # RFC 1035, without the trailing dot
_LABEL = re.compile(r"[a-z0-9_-]{1,63}")
# A label that inet_aton(3) reads as a number: decimal, octal (leading 0) or hex (0x).
_NUMERIC_LABEL = re.compile(r"0x[0-9a-f]*|[0-9]+")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: the IPv4 address is the last 32 bits


class PolicyError(InvalidInput):
    """A policy, a policy file's line or an --allow-host value that cannot be used."""


def parse_host(text: str) -> Host:
    """A host as a request or a policy names it: an address, or a name in lower case.

    Every form that a resolver or a URL parser would read as an IPv4 address
    (``2130706433``, ``0x7f000001``, ``0177.0.0.1``, ``127.1``) is that address, so that a name
    pattern can never be met by a number in disguise. Raises ``ValueError`` naming the problem.
    """
    if text.startswith("[") and text.endswith("]"):
        return _parse_ipv6(text[1:-1])
    if ":" in text:
        return _parse_ipv6(text)
    name = text.lower()
    if name.endswith("."):
        name = name[:-1]  # the absolute form of the same name
    if not name:
        raise ValueError("the host is empty")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"the name is longer than {MAX_NAME_LENGTH} characters")
    labels = name.split(".")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        # No top-level domain is a number: a host that ends in one is an address (as browsers
        # and inet_aton read it) or nothing.
        return _parse_ipv4_numbers(labels)
    for label in labels:
        if not _LABEL.fullmatch(label):
            raise ValueError(f"{text[:80]!r} is not a host name (letters, digits, '-' and '_' in dot-separated labels)")
    return name


def _parse_ipv6(text: str) -> ipaddress.IPv6Address:
    if "%" in text:
        raise ValueError("an IPv6 address with a zone (%...) names an interface of the proxy's own")
    try:
        return ipaddress.IPv6Address(text)
    except ValueError:
        raise ValueError(f"{text[:80]!r} is not an IPv6 address") from None


def _parse_ipv4_numbers(labels: list[str]) -> ipaddress.IPv4Address:
    """inet_aton(3)'s reading of 1 to 4 numbers: the last one fills the bytes that are left."""
    if len(labels) > 4 or not all(_NUMERIC_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"{'.'.join(labels)[:80]!r} is neither a host name nor an IPv4 address")
    numbers = []
    for label in labels:
        try:
            if label.startswith("0x"):
                numbers.append(int(label[2:] or "0", 16))
            elif len(label) > 1 and label.startswith("0"):
                numbers.append(int(label, 8))
            else:
                numbers.append(int(label))
        except ValueError:
            raise ValueError(f"{label!r} is not a number of an IPv4 address") from None
    *leading, last = numbers
    if any(number > 255 for number in leading) or last >= 256 ** (4 - len(leading)):
        raise ValueError(f"{'.'.join(labels)!r} is out of range for an IPv4 address")
    value = last
    for index, number in enumerate(leading):
        value |= number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def parse_port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 5 or not 0 < int(text) < 65536:
        raise ValueError(f"{text[:20]!r} is not a port (1 to 65535)")
    return int(text)


def split_host_port(text: str) -> tuple[str, str | None]:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port``; a bare IPv6 address has no port."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{text[:80]!r} has '[' without ']'")
        rest = text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"{text[:80]!r} has something other than ':PORT' after ']'")
        return text[: end + 1], rest[1:] if rest else None
    if text.count(":") > 1:
        return text, None
    host, colon, port = text.partition(":")
    return host, port if colon else None


def forbidden(address: Address) -> str | None:
    """What kind of address ``address`` is, when no connection may go to it unless the policy
    lists it literally ("a loopback address"); None for a public address.

    Beyond the named kinds (loopback, link-local with the cloud metadata address, private,
    unspecified, multicast) anything that is not globally routable is refused: carrier-grade
    NAT (100.64.0.0/10, where one cloud's metadata service lives), documentation and benchmark
    ranges, reserved space. An IPv6 address that carries an IPv4 one (mapped, NAT64, 6to4,
    Teredo) is judged by the IPv4 address too, since that is where a packet may end up.
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None or address in _NAT64:
            embedded = address.ipv4_mapped or ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
            kind = forbidden(embedded)
            return f"an address for {embedded}, {kind}" if kind else None
        for carried in (address.sixtofour, address.teredo[1] if address.teredo else None):
            if carried is not None and (kind := forbidden(carried)):
                return f"an address that carries {carried}, {kind}"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address (where cloud metadata services answer)"
    if address.is_multicast:
        return "a multicast address"
    if address.is_private:
        return "a private address"
    if not address.is_global or address.is_reserved:
        return "not a public address"
    return None


@dataclass(frozen=True)
class HostPattern:
    """One line of a policy: a name, ``*.`` and a domain, or an address; and its ports."""

    text: str  # as written, for messages
    host: Host  # the name, the domain under which any name matches, or the address
    wildcard: bool
    ports: frozenset[int]

    @classmethod
    def parse(cls, text: str) -> HostPattern:
        """Raises ``ValueError`` naming what is wrong."""
        host_text, port_text = split_host_port(text)
        ports = frozenset({parse_port(port_text)}) if port_text is not None else DEFAULT_PORTS
        wildcard = host_text.startswith("*.")
        if wildcard:
            host_text = host_text[2:]
        if "*" in host_text:
            raise ValueError("'*' may only start a pattern, as in *.example.com (use the policy 'open' for any host)")
        host = parse_host(host_text)
        if wildcard and not isinstance(host, str):
            raise ValueError("'*.' must be followed by a domain name, not an address")
        return cls(text=text, host=host, wildcard=wildcard, ports=ports)

    def matches(self, host: Host, port: int) -> bool:
        if port not in self.ports:
            return False
        if not isinstance(host, str) or not isinstance(self.host, str):
            return host == self.host  # addresses only ever match addresses
        return host.endswith("." + self.host) if self.wildcard else host == self.host

    def matches_host(self, host: Host) -> bool:
        return any(self.matches(host, port) for port in self.ports)


@dataclass(frozen=True)
class Policy:
    """What one task's connections may reach. ``any_host`` is the policy ``open``."""

    name: str
    patterns: tuple[HostPattern, ...] = ()
    any_host: bool = False
    source: str = ""  # the file it was read from, if any

    def refusal(self, host: Host, port: int) -> str | None:
        """Why a connection to ``host``:``port`` is refused before any resolution, or None.

        For an address this is the whole check; for a name, every address it resolves to must
        then pass ``forbidden``.
        """
        if any(pattern.matches(host, port) for pattern in self.patterns):
            return None
        if self.any_host:
            kind = None if isinstance(host, str) else forbidden(host)
            return f"{_show(host)} is {kind}" if kind else None
        if any(pattern.matches_host(host) for pattern in self.patterns):
            return f"port {port} is not allowed for {_show(host)} by the policy {self.name}"
        kind = "the name" if isinstance(host, str) else "the address"
        return f"{kind} {_show(host)} is not allowed by the policy {self.name}"

    def with_hosts(self, texts: Iterable[str]) -> Policy:
        """This policy and the patterns of ``--allow-host`` values."""
        added = []
        for text in texts:
            try:
                added.append(HostPattern.parse(text.strip()))
            except ValueError as exc:
                raise PolicyError(f"--allow-host {text[:80]!r}: {exc}") from None
        return replace(self, patterns=(*self.patterns, *added)) if added else self


NONE = Policy("none")
OPEN = Policy("open", any_host=True)


def _show(host: Host) -> str:
    return f"[{host}]" if isinstance(host, ipaddress.IPv6Address) else str(host)


def parse_policy(text: str, *, name: str, source: str) -> Policy:
    """A policy file's text: one pattern a line, ``#`` starts a comment, blank lines are
    skipped. An error names ``source`` and the line."""
    patterns = []
    for number, line in enumerate(text.splitlines(), start=1):
        content = line.split("#", 1)[0].strip()
        if not content:
            continue
        if any(c.isspace() for c in content):
            raise PolicyError(f"{source}, line {number}: one pattern a line, found {content[:80]!r}")
        try:
            patterns.append(HostPattern.parse(content))
        except ValueError as exc:
            raise PolicyError(f"{source}, line {number}: {exc}") from None
    return Policy(name=name, patterns=tuple(patterns), source=source)


def read_policy_file(path: Path, *, name: str = "custom") -> Policy:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"cannot read the egress policy {path}: {exc}") from None
    return parse_policy(text, name=name, source=str(path))


def load_policy(choice: str, *, default_file: Path | None, allow_hosts: Sequence[str] = ()) -> Policy:
    """The policy a task asks for: ``none``, ``open``, ``default`` (the worker type's
    ``default_file``) or the path of a policy file; plus its ``--allow-host`` values."""
    if choice == "none":
        policy = NONE
    elif choice == "open":
        policy = OPEN
    elif choice == "default":
        if default_file is None:
            raise PolicyError("this worker type has no default egress policy: name one, or 'none' or 'open'")
        policy = read_policy_file(default_file, name="default")
    else:
        policy = read_policy_file(Path(choice))
    return policy.with_hosts(allow_hosts)
