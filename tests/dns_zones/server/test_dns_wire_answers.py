"""The precompiled wire answers against the answers built with dnspython's object model.

Every query goes to a real server over loopback (UDP, and TCP where asked); the reply's bytes
are compared with what Responder.fallback() (dnspython reading the query, resolve() filling
the response) makes of the same query, and read back by dnspython and dig.
"""

from __future__ import annotations

import random
import socket
import struct
import time

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from dns_zones.server.answer import UDP_REPLIES, Responder
from dns_zones.server.snapshot import load_snapshot
from dns_zones.services import record_add, zone_create

RECORDS = [
    ("@", "MX", "10 mail"),
    ("@", "MX", "20 mx2.example.net."),
    ("@", "TXT", '"v=spf1 mx -all"'),
    ("@", "AAAA", "2001:db8::53"),
    ("www", "A", "192.0.2.1"),
    ("www", "A", "192.0.2.2"),
    ("www", "AAAA", "2001:db8::1"),
    ("mail", "A", "192.0.2.25"),
    ("mail", "AAAA", "2001:db8::25"),
    ("alias", "CNAME", "www"),
    ("towild", "CNAME", "x.wild"),
    ("outside", "CNAME", "host.example.org."),
    ("_submissions._tcp", "SRV", "0 1 465 mail"),
    ("_imaps._tcp", "SRV", "0 1 993 mail"),
    ("leaf.ent.deep", "TXT", '"deep"'),
    ("*.wild", "A", "192.0.2.9"),
    ("*.wild", "MX", "10 mail"),
    ("*.cname-wild", "CNAME", "www"),
    ("sub", "NS", "ns.sub"),
    ("sub", "NS", "ns.example.net."),
    ("ns.sub", "A", "192.0.2.53"),
    ("sub", "DS", "12345 13 2 " + "ab" * 32),
    *(("big", "TXT", f'"{n:02d}-' + "x" * 90 + '"') for n in range(10)),
    ("key._domainkey", "TXT", '"v=DKIM1; k=rsa; p=' + "A" * 392 + '"'),
]

QUESTIONS = [
    ("www.example.com", "A"),
    ("www.example.com", "AAAA"),
    ("example.com", "MX"),
    ("example.com", "TXT"),
    ("example.com", "NS"),
    ("example.com", "SOA"),
    ("example.com", "AAAA"),
    ("alias.example.com", "A"),
    ("alias.example.com", "CNAME"),
    ("alias.example.com", "MX"),
    ("towild.example.com", "A"),
    ("outside.example.com", "A"),
    ("_submissions._tcp.example.com", "SRV"),
    ("_imaps._tcp.example.com", "SRV"),
    ("key._domainkey.example.com", "TXT"),
    ("big.example.com", "TXT"),
    # NODATA: a name without the type, an empty non-terminal.
    ("www.example.com", "MX"),
    ("ent.deep.example.com", "A"),
    ("deep.example.com", "TXT"),
    ("_tcp.example.com", "SRV"),
    # NXDOMAIN, at several depths.
    ("nope.example.com", "A"),
    ("a.b.c.nope.example.com", "TXT"),
    ("nope.leaf.ent.deep.example.com", "A"),
    # Wildcards: the types it has, one it lacks, below it, and the wildcard name itself.
    ("anything.wild.example.com", "A"),
    ("x.y.wild.example.com", "MX"),
    ("anything.wild.example.com", "AAAA"),
    ("*.wild.example.com", "A"),
    ("what.cname-wild.example.com", "A"),
    # The delegation: below it, its glue, the cut itself, DS at the cut.
    ("host.sub.example.com", "A"),
    ("ns.sub.example.com", "A"),
    ("sub.example.com", "NS"),
    ("sub.example.com", "DS"),
    ("sub.example.com", "A"),
    # A zone inside another, and names outside every zone.
    ("inner.example.com", "SOA"),
    ("www.inner.example.com", "A"),
    ("nope.inner.example.com", "A"),
    ("example.org", "A"),
    ("com", "NS"),
    # ANY gets one RRset (RFC 8482); unknown types get NODATA.
    ("example.com", "ANY"),
    ("www.example.com", "TYPE65280"),
]

