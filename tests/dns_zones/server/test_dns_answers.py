"""The authoritative server answering real clients (dig and dnspython) over UDP and TCP."""

from __future__ import annotations

import base64
import re
import socket
import time

import dkim
import dkim.crypto
import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from dns_zones.services import RecordSpec, record_add, replace_derived_records, zone_create, zone_delete


@pytest.fixture
def served(start_dns_server):
    zone_create(origin="example.com")
    zone_create(origin="example.net")
    for name, rtype, data in [
        ("www", "A", "192.0.2.1"),
        ("www", "AAAA", "2001:db8::1"),
        ("mail", "A", "192.0.2.25"),
        ("@", "MX", "10 mail"),
        ("@", "TXT", '"v=spf1 mx -all"'),
        ("alias", "CNAME", "www"),
        ("chain", "CNAME", "alias"),
        ("elsewhere", "CNAME", "host.example.org."),
        ("cross", "CNAME", "web.example.net."),
        ("missing", "CNAME", "nothing"),
        ("loop1", "CNAME", "loop2"),
        ("loop2", "CNAME", "loop1"),
        ("leaf.deep", "A", "192.0.2.7"),
        ("*.wild", "A", "192.0.2.9"),
        ("sub", "NS", "ns.sub"),
        ("ns.sub", "A", "192.0.2.53"),
    ]:
        record_add(origin="example.com", name=name, rtype=rtype, data=data)
    record_add(origin="example.net", name="web", rtype="A", data="198.51.100.1")
    for i in range(8):
        record_add(origin="example.com", name="medium", rtype="TXT", data=f'"{i}-' + "m" * 98 + '"')
    for i in range(30):
        record_add(origin="example.com", name="big", rtype="TXT", data=f'"{i:02d}-' + "x" * 90 + '"')
    return start_dns_server()


def _answer_lines(dig_output: str) -> list[str]:
    section = dig_output.split(";; ANSWER SECTION:\n", 1)
    if len(section) == 1:
        return []
    lines = section[1].split("\n\n", 1)[0].splitlines()
    return [re.sub(r"\s+", " ", line) for line in lines]


def test_dig_gets_an_authoritative_answer_without_recursion(served):
    out = served.dig("www.example.com", "A")
    assert ";; ->>HEADER<<- opcode: QUERY, status: NOERROR" in out
    # RD is echoed, AA set, RA never set: dig warns that recursion is not available.
    assert ";; flags: qr aa rd; QUERY: 1, ANSWER: 1, AUTHORITY: 0, ADDITIONAL: 1" in out
    assert ";; WARNING: recursion requested but not available" in out
    assert "; EDNS: version: 0, flags:; udp: 1232" in out
    assert _answer_lines(out) == ["www.example.com. 3600 IN A 192.0.2.1"]


def test_dnspython_aaaa_and_mx_with_glue(served):
    r = served.udp("www.example.com", "AAAA")
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
    assert [rr.to_text() for rr in r.answer] == ["www.example.com. 3600 IN AAAA 2001:db8::1"]
    r = served.udp("example.com", "MX")
    assert [rr.to_text() for rr in r.answer] == ["example.com. 3600 IN MX 10 mail.example.com."]
    assert [rr.to_text() for rr in r.additional] == ["mail.example.com. 3600 IN A 192.0.2.25"]


def test_soa_and_apex_ns_come_from_the_zone(served):
    r = served.udp("example.com", "SOA")
    (soa,) = r.answer
    assert soa.to_text().startswith("example.com. 3600 IN SOA ns1.example.com. hostmaster.example.com. ")
    assert soa[0].serial >= 2 and (soa[0].refresh, soa[0].retry, soa[0].expire, soa[0].minimum) == (
        3600, 600, 1209600, 300,
    )  # fmt: skip
    r = served.udp("example.com", "NS")
    assert [rr.to_text() for rr in r.answer] == ["example.com. 3600 IN NS ns1.example.com."]


def test_nxdomain_carries_the_soa_with_the_negative_ttl(served):
    r = served.udp("nope.example.com", "A")
    assert r.rcode() == dns.rcode.NXDOMAIN
    assert r.flags & dns.flags.AA
    assert r.answer == []
    (soa,) = r.authority
    assert soa.rdtype == dns.rdatatype.SOA and soa.name.to_text() == "example.com." and soa.ttl == 300
    out = served.dig("nope.example.com", "A")
    assert "status: NXDOMAIN" in out and "flags: qr aa rd; QUERY: 1, ANSWER: 0, AUTHORITY: 1" in out


