"""A record the server could not send is refused when added; one that fits is served."""

from __future__ import annotations

import dns.rcode
import pytest

from dns_zones.models import Record
from dns_zones.services import ZoneError, record_add, zone_create


def txt(size: int, fill: str = "a") -> str:
    return '"' + fill * size + '"'


def test_a_txt_record_too_big_for_any_answer_is_refused(db):
    zone_create(origin="example.com")
    with pytest.raises(ZoneError) as exc:
        record_add(origin="example.com", name="big", rtype="TXT", data=txt(70_000))
    assert str(exc.value) == (
        "the TXT records of big.example.com would take 70275 octets: more than one DNS answer can carry "
        "(65535 octets, RFC 1035 section 4.2.2), so the name could not be served"
    )
    assert not Record.objects.filter(name="big.example.com").exists()


def test_records_that_together_overflow_an_answer_are_refused_at_the_one_too_many(db):
    zone_create(origin="example.com")
    for fill in "abc":
        record_add(origin="example.com", name="many", rtype="TXT", data=txt(20_000, fill))
    with pytest.raises(ZoneError, match=r"^the TXT records of many\.example\.com would take \d+ octets"):
        record_add(origin="example.com", name="many", rtype="TXT", data=txt(6_000, "d"))
    assert Record.objects.filter(name="many.example.com").count() == 3


def test_the_biggest_records_accepted_are_served_over_tcp(start_dns_server):
    zone_create(origin="example.com")
    record_add(origin="example.com", name="big", rtype="TXT", data=txt(64_000))
    for fill in "abc":
        record_add(origin="example.com", name="many", rtype="TXT", data=txt(20_000, fill))
    server = start_dns_server()
    for name, sizes in (("big.example.com.", [64_000]), ("many.example.com.", [20_000] * 3)):
        answer = server.tcp(name, "TXT")
        assert answer.rcode() == dns.rcode.NOERROR
        [rrset] = answer.answer
        assert sorted(sum(len(s) for s in rdata.strings) for rdata in rrset) == sizes