# (make_query keyword arguments) for the EDNS cases.
EDNS = [
    {"use_edns": False},
    {"use_edns": 0},
    {"use_edns": 0, "payload": 512},
    {"use_edns": 0, "payload": 4096},
    {"use_edns": 0, "want_dnssec": True},
    {"use_edns": 0, "options": [dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"12345678")]},
]


@pytest.fixture
def served(start_dns_server):
    zone_create(origin="example.com")
    for name, rtype, data in RECORDS:
        record_add(origin="example.com", name=name, rtype=rtype, data=data)
    zone_create(origin="inner.example.com")
    record_add(origin="inner.example.com", name="www", rtype="A", data="192.0.2.80")
    zone_create(origin="example.net")
    return start_dns_server()


def _mixed_case(name: str, rng: random.Random) -> str:
    return "".join(c.upper() if rng.random() < 0.5 else c for c in name)


def _exchange_udp(port: int, wire: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(wire, ("127.0.0.1", port))
        return sock.recv(65535)


def _exchange_tcp(port: int, wire: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(struct.pack("!H", len(wire)) + wire)
        (length,) = struct.unpack("!H", _read(sock, 2))
        return _read(sock, length)


def _read(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "connection closed early"
        data += chunk
    return data


def _assert_same(got: bytes, expected: bytes, context) -> None:
    """The same header, length and content as dnspython's encoding (which may order the
    records of an RRset differently: it shuffles them, RFC 2181 section 5)."""
    assert got[:12] == expected[:12], context
    assert len(got) == len(expected), context
    if got[4:6] == b"\x00\x00":  # a header only (FORMERR, NOTIMP for what cannot be read)
        assert got == expected, context
        return
    response, reference = dns.message.from_wire(got), dns.message.from_wire(expected)
    assert response == reference, context
    assert response.question[0].name.to_text() == reference.question[0].name.to_text(), context
    for section in ("answer", "authority", "additional"):
        names = [rrset.name.to_text() for rrset in getattr(response, section)]
        assert names == [rrset.name.to_text() for rrset in getattr(reference, section)], context
    assert (response.edns, response.payload, response.ednsflags, response.options) == (
        reference.edns, reference.payload, reference.ednsflags, reference.options,
    ), context  # fmt: skip


def test_every_answer_matches_dnspythons_over_udp_and_tcp(served):
    reference = Responder(load_snapshot())
    rng = random.Random(15)
    checked = 0
    for qname, qtype in QUESTIONS:
        for edns in EDNS:
            for name in (qname, qname.upper(), _mixed_case(qname, rng)):
                query = dns.message.make_query(name, qtype, **edns)
                wire = query.to_wire()
                for tcp, exchange in ((False, _exchange_udp), (True, _exchange_tcp)):
                    got = exchange(served.port, wire)
                    expected = reference.fallback(wire, tcp=tcp)
                    _assert_same(got, expected, (name, qtype, edns, tcp))
                    response = dns.message.from_wire(got)
                    assert response.id == query.id
                    # RFC 4343: the question comes back as asked, letter case and all.
                    assert response.question[0].name.to_text() == name.rstrip(".") + "."
                    checked += 1
                # Asked again with another ID, over UDP the reply remembered for the first
                # asking: the same octets after the ID.
                again = struct.pack("!H", query.id ^ 0x5A5A) + wire[2:]
                got = _exchange_udp(served.port, again)
                assert got[:2] == again[:2]
                _assert_same(got, reference.fallback(again, tcp=False), (name, qtype, edns, "again"))
                checked += 1
    assert checked == len(QUESTIONS) * len(EDNS) * 3 * 3


def test_udp_replies_are_remembered_per_snapshot_and_bounded(served):
    responder = Responder(load_snapshot())
    query = dns.message.make_query("WWW.example.com", "A", use_edns=0)
    wire = query.to_wire()
    reply = responder.respond_udp(wire)
    assert responder.udp_replies == {wire[2:]: reply}
    assert wire[:2] + reply == responder.respond(wire, tcp=False)
    # A reply to a query with a response's QR bit: nothing is sent, nothing kept.
    assert responder.respond_udp(wire[:2] + bytes([wire[2] | 0x80]) + wire[3:]) is None
    # A long query (padded to 600 octets) is answered, its reply not kept.
    padded = dns.message.make_query("www.example.com", "A", use_edns=0, pad=600).to_wire()
    assert dns.message.from_wire(padded[:2] + responder.respond_udp(padded)).answer
    assert len(responder.udp_replies) == 1
    # A new snapshot starts afresh, so a change is never answered from the old data.
    record_add(origin="example.com", name="www", rtype="A", data="192.0.2.3")
    responder.install(Responder(load_snapshot()).answers)
    assert responder.udp_replies == {}
    addresses = dns.message.from_wire(wire[:2] + responder.respond_udp(wire)).answer[0]
    assert sorted(rdata.address for rdata in addresses) == ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
    # Past UDP_REPLIES replies it starts afresh: unique names cannot grow it further.
    sizes = set()
    for n in range(UDP_REPLIES + 5):
        responder.respond_udp(dns.message.make_query(f"n{n}.example.com", "A").to_wire())
        sizes.add(len(responder.udp_replies))
    assert min(sizes) == 1 and max(sizes) == UDP_REPLIES


def test_unique_names_match_dnspythons_answers(served):
    """New names in every query (what a template serves for many names: NXDOMAIN, the
    wildcard, the referral), of every length a name can have below them."""
    reference = Responder(load_snapshot())
    rng = random.Random(4592)
    for parent in ("example.com", "wild.example.com", "sub.example.com", "ent.deep.example.com"):
        room = 253 - len(parent) - 1
        for length in range(1, room + 1, 7):
            labels = []
            left = length
            while left > 0:
                size = min(63, left if left <= 63 else 63)
                labels.append(
                    "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789-") for _ in range(size))
                )
                left -= size + 1
            name = ".".join(label.strip("-") or "x" for label in labels) + "." + parent
            for qtype in ("A", "MX", "TXT"):
                wire = dns.message.make_query(name, qtype, use_edns=0).to_wire()
                _assert_same(
                    _exchange_udp(served.port, wire), reference.fallback(wire, tcp=False), (name, qtype)
                )


def test_answers_read_by_dig(served):
    assert sorted(served.dig("WwW.ExAmPlE.CoM", "A", "+short").split()) == ["192.0.2.1", "192.0.2.2"]
    out = served.dig("_submissions._tcp.example.com", "SRV", "+noall", "+answer")
    assert out.split() == [
        "_submissions._tcp.example.com.",
        "3600",
        "IN",
        "SRV",
        "0",
        "1",
        "465",
        "mail.example.com.",
    ]
    out = served.dig("Some.Thing.Wild.Example.Com", "A", "+noall", "+answer")
    assert out.split() == ["Some.Thing.Wild.Example.Com.", "3600", "IN", "A", "192.0.2.9"]
    out = served.dig("nothing.example.com", "A")
    assert "status: NXDOMAIN" in out and "flags: qr aa rd; QUERY: 1, ANSWER: 0, AUTHORITY: 1" in out
    out = served.dig("host.sub.example.com", "A", "+norec")
    assert "status: NOERROR" in out and "flags: qr; QUERY: 1, ANSWER: 0, AUTHORITY: 2, ADDITIONAL: 2" in out


def test_truncated_over_udp_then_complete_over_tcp(served):
    query = dns.message.make_query("big.example.com", "TXT", use_edns=False)
    udp = dns.message.from_wire(_exchange_udp(served.port, query.to_wire()))
    assert udp.flags & dns.flags.TC and udp.answer == [] and udp.rcode() == dns.rcode.NOERROR
    assert udp.question[0].name.to_text() == "big.example.com."
    # With a larger EDNS payload it fits over UDP; resolvers retry over TCP otherwise.
    big = served.udp("big.example.com", "TXT", use_edns=0, payload=1232)
    assert not big.flags & dns.flags.TC and len(big.answer[0]) == 10
    response, used_tcp = dns.query.udp_with_fallback(query, "127.0.0.1", port=served.port, timeout=5)
    assert used_tcp and not response.flags & dns.flags.TC
    assert sorted(rdata.strings[0][:2] for rdata in response.answer[0]) == [b"%02d" % n for n in range(10)]
    out = served.dig("big.example.com", "TXT", "+noedns", "+ignore")
    assert "flags: qr aa tc rd;" in out
    assert served.dig("big.example.com", "TXT", "+noedns", "+short").count("\n") == 10


def test_malformed_and_mutated_queries_match_dnspython_and_never_crash(served, caplog):
    """Queries of names the templates hold, bent in every octet: whatever the server answers
    is what dnspython's reading of the query gives (FORMERR for what it cannot read)."""
    reference = Responder(load_snapshot())
    rng = random.Random(1035)
    bases = [
        dns.message.make_query(q, t, **e).to_wire()
        for q, t in QUESTIONS[:12]
        for e in (EDNS[0], EDNS[1], EDNS[5])
    ]
    formerr = 0
    for n in range(3000):
        wire = bytearray(rng.choice(bases))
        for _ in range(rng.randrange(1, 4)):
            wire[rng.randrange(len(wire))] = rng.getrandbits(8)
        if n % 3 == 0:
            wire = wire[: rng.randrange(12, len(wire) + 1)]
        elif n % 3 == 1:
            wire += bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 8)))
        wire = bytes(wire)
        answer = reference.respond(wire, tcp=False)
        expected = None if wire[2] & 0x80 else reference.fallback(wire, tcp=False)
        if expected is None:
            assert answer is None, wire.hex()
        else:
            _assert_same(answer, expected, wire.hex())
        if expected is not None and expected[3] & 0x0F == dns.rcode.FORMERR:
            formerr += 1
    assert formerr > 100
    # Over the socket too; the server keeps answering and logs no failure of its own.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for n in range(500):
            wire = bytearray(bases[n % len(bases)])
            wire[rng.randrange(2, len(wire))] = rng.getrandbits(8)
            sock.sendto(bytes(wire), ("127.0.0.1", served.port))
    time.sleep(0.2)
    assert [r.getMessage() for r in caplog.records if r.levelno >= 40] == []
    assert [rr.to_text() for rr in served.udp("www.example.com", "AAAA").answer] == [
        "www.example.com. 3600 IN AAAA 2001:db8::1"
    ]


def test_edns_opt_and_flags_of_template_answers(served):
    response = served.udp("www.example.com", "A", use_edns=0, want_dnssec=True, payload=4096)
    assert response.edns == 0 and response.payload == 1232 and response.ednsflags & dns.flags.DO
    assert response.flags == dns.flags.QR | dns.flags.AA | dns.flags.RD
    response = served.udp("www.example.com", "A", use_edns=False)
    assert response.edns == -1
    query = dns.message.make_query("www.example.com", "A", use_edns=False)
    query.flags = 0  # no RD asked: none echoed
    assert dns.query.udp(query, "127.0.0.1", port=served.port, timeout=5).flags == dns.flags.QR | dns.flags.AA
    # EDNS version 1: BADVERS (RFC 6891 section 6.1.3), from the fallback.
    response = served.udp("www.example.com", "A", use_edns=1)
    assert response.rcode() == dns.rcode.BADVERS and response.edns == 0