def test_nodata_for_an_existing_name_and_an_empty_non_terminal(served):
    for qname, qtype in [("www.example.com", "MX"), ("deep.example.com", "A")]:
        r = served.udp(qname, qtype)
        assert r.rcode() == dns.rcode.NOERROR, qname
        assert r.answer == [], qname
        assert [rr.rdtype for rr in r.authority] == [dns.rdatatype.SOA], qname


def test_refused_outside_hosted_zones_with_ra_clear(served):
    for qname in ("example.org", "www.example.org", "com"):
        r = served.udp(qname, "A")
        assert r.rcode() == dns.rcode.REFUSED, qname
        assert not r.flags & (dns.flags.AA | dns.flags.RA), qname
        assert r.answer == [] and r.authority == []
    out = served.dig("example.org", "A")
    assert "status: REFUSED" in out and "flags: qr rd;" in out


def test_cname_is_followed_within_hosted_data(served):
    r = served.udp("chain.example.com", "A")
    assert [rr.to_text() for rr in r.answer] == [
        "chain.example.com. 3600 IN CNAME alias.example.com.",
        "alias.example.com. 3600 IN CNAME www.example.com.",
        "www.example.com. 3600 IN A 192.0.2.1",
    ]
    # Into another hosted zone.
    r = served.udp("cross.example.com", "A")
    assert [rr.to_text() for rr in r.answer] == [
        "cross.example.com. 3600 IN CNAME web.example.net.",
        "web.example.net. 3600 IN A 198.51.100.1",
    ]
    # Out of our data: the CNAME alone, the resolver continues.
    r = served.udp("elsewhere.example.com", "A")
    assert r.rcode() == dns.rcode.NOERROR
    assert [rr.to_text() for rr in r.answer] == ["elsewhere.example.com. 3600 IN CNAME host.example.org."]
    # To a name that does not exist: NXDOMAIN for the target (RFC 6604), CNAME kept.
    r = served.udp("missing.example.com", "A")
    assert r.rcode() == dns.rcode.NXDOMAIN
    assert [rr.to_text() for rr in r.answer] == ["missing.example.com. 3600 IN CNAME nothing.example.com."]
    # A loop ends.
    r = served.udp("loop1.example.com", "A")
    assert [rr.to_text() for rr in r.answer] == [
        "loop1.example.com. 3600 IN CNAME loop2.example.com.",
        "loop2.example.com. 3600 IN CNAME loop1.example.com.",
    ]
    # Asking for the CNAME itself does not follow it.
    r = served.udp("alias.example.com", "CNAME")
    assert [rr.to_text() for rr in r.answer] == ["alias.example.com. 3600 IN CNAME www.example.com."]


def test_wildcard_and_delegation(served):
    r = served.udp("anything.wild.example.com", "A")
    assert [rr.to_text() for rr in r.answer] == ["anything.wild.example.com. 3600 IN A 192.0.2.9"]
    r = served.udp("host.sub.example.com", "A")
    assert r.rcode() == dns.rcode.NOERROR and not r.flags & dns.flags.AA
    assert [rr.to_text() for rr in r.authority] == ["sub.example.com. 3600 IN NS ns.sub.example.com."]
    assert [rr.to_text() for rr in r.additional] == ["ns.sub.example.com. 3600 IN A 192.0.2.53"]


def test_edns_payload_is_advertised_and_honoured(served):
    r = served.udp("www.example.com", "A", use_edns=0, payload=4096)
    assert r.edns == 0 and r.payload == 1232
    r = served.udp("www.example.com", "A", use_edns=False)
    assert r.edns == -1
    # Without EDNS the 512-octet limit applies: the 30 TXT strings do not fit.
    r = served.udp("big.example.com", "TXT", use_edns=False)
    assert r.flags & dns.flags.TC and r.answer == [] and r.rcode() == dns.rcode.NOERROR
    # The client's own smaller size is honoured: about 900 octets fit in 1232, not in 600.
    r = served.udp("medium.example.com", "TXT", use_edns=0, payload=1232)
    assert not r.flags & dns.flags.TC and len(r.answer[0]) == 8
    r = served.udp("medium.example.com", "TXT", use_edns=0, payload=600)
    assert r.flags & dns.flags.TC and r.answer == [] and r.edns == 0
    # With EDNS 4096 we still cap at our 1232, which is too small for the 30 strings.
    r = served.udp("big.example.com", "TXT", use_edns=0, payload=4096)
    assert r.flags & dns.flags.TC and r.answer == []


