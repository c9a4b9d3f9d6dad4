"""Zone and record services: validation, normal forms, serials, derived records."""

from __future__ import annotations

import pytest

from dns_zones.models import Record, Zone
from dns_zones.services import (
    RecordSpec,
    ZoneError,
    hosted_zone_for,
    record_add,
    record_delete,
    record_list,
    record_update,
    replace_derived_records,
    stands_in_for,
    withdraw_derived_records,
    zone_create,
    zone_delete,
    zone_list,
)

pytestmark = pytest.mark.django_db


def _serial(origin="example.com") -> int:
    return Zone.objects.get(origin=origin).serial


def test_zone_create_defaults_and_idempotence():
    zone, created = zone_create(origin="Example.COM.")
    assert created
    assert (zone.origin, zone.primary_ns, zone.hostmaster, zone.serial) == (
        "example.com", "ns1.example.com", "hostmaster.example.com", 1,
    )  # fmt: skip
    again, created = zone_create(origin="example.com")
    assert not created and again.id == zone.id
    zone, _ = zone_create(origin="bücher.test")
    assert zone.origin == "xn--bcher-kva.test"


@pytest.mark.parametrize(
    "bad", ["", "com", "exa mple.com", "-bad.example.com", "a..b.test", "_dmarc.example.com"]
)
def test_zone_create_refuses_bad_names(bad):
    with pytest.raises(ZoneError):
        zone_create(origin=bad)
    assert Zone.objects.count() == 0


def test_record_add_normalises_names_and_data_and_bumps_the_serial():
    zone_create(origin="example.com")
    record, created = record_add(origin="example.com", name="WWW", rtype="a", data="192.0.2.1")
    assert created
    assert (record.name, record.rtype, record.ttl, record.data) == ("www.example.com", "A", 3600, "192.0.2.1")
    assert _serial() == 2
    record, _ = record_add(origin="example.com", name="@", rtype="MX", data="10 mail", ttl=300)
    assert (record.name, record.ttl, record.data) == ("example.com", 300, "10 mail.example.com.")
    record, _ = record_add(origin="example.com", name="host.example.com.", rtype="CNAME", data="www")
    assert (record.name, record.data) == ("host.example.com", "www.example.com.")
    record, _ = record_add(origin="example.com", name="_dmarc", rtype="TXT", data='"v=DMARC1; p=none"')
    assert (record.name, record.data) == ("_dmarc.example.com", '"v=DMARC1; p=none"')
    assert _serial() == 5
    # The same record again changes nothing.
    again, created = record_add(origin="example.com", name="www", rtype="A", data="192.0.2.1")
    assert not created and again.name == "www.example.com" and _serial() == 5


@pytest.mark.parametrize(
    ("name", "rtype", "ttl", "data", "message"),
    [
        ("www", "A", None, "192.0.2", "invalid A data"),
        ("www", "AAAA", None, "192.0.2.1", "invalid AAAA data"),
        ("@", "MX", None, "mail", "invalid MX data"),
        ("www", "A", -1, "192.0.2.1", "TTL must be a whole number from 0 to 2147483647"),
        ("www", "A", 2**31, "192.0.2.1", "TTL must be a whole number from 0 to 2147483647"),
        ("www", "SOA", None, "a. b. 1 2 3 4 5", "record type 'SOA' is not supported"),
        ("www", "BOGUS", None, "x", "record type 'BOGUS' is not supported"),
        ("www.example.net.", "A", None, "192.0.2.1", "www.example.net is not inside zone example.com"),
        ("@", "CNAME", None, "www", "a CNAME cannot be at the zone apex"),
        ("@", "NS", None, "ns2.example.net.", "the apex NS records are the zone's name servers"),
        ("a..b", "A", None, "192.0.2.1", "invalid name"),
        ("www", "TXT", None, "", "record data is empty"),
    ],
)
def test_record_add_refuses_invalid_records(name, rtype, ttl, data, message):
    zone_create(origin="example.com")
    with pytest.raises(ZoneError) as exc:
        record_add(origin="example.com", name=name, rtype=rtype, ttl=ttl, data=data)
    assert message in str(exc.value)
    assert Record.objects.count() == 0 and _serial() == 1


def test_cname_must_be_alone_and_zone_must_be_hosted():
    zone_create(origin="example.com")
    record_add(origin="example.com", name="www", rtype="A", data="192.0.2.1")
    with pytest.raises(ZoneError, match="a CNAME must be alone"):
        record_add(origin="example.com", name="www", rtype="CNAME", data="other")
    record_add(origin="example.com", name="alias", rtype="CNAME", data="www")
    with pytest.raises(ZoneError, match="is a CNAME"):
        record_add(origin="example.com", name="alias", rtype="TXT", data="x")
    with pytest.raises(ZoneError, match=r"zone example\.net is not hosted here"):
        record_add(origin="example.net", name="www", rtype="A", data="192.0.2.1")


def test_long_txt_is_stored_split_into_strings():
    zone_create(origin="example.com")
    record, _ = record_add(origin="example.com", name="long", rtype="TXT", data='"' + "a" * 300 + '"')
    assert record.data == '"' + "a" * 255 + '" "' + "a" * 45 + '"'


