"""The Django admin for zones and records: service validation, derived records read-only."""

from __future__ import annotations

import pytest

from dns_zones.models import Record, Zone
from dns_zones.services import RecordSpec, record_add, replace_derived_records, zone_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def zone():
    zone, _ = zone_create(origin="example.com")
    return zone


def test_record_add_form_validates_with_dnspython(admin_client, zone):
    response = admin_client.post(
        "/dns_zones/record/add/",
        {"zone": zone.id, "name": "www", "rtype": "A", "ttl": 300, "data": "192.0.2"},
    )
    assert response.status_code == 200
    assert "invalid A data" in response.content.decode()
    assert Record.objects.count() == 0
    response = admin_client.post(
        "/dns_zones/record/add/",
        {"zone": zone.id, "name": "www", "rtype": "a", "ttl": 300, "data": "192.0.2.1"},
    )
    assert response.status_code == 302
    record = Record.objects.get()
    assert (record.name, record.rtype, record.ttl, record.data, record.source) == (
        "www.example.com", "A", 300, "192.0.2.1", "",
    )  # fmt: skip
    assert Zone.objects.get().serial == 2


def test_record_edit_goes_through_the_service(admin_client, zone):
    record, _ = record_add(origin="example.com", name="www", rtype="A", data="192.0.2.1")
    url = f"/dns_zones/record/{record.id}/change/"
    data = {"zone": zone.id, "name": "www.example.com.", "rtype": "A", "ttl": 60, "data": "192.0.2.2"}
    response = admin_client.post(url, data)
    assert response.status_code == 302
    record.refresh_from_db()
    assert (record.name, record.ttl, record.data) == ("www.example.com", 60, "192.0.2.2")
    assert Zone.objects.get().serial == 3
    response = admin_client.post(url, {**data, "data": "not-an-address"})
    assert response.status_code == 200 and "invalid A data" in response.content.decode()


def test_derived_records_cannot_be_changed_or_deleted(admin_client, zone):
    replace_derived_records(
        source="mail-domain:example.com",
        records=[RecordSpec("default._domainkey.example.com", "TXT", 3600, '"v=DKIM1; k=ed25519; p=abc"')],
    )
    derived = Record.objects.get()
    serial = Zone.objects.get().serial
    page = admin_client.get(f"/dns_zones/record/{derived.id}/change/")
    assert page.status_code == 200  # shown read-only
    assert 'name="_save"' not in page.content.decode()
    response = admin_client.post(
        f"/dns_zones/record/{derived.id}/change/",
        {"zone": zone.id, "name": "x", "rtype": "TXT", "ttl": 1, "data": "x"},
    )
    assert response.status_code == 403
    assert admin_client.post(f"/dns_zones/record/{derived.id}/delete/", {"post": "yes"}).status_code == 403
    # A bulk delete that includes a derived record is refused as a whole.
    admin_record, _ = record_add(origin="example.com", name="www", rtype="A", data="192.0.2.1")
    bulk = {"action": "delete_selected", "_selected_action": [derived.id, admin_record.id], "post": "yes"}
    assert admin_client.post("/dns_zones/record/", bulk).status_code == 403
    assert Record.objects.count() == 2
    # Administrators' records alone are deleted through the service (serial bumped).
    bulk["_selected_action"] = [admin_record.id]
    assert admin_client.post("/dns_zones/record/", bulk).status_code == 302
    assert list(Record.objects.values_list("id", flat=True)) == [derived.id]
    derived.refresh_from_db()
    assert derived.data == '"v=DKIM1; k=ed25519; p=abc"'
    assert Zone.objects.get().serial == serial + 2


def test_zone_edit_bumps_the_serial(admin_client, zone):
    data = {
        "origin": "example.com", "primary_ns": "ns1.example.com", "hostmaster": "hostmaster.example.com",
        "nameservers": "NS1.example.com\nns2.example.net.", "refresh": 3600, "retry": 600,
        "expire": 1209600, "minimum": 60, "default_ttl": 3600,
        "records-TOTAL_FORMS": 0, "records-INITIAL_FORMS": 0,
    }  # fmt: skip
    response = admin_client.post(f"/dns_zones/zone/{zone.id}/change/", data)
    assert response.status_code == 302
    zone.refresh_from_db()
    assert (zone.minimum, zone.nameservers, zone.serial) == (60, "ns1.example.com\nns2.example.net", 2)


def test_zone_form_refuses_bad_names(admin_client, zone):
    data = {
        "origin": "example.com", "primary_ns": "ns1..example.com", "hostmaster": "bad name",
        "nameservers": "", "refresh": 3600, "retry": 600, "expire": 1209600, "minimum": 60,
        "default_ttl": 3600, "records-TOTAL_FORMS": 0, "records-INITIAL_FORMS": 0,
    }  # fmt: skip
    response = admin_client.post(f"/dns_zones/zone/{zone.id}/change/", data)
    assert response.status_code == 200
    page = response.content.decode()
    assert "A DNS label is empty." in page and "invalid name &#x27;bad name&#x27;" in page
    zone.refresh_from_db()
    assert (zone.primary_ns, zone.serial) == ("ns1.example.com", 1)


def test_record_form_refuses_a_cname_beside_other_data(admin_client, zone):
    record_add(origin="example.com", name="www", rtype="A", data="192.0.2.1")
    response = admin_client.post(
        "/dns_zones/record/add/", {"zone": zone.id, "name": "www", "rtype": "CNAME", "ttl": 300, "data": "x"}
    )
    assert response.status_code == 200
    assert "www.example.com already has records; a CNAME must be alone" in response.content.decode()
    assert Record.objects.count() == 1


def test_zone_added_and_deleted_through_the_services(admin_client):
    data = {
        "origin": "Example.ORG.", "primary_ns": "ns1.example.org", "hostmaster": "hostmaster@example.org",
        "nameservers": "ns1.example.org\nns2.example.net", "refresh": 3600, "retry": 600,
        "expire": 1209600, "minimum": 300, "default_ttl": 600,
        "records-TOTAL_FORMS": 0, "records-INITIAL_FORMS": 0,
    }  # fmt: skip
    response = admin_client.post("/dns_zones/zone/add/", data)
    assert response.status_code == 302, response.content.decode()
    zone = Zone.objects.get()
    assert (zone.origin, zone.nameservers, zone.default_ttl, zone.serial) == (
        "example.org",
        "ns1.example.org\nns2.example.net",
        600,
        1,
    )
    record_add(origin="example.org", name="www", rtype="A", data="192.0.2.1")
    listing = admin_client.get("/dns_zones/zone/?q=example").content.decode()
    assert '<td class="field-record_count">1</td>' in listing
    response = admin_client.post(f"/dns_zones/zone/{zone.id}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert (Zone.objects.count(), Record.objects.count()) == (0, 0)


def test_records_filter_by_kind(admin_client, zone):
    record_add(origin="example.com", name="www", rtype="A", data="192.0.2.1")
    replace_derived_records(
        source="mail.dkim:example.com",
        records=[RecordSpec("default._domainkey.example.com", "TXT", 3600, '"v=DKIM1; k=ed25519; p=AAAA"')],
    )
    derived = admin_client.get("/dns_zones/record/?kind=derived").content.decode()
    assert "default._domainkey.example.com" in derived and "192.0.2.1" not in derived
    mine = admin_client.get("/dns_zones/record/?kind=admin").content.decode()
    assert "192.0.2.1" in mine and "default._domainkey.example.com" not in mine