def test_truncated_udp_answer_is_complete_over_tcp(served):
    r = served.tcp("big.example.com", "TXT")
    assert not r.flags & dns.flags.TC
    (txt,) = r.answer
    assert len(txt) == 30
    assert sorted(rd.strings[0][:3] for rd in txt) == [f"{i:02d}-".encode() for i in range(30)]
    # dig retries over TCP by itself after TC.
    out = served.dig("big.example.com", "TXT", "+noedns")
    assert ";; Truncated, retrying in TCP mode." in out
    assert "ANSWER: 30," in out and "flags: qr aa rd;" in out
    # Several queries on one TCP connection (RFC 7766 section 6.2.1).
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as sock:
        for qname in ("www.example.com", "mail.example.com"):
            query = dns.message.make_query(qname, "A")
            dns.query.send_tcp(sock, query)
            response, _ = dns.query.receive_tcp(sock, expiration=time.time() + 5)
            assert response.id == query.id and response.answer[0].name.to_text() == qname + "."


def test_any_is_answered_minimally(served):
    r = served.udp("www.example.com", "ANY")
    assert r.rcode() == dns.rcode.NOERROR
    assert len(r.answer) == 1 and len(r.answer[0]) == 1
    assert r.answer[0].to_text() == "www.example.com. 3600 IN A 192.0.2.1"
    r = served.tcp("example.com", "ANY")
    assert len(r.answer) == 1
    r = served.udp("nope.example.com", "ANY")
    assert r.rcode() == dns.rcode.NXDOMAIN


def test_long_txt_is_split_and_reassembles_into_a_dkim_key(served):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    value = "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()
    assert len(value) > 255
    published = replace_derived_records(
        source="mail-domain:example.com",
        records=[RecordSpec("default-rsa._domainkey.example.com", "TXT", 3600, f'"{value}"')],
    )
    assert published == 1
    r = served.wait_for(lambda: served.udp("default-rsa._domainkey.example.com", "TXT").answer)
    (rdata,) = r[0]
    assert len(rdata.strings) == 2 and [len(s) for s in rdata.strings] == [255, len(value) - 255]
    assert b"".join(rdata.strings).decode() == value
    tags = dkim.util.parse_tag_value(b"".join(rdata.strings))
    public = dkim.crypto.parse_public_key(base64.b64decode(tags[b"p"]))
    assert public["modulus"] == key.public_key().public_numbers().n
    # dig shows the several strings of the one record.
    out = served.dig("default-rsa._domainkey.example.com", "TXT", "+short")
    strings = re.findall(r'"([^"]*)"', out)
    assert len(out.strip().splitlines()) == 1 and "".join(strings) == value


def test_zone_changes_are_served_without_a_restart(served):
    assert served.udp("new.example.com", "A").rcode() == dns.rcode.NXDOMAIN
    record_add(origin="example.com", name="new", rtype="A", data="192.0.2.77")
    r = served.wait_for(lambda: served.udp("new.example.com", "A").answer, timeout=5)
    assert [rr.to_text() for rr in r] == ["new.example.com. 3600 IN A 192.0.2.77"]
    zone_create(origin="zone.test")
    r = served.wait_for(lambda: served.udp("zone.test", "SOA").answer, timeout=5)
    assert r[0].to_text().startswith("zone.test. 3600 IN SOA ns1.zone.test. hostmaster.zone.test. 1 ")
    zone_delete(origin="example.net")
    assert served.wait_for(lambda: served.udp("web.example.net", "A").rcode() == dns.rcode.REFUSED)


def test_cached_answers_get_the_query_id_and_case(served):
    for _ in range(3):
        query = dns.message.make_query("WwW.ExAmPlE.cOm", "A")
        response = dns.query.udp(query, "127.0.0.1", port=served.port, timeout=5)
        assert response.id == query.id
        assert response.question[0].name.to_text() == "WwW.ExAmPlE.cOm."
        assert response.answer[0][0].address == "192.0.2.1"
