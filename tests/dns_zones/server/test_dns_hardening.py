"""What clients cannot do to the DNS server: fill its memory with odd questions or EDNS options,
hold its TCP connections, and what it owes them (RFC 3225 DO bit, RFC 9471 glue, changes
served at once)."""

from __future__ import annotations

import os
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

from dns_zones.server import wire
from dns_zones.server.answer import Responder
from dns_zones.server.snapshot import load_snapshot
from dns_zones.services import record_add, zone_create


@pytest.fixture
def served(start_dns_server):
    zone_create(origin="example.com")
    record_add(origin="example.com", name="www", rtype="A", data="192.0.2.1")
    return start_dns_server()


def _padded(size: int, qname: str = "www.example.com") -> dns.message.Message:
    return dns.message.make_query(
        qname,
        "A",
        use_edns=0,
        options=[dns.edns.GenericOption(dns.edns.OptionType.PADDING, os.urandom(size))],
    )


def _tcp_exchange(port: int, query: dns.message.Message) -> dns.message.Message:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        dns.query.send_tcp(sock, query.to_wire(max_size=65535))
        response, _ = dns.query.receive_tcp(sock, expiration=time.time() + 5)
    assert response.id == query.id
    return response


def test_padded_and_odd_option_queries_are_answered(served):
    for size in (1, 100, 30_000, 60_000):
        response = _tcp_exchange(served.port, _padded(size))
        assert response.answer[0][0].address == "192.0.2.1"
        # RFC 7830 / RFC 8467: a padded query gets a padded response.
        assert any(option.otype == dns.edns.OptionType.PADDING for option in response.options)
    for n in range(20):
        cookie = dns.edns.GenericOption(dns.edns.OptionType.COOKIE, os.urandom(8))
        odd = dns.edns.GenericOption(65001, os.urandom(n * 50))
        query = dns.message.make_query("www.example.com", "A", use_edns=0, options=[cookie, odd])
        response = _tcp_exchange(served.port, query)
        assert response.answer[0][0].address == "192.0.2.1"
        assert response.options == ()


def test_templates_compiled_on_first_use_are_held_to_their_number(transactional_db, monkeypatch):
    monkeypatch.setattr(wire, "MAX_LAZY_TEMPLATES", 100)
    zone_create(origin="example.com")
    record_add(origin="example.com", name="alias", rtype="CNAME", data="www")
    record_add(origin="example.com", name="www", rtype="A", data="192.0.2.1")
    responder = Responder(load_snapshot())
    # Every type asked of a CNAME owner is a template of its own: past the limit they are
    # built for each query and forgotten.
    for rdtype in range(1000, 1300):
        query = dns.message.make_query("alias.example.com", rdtype)
        response = dns.message.from_wire(responder.respond(query.to_wire(), tcp=False))
        assert response.rcode() == dns.rcode.NOERROR
        assert response.answer[0].rdtype == dns.rdatatype.CNAME
    assert len(responder.answers._lazy) == 100
    # Unique names below the apex share the zone's NXDOMAIN template: nothing is kept for them.
    # (The limits below bound what wildcard answers keep: LAZY_BODIES lengths per template.)
    for n in range(3000):
        query = dns.message.make_query(f"n{n}.example.com", "A")
        response = dns.message.from_wire(responder.respond(query.to_wire(), tcp=False))
        assert response.rcode() == dns.rcode.NXDOMAIN
    assert len(responder.answers._lazy) == 100


def test_do_bit_is_copied(served):
    response = served.udp("www.example.com", "A", want_dnssec=True)
    assert response.ednsflags & dns.flags.DO
    assert not served.udp("www.example.com", "A", use_edns=0).ednsflags & dns.flags.DO
    assert "; EDNS: version: 0, flags: do;" in served.dig("www.example.com", "A", "+dnssec")


@pytest.fixture
def delegations(start_dns_server):
    zone_create(origin="example.com")
    # sub: ten in-domain name servers with A and AAAA glue, more than 512 octets.
    for n in range(10):
        name = f"nameserver-{n}.sub"
        record_add(origin="example.com", name="sub", rtype="NS", data=f"{name}.example.com.")
        record_add(origin="example.com", name=name, rtype="A", data=f"192.0.2.{n + 10}")
        record_add(origin="example.com", name=name, rtype="AAAA", data=f"2001:db8::{n + 10}")
    # side: one in-domain name server, and ten siblings under other.example.com.
    record_add(origin="example.com", name="side", rtype="NS", data="ns.side.example.com.")
    record_add(origin="example.com", name="ns.side", rtype="A", data="192.0.2.60")
    for n in range(10):
        name = f"nameserver-{n}.other"
        record_add(origin="example.com", name="side", rtype="NS", data=f"{name}.example.com.")
        record_add(origin="example.com", name=name, rtype="A", data=f"192.0.2.{n + 70}")
        record_add(origin="example.com", name=name, rtype="AAAA", data=f"2001:db8::{n + 70}")
    return start_dns_server()


