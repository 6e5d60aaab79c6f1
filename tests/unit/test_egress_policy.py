"""Egress policies: host forms, patterns, ports, the policies by name, policy files, and the
addresses no policy reaches unless it lists them."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from orchestrator.control.egress_policy import (
    NONE,
    OPEN,
    HostPattern,
    PolicyError,
    forbidden,
    load_policy,
    parse_host,
    parse_policy,
)
from tests.support.paths import ROOT

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("under_score.example", "under_score.example"),
        ("127.0.0.1", V4("127.0.0.1")),
        ("2130706433", V4("127.0.0.1")),
        ("0x7f000001", V4("127.0.0.1")),
        ("0X7F000001", V4("127.0.0.1")),
        ("0177.0.0.1", V4("127.0.0.1")),
        ("0177.0.0.01", V4("127.0.0.1")),
        ("127.1", V4("127.0.0.1")),
        ("0x7f.1", V4("127.0.0.1")),
        ("127.0.1", V4("127.0.0.1")),
        ("169.254.43518", V4("169.254.169.254")),
        ("[::1]", V6("::1")),
        ("::1", V6("::1")),
        ("[::ffff:127.0.0.1]", V6("::ffff:7f00:1")),
        ("[0:0:0:0:0:0:0:1]", V6("::1")),
    ],
)
def test_hosts_are_read_as_a_resolver_would(text: str, expected: object):
    assert parse_host(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", ".", "a..b", "exa mple.com", "exa/mple.com", "ex*ample.com", "1.2.3.256", "256.1.1.1", "08.1.1.1",
     "1.2.3.4.5", "example.123", "0x1.example.0x2", "4294967296", "[::1%eth0]", "[::g]", "[1.2.3.4]",
     "bücher.example", "a" * 64 + ".com", ("a" * 60 + ".") * 5 + "com"],
)  # fmt: skip
def test_hosts_that_are_neither_a_name_nor_an_address_are_refused(text: str):
    with pytest.raises(ValueError):
        parse_host(text)


def policy(*lines: str):
    return parse_policy("\n".join(lines), name="test", source="test.txt")


def test_an_exact_name_matches_that_name_on_80_and_443_only():
    allowed = policy("example.com")
    assert allowed.refusal("example.com", 443) is None
    assert allowed.refusal("example.com", 80) is None
    assert "port 22 is not allowed for example.com" in (allowed.refusal("example.com", 22) or "")
    for other in ("www.example.com", "example.com.evil.net", "badexample.com", "example.co"):
        assert "not allowed by the policy test" in (allowed.refusal(other, 443) or ""), other


def test_a_wildcard_matches_every_name_under_the_domain_but_not_the_domain():
    allowed = policy("*.example.com")
    assert allowed.refusal("a.example.com", 443) is None
    assert allowed.refusal("a.b.example.com", 80) is None
    assert allowed.refusal("example.com", 443) is not None
    assert allowed.refusal("badexample.com", 443) is not None
    assert allowed.refusal("a.example.com.evil.net", 443) is not None


def test_a_port_limits_the_pattern_to_that_port():
    allowed = policy("git.example.com:8443", "[2001:db8::7]:8443", "203.0.113.7:22")
    assert allowed.refusal("git.example.com", 8443) is None
    assert allowed.refusal("git.example.com", 443) is not None
    assert allowed.refusal(V6("2001:db8::7"), 8443) is None
    assert allowed.refusal(V6("2001:db8::7"), 443) is not None
    assert allowed.refusal(V4("203.0.113.7"), 22) is None
    assert allowed.refusal(V4("203.0.113.7"), 443) is not None


def test_an_address_never_matches_a_name_pattern_and_only_its_own_literal():
    allowed = policy("localhost", "*.nip.io", "127.0.0.1:8080", "[::1]")
    for spelled in ("127.0.0.1", "2130706433", "0x7f000001", "0177.0.0.1", "127.1"):
        assert allowed.refusal(parse_host(spelled), 8080) is None, spelled  # the listed address, however spelled
        assert allowed.refusal(parse_host(spelled), 80) is not None, spelled  # not on another port
    assert allowed.refusal(V4("127.0.0.2"), 8080) is not None
    assert allowed.refusal(V6("::ffff:127.0.0.1"), 8080) is not None  # another address (family), not listed
    assert allowed.refusal(V6("::1"), 443) is None
    assert allowed.refusal(parse_host("127.0.0.1.nip.io"), 443) is None  # a name, matched as a name


def test_none_allows_nothing_and_open_everything_public():
    assert NONE.refusal("pub.dev", 443) is not None
    assert NONE.refusal(V4("8.8.8.8"), 443) is not None
    assert OPEN.refusal("anything.example", 22) is None
    assert OPEN.refusal(V4("8.8.8.8"), 53) is None
    assert OPEN.refusal(V6("2606:4700::1111"), 443) is None
    for inside in ("127.0.0.1", "10.1.2.3", "169.254.169.254", "0.0.0.0", "::1", "fe80::1", "::ffff:10.0.0.1"):
        reason = OPEN.refusal(ipaddress.ip_address(inside), 443)
        assert reason is not None and "address" in reason, inside


def test_a_listed_literal_is_the_one_way_to_a_forbidden_address():
    allowed = OPEN.with_hosts(["10.0.0.5:443"])
    assert allowed.refusal(V4("10.0.0.5"), 443) is None
    assert allowed.refusal(V4("10.0.0.5"), 80) is not None
    assert allowed.refusal(V4("10.0.0.6"), 443) is not None


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"), ("127.255.255.254", "loopback"), ("::1", "loopback"),
        ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
        ("10.0.0.1", "private"), ("172.16.5.4", "private"), ("192.168.1.1", "private"), ("fd00:ec2::254", "private"),
        ("0.0.0.0", "unspecified"), ("::", "unspecified"),
        ("224.0.0.251", "multicast"), ("ff02::1", "multicast"),
        ("100.100.100.200", "not a public address"), ("198.18.0.1", "private"), ("240.0.0.1", "private"),
        ("::ffff:127.0.0.1", "127.0.0.1, a loopback"), ("64:ff9b::a00:1", "10.0.0.1, a private"),
        ("2002:7f00:1::", "127.0.0.1, a loopback"), ("2001:0:4136:e378:8000:63bf:80ff:fffe", "127.0.0.1, a loopback"),
    ],
)  # fmt: skip
def test_addresses_that_are_not_public_are_forbidden(address: str, kind: str):
    assert kind in (forbidden(ipaddress.ip_address(address)) or "")


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"])
def test_public_addresses_are_not_forbidden(address: str):
    assert forbidden(ipaddress.ip_address(address)) is None


def test_a_policy_file_has_comments_blank_lines_and_one_pattern_a_line():
    parsed = parse_policy("# a comment\n\n  pub.dev   # why\n*.example.com:8443\n\t\n", name="mine", source="f")
    assert [pattern.text for pattern in parsed.patterns] == ["pub.dev", "*.example.com:8443"]
    assert parsed.name == "mine"


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("*", "'*' may only start"), ("ex*ample.com", "'*' may only start"), ("*.*.example.com", "'*' may only"),
        ("example.com:0", "not a port"), ("example.com:65536", "not a port"), ("example.com:http", "not a port"),
        ("example.com:", "not a port"), ("a.com b.com", "one pattern a line"), ("*.10.0.0.1", "not an address"),
        ("[::1", "without ']'"), ("[::1]x", "after ']'"), ("exa_mple!.com", "not a host name"), ("1.2.3.999", "range"),
    ],
)  # fmt: skip
def test_a_bad_line_is_refused_naming_the_file_and_the_line(line: str, problem: str):
    with pytest.raises(PolicyError) as caught:
        parse_policy(f"# first\npub.dev\n{line}\n", name="test", source="policy.txt")
    assert "policy.txt, line 3" in str(caught.value)
    assert problem in str(caught.value)


def test_load_policy_by_name_file_and_allow_host(tmp_path: Path):
    listed = tmp_path / "allow.txt"
    listed.write_text("example.org\n")
    assert load_policy("none", default_file=None) == NONE
    assert load_policy("open", default_file=None) == OPEN
    default = load_policy("default", default_file=listed)
    assert default.name == "default" and default.refusal("example.org", 443) is None
    custom = load_policy(str(listed), default_file=None, allow_hosts=["extra.example:8080"])
    assert custom.name == "custom" and custom.source == str(listed)
    assert custom.refusal("example.org", 443) is None and custom.refusal("extra.example", 8080) is None
    assert load_policy("none", default_file=None, allow_hosts=["only.example"]).refusal("only.example", 443) is None


def test_load_policy_errors_say_what_is_wrong(tmp_path: Path):
    with pytest.raises(PolicyError, match="no default egress policy"):
        load_policy("default", default_file=None)
    with pytest.raises(PolicyError, match="cannot read the egress policy"):
        load_policy(str(tmp_path / "missing.txt"), default_file=None)
    with pytest.raises(PolicyError, match=r"--allow-host 'bad host'"):
        load_policy("none", default_file=None, allow_hosts=["bad host"])


def test_the_flutter_default_policy_allows_what_a_flutter_worker_needs_and_says_why():
    path = ROOT / "flutter" / "egress-allow.txt"
    default = load_policy("default", default_file=path)
    needed = ["pub.dev", "pub.dartlang.org", "storage.googleapis.com", "maven.google.com", "dl.google.com",
              "pypi.org", "files.pythonhosted.org", "registry.npmjs.org"]  # fmt: skip
    for host in needed:
        assert default.refusal(host, 443) is None, host
    assert default.refusal("github.com", 443) is not None
    assert default.refusal("pub.dev", 22) is not None
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines):
        if line and not line.startswith("#"):
            assert lines[number - 1].startswith("#"), f"no comment says why {line} is there"


def test_pattern_text_is_kept_for_messages():
    assert HostPattern.parse("*.Example.com:8443").text == "*.Example.com:8443"