def test_record_delete_and_derived_records_are_read_only():
    zone_create(origin="example.com")
    record, _ = record_add(origin="example.com", name="www", rtype="A", data="192.0.2.1")
    spec = RecordSpec("default._domainkey.example.com", "TXT", 3600, '"v=DKIM1; k=ed25519; p=abc"')
    assert replace_derived_records(source="mail-domain:example.com", records=[spec]) == 1
    derived = Record.objects.get(source="mail-domain:example.com")
    serial = _serial()
    with pytest.raises(ZoneError, match=r"derived from mail-domain:example\.com and cannot be deleted"):
        record_delete(origin="example.com", record_id=derived.id)
    with pytest.raises(ZoneError, match="cannot be changed"):
        record_update(record_id=derived.id, name="x", rtype="TXT", ttl=60, data="y")
    assert _serial() == serial
    assert record_delete(origin="example.com", record_id=record.id) is True
    assert record_delete(origin="example.com", record_id=record.id) is False
    assert _serial() == serial + 1
    assert [r.name for r in record_list(origin="example.com")] == ["default._domainkey.example.com"]


def test_derived_records_replace_idempotently_and_withdraw():
    zone_create(origin="example.com")
    specs = [
        RecordSpec("default._domainkey.example.com", "TXT", 3600, '"v=DKIM1; k=ed25519; p=abc"'),
        RecordSpec("default._domainkey.example.org", "TXT", 3600, '"v=DKIM1; p=x"'),  # not hosted
    ]
    assert replace_derived_records(source="s", records=specs) == 1
    serial = _serial()
    assert replace_derived_records(source="s", records=specs) == 1
    assert _serial() == serial  # nothing changed, no serial bump
    assert withdraw_derived_records(source="s") == 1
    assert _serial() == serial + 1 and Record.objects.count() == 0
    with pytest.raises(ZoneError):
        replace_derived_records(source="", records=specs)


def test_hosted_zone_for_picks_the_most_specific_zone_and_listing():
    zone_create(origin="example.com")
    zone_create(origin="sub.example.com")
    assert hosted_zone_for("a.sub.example.com").origin == "sub.example.com"
    assert hosted_zone_for("a.example.com").origin == "example.com"
    assert hosted_zone_for("example.net") is None
    record_add(origin="example.com", name="www", rtype="A", data="192.0.2.1")
    replace_derived_records(source="s", records=[RecordSpec("k.example.com", "TXT", 60, "x")])
    assert [(z.origin, z.serial, z.records, z.derived) for z in zone_list()] == [
        ("example.com", 3, 2, 1),
        ("sub.example.com", 1, 0, 0),
    ]
    assert zone_delete(origin="example.com") is True
    assert zone_delete(origin="example.com") is False
    assert Record.objects.count() == 0


@pytest.mark.parametrize(
    ("derived", "admin", "stands_in"),
    [
        (("TXT", '"v=spf1 mx -all"'), ("TXT", '"v=spf1 a -all"'), True),
        (("TXT", '"v=spf1 mx -all"'), ("TXT", '"V=SPF1 ip4:192.0.2.1 -all"'), True),
        (("TXT", '"v=spf1 mx -all"'), ("TXT", '"google-site-verification=x"'), False),
        (("TXT", '"v=DMARC1; p=quarantine"'), ("TXT", '"v=spf1 -all"'), False),
        (("TXT", '"v=DMARC1; p=quarantine"'), ("TXT", '"v=DMARC1;p=none"'), True),
        (("MX", "10 mail.example.com."), ("MX", "5 mx.example.net."), True),
        (("MX", "10 mail.example.com."), ("TXT", '"v=spf1 -all"'), False),
        (("A", "192.0.2.1"), ("AAAA", "2001:db8::1"), True),
        (("CNAME", "mail.example.com."), ("TXT", '"anything"'), True),
        (("SRV", "0 1 993 mail.example.com."), ("CNAME", "elsewhere.example.net."), True),
        (("SRV", "0 1 993 mail.example.com."), ("SRV", "0 1 993 imap.example.net."), True),
    ],
)
def test_which_administrators_records_stand_in_for_derived_ones(derived, admin, stands_in):
    assert stands_in_for(*derived, admin) is stands_in


def test_an_administrators_record_takes_the_place_of_the_derived_one():
    zone_create(origin="example.com")
    spf = RecordSpec("example.com", "TXT", 3600, '"v=spf1 mx -all"')
    assert replace_derived_records(source="test:spf", records=[spf]) == 1
    record, created = record_add(origin="example.com", name="@", rtype="TXT", data='"site-verification=1"')
    assert created and Record.objects.filter(source="test:spf").count() == 1
    # Edited into an SPF record, it withdraws the derived SPF record...
    record_update(record_id=record.id, name="@", rtype="TXT", ttl=300, data='"v=spf1 a -all"')
    assert not Record.objects.filter(source="test:spf").exists()
    # ...which is not published again while the administrator's stands.
    assert replace_derived_records(source="test:spf", records=[spf]) == 0
    record_delete(origin="example.com", record_id=record.id)
    assert replace_derived_records(source="test:spf", records=[spf]) == 1
