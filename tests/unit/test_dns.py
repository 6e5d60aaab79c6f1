"""NullDns: every query is answered NXDOMAIN and recorded; what is not a query is dropped."""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Iterator

import pytest

from orchestrator.control.dns import NXDOMAIN, DnsQuery, NullDns, parse_query

WAIT = 30.0  # a safety bound on a reply that must come; never what a test measures


def query(name: str | bytes, *, ident: int = 0x1234, qtype: int = 1, flags: int = 0x0100) -> bytes:
    labels = name.split(b".") if isinstance(name, bytes) else [label.encode() for label in name.split(".")]
    wire = b"".join(bytes([len(label)]) + label for label in labels if label) + b"\0"
    return struct.pack("!HHHHHH", ident, flags, 1, 0, 0, 0) + wire + struct.pack("!HH", qtype, 1)


def unpack(reply: bytes) -> tuple[int, int, int, int, int, int]:
    ident, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", reply)
    return ident, flags, qd, an, ns, ar


@pytest.fixture
def server() -> Iterator[tuple[NullDns, list[DnsQuery]]]:
    records: list[DnsQuery] = []
    with NullDns("127.0.0.1", 0, record=records.append) as dns:
        yield dns, records


def ask_udp(dns: NullDns, packet: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(WAIT)
        sock.sendto(packet, dns.address)
        return sock.recv(65535)


def test_every_name_is_answered_nxdomain_and_recorded(server: tuple[NullDns, list[DnsQuery]]):
    dns, records = server
    names = ["pub.dev", "secret-data.attacker.example", "localhost", "control-plane", "a.b.c.d.e.f"]
    for number, name in enumerate(names):
        packet = query(name, ident=number + 7, qtype=28 if number % 2 else 1)
        reply = ask_udp(dns, packet)
        ident, flags, qd, an, ns, ar = unpack(reply)
        assert ident == number + 7
        assert flags & 0x8000 and flags & 0x000F == NXDOMAIN and flags & 0x0100  # an answer, NXDOMAIN, RD kept
        assert (qd, an, ns, ar) == (1, 0, 0, 0)
        assert reply[12:] == packet[12:]  # the question, echoed
        assert len(reply) <= len(packet)  # never bigger than the query
    assert [(record.name, record.qtype, record.transport, record.answer) for record in records] == [
        (name, "AAAA" if number % 2 else "A", "udp", "NXDOMAIN") for number, name in enumerate(names)
    ]
    assert records[0].client.startswith("127.0.0.1:")
    assert json.loads(records[1].to_json())["name"] == "secret-data.attacker.example"


def test_a_query_over_tcp_is_answered_the_same(server: tuple[NullDns, list[DnsQuery]]):
    dns, records = server
    with socket.create_connection(dns.address, timeout=WAIT) as sock:
        for ident in (1, 2):
            packet = query("example.org", ident=ident, qtype=16)
            sock.sendall(len(packet).to_bytes(2, "big") + packet)
            length = int.from_bytes(sock.recv(2), "big")
            reply = b""
            while len(reply) < length:
                reply += sock.recv(length - len(reply))
            assert unpack(reply)[0] == ident and unpack(reply)[1] & 0x000F == NXDOMAIN
    assert [(record.name, record.qtype, record.transport) for record in records] == [("example.org", "TXT", "tcp")] * 2


def test_label_bytes_stay_text_in_the_record(server: tuple[NullDns, list[DnsQuery]]):
    dns, records = server
    ask_udp(dns, query(b"we\x00ird.\x1b[31mred.dot\\.x y\xff"))
    assert records[0].name == "we\\000ird.\\027\\09131mred.dot\\092.x\\032y\\255"
    ask_udp(dns, query(""))  # the root
    assert records[1].name == "."


def test_another_opcode_gets_notimp(server: tuple[NullDns, list[DnsQuery]]):
    dns, records = server
    reply = ask_udp(dns, query("example.com", flags=0x2800))  # UPDATE
    assert unpack(reply)[1] & 0x000F == 4 and unpack(reply)[1] & 0x7800 == 0x2800
    assert records[0].answer == "NOTIMP"


def test_malformed_packets_are_dropped_without_an_answer(server: tuple[NullDns, list[DnsQuery]]):
    dns, records = server
    good = query("example.com")
    too_long = b"".join(b"\x3f" + b"a" * 63 for _ in range(5)) + b"\0"
    malformed = [
        b"", b"\x12", good[:11],  # shorter than a header
        good[:12], good[:-1], good[:-4],  # a question cut short
        struct.pack("!HHHHHH", 1, 0x8100, 1, 0, 0, 0) + good[12:],  # an answer, not a query
        struct.pack("!HHHHHH", 1, 0x0100, 0, 0, 0, 0),  # no question
        struct.pack("!HHHHHH", 1, 0x0100, 2, 0, 0, 0) + good[12:] * 2,  # two questions
        good[:12] + b"\xc0\x0c" + good[-4:],  # a compression pointer
        good[:12] + b"\x40" + b"a" * 64 + b"\0" + good[-4:],  # a label type that does not exist
        good[:12] + too_long + good[-4:],  # a name longer than 255 bytes
        good[:12] + b"\x05abc",  # a label longer than the packet
    ]  # fmt: skip
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(WAIT)
        for packet in malformed:
            sock.sendto(packet, dns.address)
        sock.sendto(query("after.example", ident=0xBEEF), dns.address)
        # The first datagram back answers the good query: none of the others got one.
        assert unpack(sock.recv(65535))[0] == 0xBEEF
    assert dns.dropped == len(malformed)
    assert [record.name for record in records] == ["after.example"]
    print(f"\n{len(malformed) + 1} packets: {len(malformed)} malformed dropped, 1 query answered NXDOMAIN")


def test_a_malformed_message_over_tcp_ends_the_connection(server: tuple[NullDns, list[DnsQuery]]):
    dns, records = server
    with socket.create_connection(dns.address, timeout=WAIT) as sock:
        sock.sendall(b"\x00\x03abc")
        assert sock.recv(2) == b""
    assert dns.dropped == 1 and records == []


def test_parse_query_reads_the_first_question():
    question = parse_query(query("Mixed.Case.Example", ident=9, qtype=65))
    assert question is not None
    assert (question.id, question.name, question.qtype) == (9, "Mixed.Case.Example", 65)
