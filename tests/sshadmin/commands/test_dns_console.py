"""The /dns console commands, called through the command registry as the console does."""

from __future__ import annotations

import pytest

from dns_zones.models import Record, Zone
from dns_zones.services import RecordSpec, replace_derived_records
from sshadmin.commands import CommandError
from tests.sshadmin.commands.console import run

pytestmark = pytest.mark.django_db


def test_zones_create_list_delete():
    assert run("/dns zones list") == "no zones hosted"
    assert run("/dns zones create Example.com") == (
        "zone example.com created: SOA ns1.example.com. hostmaster.example.com. serial 1, NS ns1.example.com."
    )
    assert run("/dns zones create example.com") == "zone example.com already exists (serial 1)"
    run("/dns zones create example.net")
    assert run("/dns zones list") == (
        "example.com  serial 1  records 0 (0 derived)\nexample.net  serial 1  records 0 (0 derived)"
    )
    assert run("/dns zones delete example.net") == "zone example.net deleted"
    with pytest.raises(CommandError, match=r"^zone example\.net is not hosted here$"):
        run("/dns zones delete example.net")
    with pytest.raises(CommandError, match="invalid"):
        run("/dns zones create bad..name")
    assert list(Zone.objects.values_list("origin", flat=True)) == ["example.com"]


def test_records_add_list_del():
    run("/dns zones create example.com")
    www = run("/dns records add example.com www A 192.0.2.1")
    record_id = Record.objects.get(name="www.example.com").id
    assert www == f"record {record_id} added: www.example.com. 3600 IN A 192.0.2.1"
    # An MX without TTL: "10" is the preference, not a TTL.
    mx = run("/dns records add example.com @ MX 10 mail")
    assert mx.endswith("added: example.com. 3600 IN MX 10 mail.example.com.")
    # With a TTL before the data.
    mx2 = run("/dns records add example.com @ MX 300 20 backup.example.net.")
    assert mx2.endswith("added: example.com. 300 IN MX 20 backup.example.net.")
    # TXT: a quoted phrase is one string; several words are several strings.
    spf = run('/dns records add example.com @ TXT "v=spf1 mx -all"')
    assert spf.endswith('added: example.com. 3600 IN TXT "v=spf1 mx -all"')
    two = run("/dns records add example.com two.example.com. TXT 60 hello world")
    assert two.endswith('added: two.example.com. 60 IN TXT "hello" "world"')
    again = run("/dns records add example.com www A 192.0.2.1")
    assert again == f"record {record_id} already exists: www.example.com. 3600 IN A 192.0.2.1"
    replace_derived_records(
        source="mail-domain:example.com",
        records=[RecordSpec("default._domainkey.example.com", "TXT", 3600, '"v=DKIM1; k=ed25519; p=abc"')],
    )
    derived_id = Record.objects.get(source="mail-domain:example.com").id
    listing = run("/dns records list example.com").splitlines()
    assert len(listing) == 6
    assert (
        f'{derived_id:>6}  default._domainkey.example.com. 3600 IN TXT "v=DKIM1; k=ed25519; p=abc"'
        "  (derived from mail-domain:example.com, read-only)"
    ) in listing
    assert f"{record_id:>6}  www.example.com. 3600 IN A 192.0.2.1" in listing
    with pytest.raises(CommandError, match="cannot be deleted"):
        run(f"/dns records del example.com {derived_id}")
    assert run(f"/dns records del example.com {record_id}") == f"record {record_id} deleted"
    with pytest.raises(CommandError, match=f"^zone example.com has no record {record_id}$"):
        run(f"/dns records del example.com {record_id}")
    with pytest.raises(CommandError, match="record id must be a number"):
        run("/dns records del example.com www")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("/dns records add example.com www A 192.0.2", "invalid A data"),
        ("/dns records add example.com www A", "missing arguments"),
        ("/dns records add example.com www BOGUS x", "record type 'BOGUS' is not supported"),
        ("/dns records add example.net www A 192.0.2.1", "zone example.net is not hosted here"),
        ("/dns records add example.com @ CNAME www", "a CNAME cannot be at the zone apex"),
        ("/dns records add example.com www A 99999999999 192.0.2.1", "invalid A data"),
        ("/dns records list example.net", "zone example.net is not hosted here"),
        ("/dns zones create", "missing arguments"),
        ("/dns zones list extra", "too many arguments"),
    ],
)
def test_bad_input_is_a_command_error_and_changes_nothing(line, message):
    run("/dns zones create example.com")
    with pytest.raises(CommandError) as exc:
        run(line)
    assert message in str(exc.value)
    assert Record.objects.count() == 0 and Zone.objects.get().serial == 1
