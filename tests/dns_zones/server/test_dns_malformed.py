"""Hostile and unusual input: malformed packets, responses, other opcodes, EDNS versions, fuzz."""

from __future__ import annotations

import logging
import random
import socket
import struct

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.query
import dns.rcode
import dns.update
import pytest

from dns_zones.services import record_add, zone_create


@pytest.fixture
def served(start_dns_server):
    zone_create(origin="example.com")
    record_add(origin="example.com", name="www", rtype="A", data="192.0.2.1")
    return start_dns_server()


def _query(qname="www.example.com", qtype="A", **kw) -> dns.message.Message:
    return dns.message.make_query(qname, qtype, **kw)


def _header(wire: bytes) -> tuple[int, int, int, int, int, int]:
    return struct.unpack("!HHHHHH", wire[:12])


def test_short_packets_and_responses_get_no_answer(served):
    assert served.raw_udp(b"") is None
    assert served.raw_udp(b"\x12\x34\x01") is None
    assert served.raw_udp(b"\x00" * 11) is None
    response_wire = bytearray(_query().to_wire())
    response_wire[2] |= 0x80  # QR=1: a response, never answered (RFC 1035 section 4.1.1)
    assert served.raw_udp(bytes(response_wire)) is None


def test_unparseable_query_gets_formerr_with_its_id(served):
    wire = struct.pack("!HHHHHH", 0xBEEF, 0x0100, 1, 0, 0, 0) + b"\x07example\x03com"  # no end
    reply = served.raw_udp(wire)
    assert _header(reply) == (0xBEEF, 0x8000 | 0x0100 | dns.rcode.FORMERR, 0, 0, 0, 0)
    out = served.dig("www.example.com", "A", "+qr")  # sanity: still serving
    assert "status: NOERROR" in out


def test_two_questions_or_none_get_formerr(served):
    query = _query()
    query.question.append(_query("example.com", "MX").question[0])
    response = dns.query.udp(query, "127.0.0.1", port=served.port, timeout=5)
    assert response.rcode() == dns.rcode.FORMERR and response.id == query.id
    empty = struct.pack("!HHHHHH", 0x4242, 0x0000, 0, 0, 0, 0)
    reply = served.raw_udp(empty)
    assert _header(reply)[0] == 0x4242 and _header(reply)[1] & 0xF == dns.rcode.FORMERR


def test_unknown_opcode_gets_notimp(served):
    for opcode in (dns.opcode.NOTIFY, dns.opcode.STATUS, 3, 15):
        query = _query()
        query.set_opcode(opcode)
        reply = served.raw_udp(query.to_wire())
        msg_id, flags = _header(reply)[:2]
        assert msg_id == query.id
        assert flags & 0x8000 and (flags >> 11) & 0xF == opcode and flags & 0xF == dns.rcode.NOTIMP
    # An UPDATE (RFC 2136) for our zone: not implemented either.
    update = dns.update.UpdateMessage("example.com")
    update.add("new", 300, "A", "192.0.2.99")
    response = dns.query.udp(update, "127.0.0.1", port=served.port, timeout=5)
    assert response.rcode() == dns.rcode.NOTIMP
    out = served.dig("+opcode=notify", "www.example.com")
    assert "opcode: NOTIFY, status: NOTIMP" in out


def test_edns_version_above_zero_gets_badvers(served):
    query = _query(use_edns=1)
    response = dns.query.udp(query, "127.0.0.1", port=served.port, timeout=5)
    assert response.rcode() == dns.rcode.BADVERS
    assert response.edns == 0 and response.answer == []
    out = served.dig("www.example.com", "+edns=1", "+noednsneg")
    assert "status: BADVERS" in out and "; EDNS: version: 0," in out


def test_zone_transfers_and_other_classes_are_refused(served):
    for qtype in ("AXFR", "IXFR"):
        response = dns.query.tcp(_query("example.com", qtype), "127.0.0.1", port=served.port, timeout=5)
        assert response.rcode() == dns.rcode.REFUSED
    response = served.udp("version.bind", "TXT", rdclass="CH")
    assert response.rcode() == dns.rcode.REFUSED


def test_fuzzed_packets_never_stop_the_server(served, caplog):
    rng = random.Random(20261124)
    valid = _query(use_edns=0).to_wire()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        for i in range(3000):
            if i % 2:
                packet = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 120)))
            else:
                packet = bytearray(valid)
                for _ in range(rng.randrange(1, 6)):
                    packet[rng.randrange(len(packet))] = rng.getrandbits(8)
                packet = bytes(packet[: rng.randrange(1, len(packet) + 1)])
            sock.sendto(packet, ("127.0.0.1", served.port))
            if i % 200 == 0:
                # Drain replies so the socket buffer does not fill.
                try:
                    while sock.recv(65535):
                        pass
                except TimeoutError:
                    pass
    # Fuzz over TCP too: garbage, short length prefixes, then a closed connection.
    for _ in range(50):
        with socket.create_connection(("127.0.0.1", served.port), timeout=5) as conn:
            conn.sendall(bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 300))))
    # No input reached the "could not be answered" path (an exception in our code).
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    # Still answering correctly on both transports.
    response = served.udp("www.example.com", "A")
    assert [rr.to_text() for rr in response.answer] == ["www.example.com. 3600 IN A 192.0.2.1"]
    # The fuzzing connections count toward the per-client limit until the server has read
    # their ends: a new connection may be refused (reset) for a moment.
    response = served.wait_for(lambda: _tcp_or_none(served), timeout=10)
    assert [rr.to_text() for rr in response.answer] == ["www.example.com. 3600 IN A 192.0.2.1"]


def _tcp_or_none(served):
    try:
        return served.tcp("www.example.com", "A")
    except ConnectionError:
        return None