def test_referral_whose_required_glue_does_not_fit_is_truncated(delegations):
    response = delegations.udp("host.sub.example.com", "A", use_edns=False)
    assert response.flags & dns.flags.TC
    # Over TCP the whole referral comes, with all twelve addresses.
    response = delegations.tcp("host.sub.example.com", "A")
    assert not response.flags & dns.flags.TC and len(response.authority[0]) == 10
    assert sum(len(rrset) for rrset in response.additional) == 20


def test_referral_keeps_required_glue_and_drops_sibling_glue(delegations):
    response = delegations.udp("host.side.example.com", "A", use_edns=False)
    assert not response.flags & dns.flags.TC
    assert len(response.authority[0]) == 11
    assert [rrset.to_text() for rrset in response.additional] == ["ns.side.example.com. 3600 IN A 192.0.2.60"]


def test_changes_are_served_before_the_service_returns(served):
    """A change in this process (the console of `everlock serve`) is served at once."""
    record_add(origin="example.com", name="new", rtype="A", data="192.0.2.77")
    assert [rr.to_text() for rr in served.udp("new.example.com", "A").answer] == [
        "new.example.com. 3600 IN A 192.0.2.77"
    ]
    zone_create(origin="brand-new.test")
    assert served.udp("brand-new.test", "SOA").rcode() == dns.rcode.NOERROR


def _tcp_from(port: int, source: str, *, buffers: int = 0) -> socket.socket:
    sock = socket.socket()
    if buffers:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffers)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffers)
    sock.settimeout(5)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def _answered_over_tcp(port: int, source: str) -> bool:
    with _tcp_from(port, source) as sock:
        query = dns.message.make_query("www.example.com", "A")
        dns.query.send_tcp(sock, query)
        response, _ = dns.query.receive_tcp(sock, expiration=time.time() + 5)
        return response.id == query.id and response.answer[0][0].address == "192.0.2.1"


def _end_of(sock: socket.socket, deadline: float = 5) -> str:
    """Read until the server ends the connection: "reset" or "eof" (TimeoutError if never)."""
    sock.settimeout(deadline)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return "reset"
    return "eof"


def test_tcp_connections_per_client(served, settings):
    held = [_tcp_from(served.port, "127.0.0.2") for _ in range(8)]
    try:
        assert _answered_over_tcp(served.port, "127.0.0.3")
        with _tcp_from(served.port, "127.0.0.2") as ninth:
            assert _end_of(ninth) in ("reset", "eof")
        assert _answered_over_tcp(served.port, "127.0.0.3")
    finally:
        for sock in held:
            sock.close()


def _flood_without_reading(sock: socket.socket) -> None:
    """Pipeline queries until the connection takes no more (the answers are never read)."""
    query = dns.message.make_query("www.example.com", "A").to_wire()
    frame = struct.pack("!H", len(query)) + query
    sock.setblocking(False)
    try:
        for _ in range(200_000):
            sock.send(frame * 64)
    except BlockingIOError:
        pass
    sock.setblocking(True)


def test_idle_and_stalled_connections_do_not_keep_new_clients_out(served):
    """260 connections (over the default 256), half idle, half sending queries without
    reading the answers: new TCP clients are still answered."""
    idle = [_tcp_from(served.port, f"127.0.1.{n}") for n in range(130)]
    stalled = [_tcp_from(served.port, f"127.0.2.{n}", buffers=4096) for n in range(130)]
    try:
        for sock in stalled:
            _flood_without_reading(sock)
        for n in range(5):
            assert _answered_over_tcp(served.port, f"127.0.3.{n}")
    finally:
        for sock in idle + stalled:
            sock.close()


def test_client_that_does_not_read_is_dropped(served):
    served.server.tcp_write_timeout = 0.5
    with _tcp_from(served.port, "127.0.0.2") as sock:
        # Served while it reads its answers.
        query = dns.message.make_query("www.example.com", "A")
        dns.query.send_tcp(sock, query)
        response, _ = dns.query.receive_tcp(sock, expiration=time.time() + 5)
        assert response.id == query.id and served.server.tcp_open == 1
        _flood_without_reading(sock)
        # The server gives up on it: its answers are dropped and the connection reset.
        assert served.wait_for(lambda: served.server.tcp_open == 0, timeout=30)
        assert _end_of(sock) in ("reset", "eof")


def test_wildcard_answers_keep_bodies_for_a_bounded_number_of_name_lengths(transactional_db):
    zone_create(origin="example.com")
    record_add(origin="example.com", name="*.wild", rtype="A", data="192.0.2.9")
    responder = Responder(load_snapshot())
    for n in range(1, 120):
        name = "x" * min(n, 63) + ("." + "y" * (n - 63) if n > 63 else "") + ".wild.example.com"
        query = dns.message.make_query(name, "TXT")
        response = dns.message.from_wire(responder.respond(query.to_wire(), tcp=False))
        assert response.rcode() == dns.rcode.NOERROR and response.answer == []
        assert response.authority[0].rdtype == dns.rdatatype.SOA
    (template,) = responder.answers._lazy.values()
    assert len(template._bodies) == wire.LAZY_BODIES
