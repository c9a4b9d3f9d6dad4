"""Mail domain services: create, set, delete, import; DKIM set-up and the TOML file."""

from __future__ import annotations

import re
import stat
import tomllib

import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest
from django.test import override_settings
from django.utils import timezone

from dns_zones.models import Record
from dns_zones.services import record_add, zone_create
from mail import config_files
from mail.dkim.keys import txt_value
from mail.models import DkimRotation, MailDomain
from mail.services.dkim_rotation import rotation_start
from mail.services.domains import (
    DomainError,
    domain_create,
    domain_delete,
    domain_import,
    domain_import_all,
    domain_set,
    domain_text,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def data_dir(tmp_path, settings):
    settings.DATA_DIR = tmp_path
    return tmp_path


def path_of(data_dir, name):
    return data_dir / "everlock-mail" / "domains" / f"{name}.toml"


def test_create_without_dns_leaves_dkim_off_and_guides(data_dir, settings):
    settings.EVERLOCK_DNS = False
    result = domain_create(name="Example.COM")
    assert result.changed is True
    assert result.notes == [
        "mail domain example.com created",
        "DKIM off: the DNS backend is not active here (EVERLOCK_DNS)",
        "to host the zone here: /dns zones create example.com (with EVERLOCK_DNS=on), "
        "then /mail domains set example.com dkim=on",
        "or run /mail domains set example.com dkim=on and publish the TXT records it prints "
        "with your DNS provider",
        "the other records the domain needs: /mail domains records example.com prints them, "
        "/mail domains check example.com checks them",
    ]
    d = MailDomain.objects.get()
    assert (d.name, d.dkim_enabled, d.outbound_hostname, d.dkim_private_key_pem) == (
        "example.com",
        False,
        "",
        "",
    )
    assert path_of(data_dir, "example.com").read_text() == (
        "enabled = true\n\n"
        '[submission]\nenabled = false\nauth = "authenticated"\n\n'
        '[outbound.dkim]\nenabled = false\nselector = "default"\nrsa_selector = "default-rsa"\n'
    )
    again = domain_create(name="example.com")
    assert (again.changed, again.notes) == (False, ["mail domain example.com exists"])


def test_create_with_dns_but_zone_elsewhere(data_dir, settings):
    settings.EVERLOCK_DNS = True
    zone_create(origin="example.net")
    result = domain_create(name="example.com")
    assert result.notes[1] == "DKIM off: the DNS zone of example.com is not hosted here"
    assert result.notes[2] == (
        "to host the zone here: /dns zones create example.com, then /mail domains set example.com dkim=on"
    )
    assert Record.objects.count() == 0


def test_create_in_hosted_zone_sets_up_dkim(data_dir, settings):
    settings.EVERLOCK_DNS = True
    zone_create(origin="example.com")
    result = domain_create(name="example.com")
    assert result.notes == [
        "mail domain example.com created",
        "outbound hostname mail.example.com",
        "DKIM on: Ed25519 key (selector default) and RSA-2048 key (selector default-rsa)",
        "DKIM TXT published in hosted zone example.com: default._domainkey.example.com",
        "DKIM TXT published in hosted zone example.com: default-rsa._domainkey.example.com",
        "MX, SPF, DMARC, MTA-STS, TLS-RPT, SRV and autoconfig records published in hosted zone "
        "example.com (/mail domains records example.com lists them)",
    ]
    d = MailDomain.objects.get()
    assert d.dkim_enabled is True
    assert d.outbound_hostname == "mail.example.com"
    assert d.dkim_private_key_pem.startswith("-----BEGIN PRIVATE KEY-----\n")
    records = {r.name: r for r in Record.objects.filter(source="mail.dkim:example.com")}
    assert sorted(records) == ["default-rsa._domainkey.example.com", "default._domainkey.example.com"]
    assert records["default._domainkey.example.com"].data == f'"{txt_value(d.dkim_private_key_pem)}"'
    assert records["default-rsa._domainkey.example.com"].data == f'"{txt_value(d.dkim_rsa_private_key_pem)}"'
    assert records["default-rsa._domainkey.example.com"].data.startswith('"v=DKIM1; k=rsa; p=MIIBIjAN')
    assert all(r.rtype == "TXT" and r.ttl == 3600 for r in records.values())

    path = path_of(data_dir, "example.com")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert text == (
        "enabled = true\n\n"
        '[submission]\nenabled = false\nauth = "authenticated"\n\n'
        '[outbound]\nhostname = "mail.example.com"\n\n'
        '[outbound.dkim]\nenabled = true\nselector = "default"\n'
        f'private_key_pem = """\n{d.dkim_private_key_pem}"""\n'
        'rsa_selector = "default-rsa"\n'
        f'rsa_private_key_pem = """\n{d.dkim_rsa_private_key_pem}"""\n'
    )
    assert [p.name for p in path.parent.iterdir()] == ["example.com.toml"]


def test_create_in_parent_zone(data_dir, settings):
    settings.EVERLOCK_DNS = True
    zone_create(origin="example.com")
    domain_create(name="lists.example.com")
    names = sorted(Record.objects.filter(source="mail.dkim:lists.example.com").values_list("name", flat=True))
    assert names == ["default-rsa._domainkey.lists.example.com", "default._domainkey.lists.example.com"]


def test_set_applies_together_or_not_at_all(data_dir, settings):
    settings.EVERLOCK_DNS = False
    domain_create(name="example.com")
    before = path_of(data_dir, "example.com").read_text()
    for values, error in [
        (
            {"submission_enabled": True, "outbound_hostname": "bad..host"},
            "hostname: invalid domain name 'bad..host': encoding with 'idna' codec failed "
            "(UnicodeError: label empty or too long)",
        ),
        (
            {"submission_enabled": True, "report_address": "nobody"},
            "reports: invalid address 'nobody'",
        ),
        (
            {"submission_enabled": True, "dmarc_policy": "sometimes"},
            "dmarc=sometimes: the value must be one of none, quarantine, reject",
        ),
    ]:
        with pytest.raises(DomainError) as exc:
            domain_set(name="example.com", **values)
        assert str(exc.value) == error
    d = MailDomain.objects.get()
    assert (d.submission_enabled, d.outbound_hostname) == (False, "")
    assert path_of(data_dir, "example.com").read_text() == before

    result = domain_set(
        name="example.com", submission_enabled=True, submission_auth=MailDomain.SubmissionAuth.AUTHENTICATED
    )
    assert result.notes == ["mail domain example.com: submission=on"]
    result = domain_set(
        name="example.com",
        submission_enabled=True,
        submission_auth=MailDomain.SubmissionAuth.NONE,
        outbound_hostname="MX.Example.com",
    )
    assert result.notes == ["mail domain example.com: auth=off hostname=mx.example.com"]
    d.refresh_from_db()
    assert (d.submission_enabled, d.submission_auth, d.outbound_hostname) == (True, "none", "mx.example.com")
    again = domain_set(name="example.com", submission_auth=MailDomain.SubmissionAuth.NONE)
    assert (again.changed, again.notes) == (False, ["mail domain example.com unchanged"])
    assert 'auth = "none"' in path_of(data_dir, "example.com").read_text()
    with pytest.raises(DomainError, match=r"^no mail domain example\.net$"):
        domain_set(name="example.net", submission_enabled=True)


def test_dkim_on_off_outside_hosted_dns(data_dir, settings):
    settings.EVERLOCK_DNS = False
    domain_create(name="example.com")
    result = domain_set(name="example.com", dkim_enabled=True)
    d = MailDomain.objects.get()
    rsa = txt_value(d.dkim_rsa_private_key_pem)
    assert len(rsa) > 255
    assert result.notes == [
        "mail domain example.com: dkim=on DKIM keys generated",
        "the DNS backend is not active here (EVERLOCK_DNS); "
        "publish these TXT records with the zone's DNS provider:",
        f'  default._domainkey.example.com. 3600 IN TXT "{txt_value(d.dkim_private_key_pem)}"',
        f'  default-rsa._domainkey.example.com. 3600 IN TXT "{rsa[:255]}" "{rsa[255:]}"',
    ]
    # Each line is valid zone-file syntax and carries the whole key.
    for line, value in zip(result.notes[2:], (txt_value(d.dkim_private_key_pem), rsa), strict=True):
        _, ttl, _, rtype, data = line.split(maxsplit=4)
        rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, data)
        assert (ttl, rtype, b"".join(rdata.strings).decode()) == ("3600", "TXT", value)
    assert Record.objects.count() == 0
    keys = (d.dkim_private_key_pem, d.dkim_rsa_private_key_pem)
    off = domain_set(name="example.com", dkim_enabled=False)
    assert off.notes == [
        "mail domain example.com: dkim=off",
        "DKIM off for example.com: signing stopped, DKIM TXT records withdrawn",
    ]
    domain_set(name="example.com", dkim_enabled=True)
    d.refresh_from_db()
    assert (d.dkim_enabled, d.dkim_private_key_pem, d.dkim_rsa_private_key_pem) == (True, *keys)


def test_dkim_on_off_in_hosted_zone_publishes_and_withdraws(data_dir, settings):
    settings.EVERLOCK_DNS = False
    domain_create(name="example.com")
    settings.EVERLOCK_DNS = True
    zone = zone_create(origin="example.com")[0]
    record_add(origin="example.com", name="@", rtype="MX", data="10 mail")
    serial = type(zone).objects.get().serial
    domain_set(name="example.com", dkim_enabled=True)
    assert Record.objects.filter(source="mail.dkim:example.com").count() == 2
    # The DKIM records and the others (MX aside: the administrator's stays) in two changes.
    assert type(zone).objects.get().serial == serial + 2
    assert not Record.objects.filter(source="mail.dns:example.com", rtype="MX").exists()
    # Idempotent: the same state publishes nothing new.
    domain_set(name="example.com", dkim_enabled=True)
    assert type(zone).objects.get().serial == serial + 2
    domain_set(name="example.com", dkim_enabled=False)
    assert list(Record.objects.filter(source="").values_list("rtype", "data")) == [
        ("MX", "10 mail.example.com.")
    ]
    assert not Record.objects.filter(source="mail.dkim:example.com").exists()
    assert MailDomain.objects.get().dkim_enabled is False


def test_delete_withdraws_records_and_removes_file(data_dir, settings):
    settings.EVERLOCK_DNS = True
    zone_create(origin="example.com")
    domain_create(name="example.com")
    assert path_of(data_dir, "example.com").exists()
    assert domain_delete(name="example.com") is True
    assert not path_of(data_dir, "example.com").exists()
    assert Record.objects.count() == 0
    assert MailDomain.objects.count() == 0
    assert domain_delete(name="example.com") is False


def test_show_leaves_private_keys_out(data_dir, settings):
    settings.EVERLOCK_DNS = True
    zone_create(origin="example.com")
    domain_create(name="example.com")
    assert domain_text("example.com") == (
        "enabled = true\n\n"
        '[submission]\nenabled = false\nauth = "authenticated"\n\n'
        '[outbound]\nhostname = "mail.example.com"\n\n'
        '[outbound.dkim]\nenabled = true\nselector = "default"\nrsa_selector = "default-rsa"\n'
    )


def test_import_reads_an_edited_file_back(data_dir, settings):
    settings.EVERLOCK_DNS = True
    zone_create(origin="example.com")
    domain_create(name="example.com")
    path = path_of(data_dir, "example.com")
    text = path.read_text().replace("[submission]\nenabled = false", "[submission]\nenabled = true")
    text = text.replace('hostname = "mail.example.com"', 'hostname = "smtp.example.com"')
    text = text.replace("[outbound.dkim]\nenabled = true", "[outbound.dkim]\nenabled = false")
    path.write_text(text)
    result = domain_import(name="example.com")
    assert result.notes == [
        f"mail domain example.com imported from {path}",
        "mail domain example.com: submission=on hostname=smtp.example.com dkim=off",
    ]
    d = MailDomain.objects.get()
    assert (d.submission_enabled, d.outbound_hostname, d.dkim_enabled) == (True, "smtp.example.com", False)
    assert not Record.objects.filter(source="mail.dkim:example.com").exists()
    # The other records follow the new hostname.
    assert Record.objects.get(source="mail.dns:example.com", rtype="MX").data == "10 smtp.example.com."
    assert tomllib.loads(path.read_text())["outbound"]["hostname"] == "smtp.example.com"
    assert domain_import(name="example.com").notes == [
        f"mail domain example.com imported from {path} (unchanged)"
    ]


@pytest.mark.parametrize(
    ("edit", "error"),
    [
        (
            lambda t: t.replace("enabled = true", "enabled = yes", 1),
            "not valid TOML: Invalid value (at line 1, column 11)",
        ),
        (
            lambda t: t.replace('auth = "authenticated"', 'auth = "sometimes"'),
            "submission.auth: must be one of 'authenticated', 'none'",
        ),
        (
            lambda t: t.replace("[submission]\n", "[submission]\ncolour = 1\n"),
            "submission.colour: unknown setting",
        ),
        (
            lambda t: t.replace('hostname = "mail.example.com"', "hostname = 5"),
            "outbound.hostname: must be a string",
        ),
        (
            lambda t: t.replace("enabled = true", 'enabled = true\npostmaster = "a b"', 1),
            "postmaster: invalid local part 'a b'",
        ),
        (lambda t: t.replace("MC4C", "XXXX", 1), "outbound.dkim.private_key_pem: not a PEM private key"),
        (
            lambda t: t.replace('selector = "default"', 'selector = "bad selector"'),
            "outbound.dkim.selector: invalid selector 'bad selector'",
        ),
    ],
)
def test_import_of_a_bad_file_changes_nothing(data_dir, settings, edit, error):
    settings.EVERLOCK_DNS = True
    zone_create(origin="example.com")
    domain_create(name="example.com")
    path = path_of(data_dir, "example.com")
    before = MailDomain.objects.values().get()
    path.write_text(edit(path.read_text()))
    with pytest.raises(DomainError) as exc:
        domain_import(name="example.com")
    assert str(exc.value).startswith(f"{path}: {error}")
    assert MailDomain.objects.values().get() == before
    assert Record.objects.filter(source="mail.dkim:example.com").count() == 2


def test_import_all_creates_domains_from_files(data_dir, settings):
    settings.EVERLOCK_DNS = False
    directory = data_dir / "everlock-mail" / "domains"
    directory.mkdir(parents=True)
    (directory / "example.net.toml").write_text('[submission]\nenabled = true\nauth = "none"\n')
    changes = domain_import_all()
    assert [c.domain.name for c in changes] == ["example.net"]
    d = MailDomain.objects.get()
    assert (d.enabled, d.submission_enabled, d.submission_auth, d.dkim_enabled) == (True, True, "none", False)
    assert config_files.read(directory / "example.net.toml").submission_auth == "none"


def test_invalid_names_are_refused(data_dir):
    for name in ("localhost", "bad..example.com", "-x.example.com", ""):
        with pytest.raises(DomainError):
            domain_create(name=name)
    assert MailDomain.objects.count() == 0


@override_settings(EVERLOCK_DNS=False)
def test_idn_domain_is_stored_in_ascii(data_dir):
    assert domain_create(name="bücher.example").domain.name == "xn--bcher-kva.example"


def test_create_gives_earlier_grants_their_mailboxes(data_dir, settings):
    from accounts.services import grant_add, user_add
    from mail.models import Mailbox

    settings.EVERLOCK_DNS = False
    user_add(name="alice", password="change-me")
    grant_add(name="alice", resource="smtp/mail/example.com:Alice", role="writer")
    grant_add(name="alice", resource="smtp/mail/example.org:carol", role="writer")
    assert Mailbox.objects.count() == 0
    result = domain_create(name="example.com")
    assert result.notes[-1] == "mailboxes from existing grants: alice@example.com"
    assert [m.address for m in Mailbox.objects.all()] == ["alice@example.com"]
    assert sorted(Mailbox.objects.get().folders.values_list("name", flat=True)) == ["inbox", "sent"]


def test_postmaster_setting_is_a_local_part(data_dir):
    domain_create(name="example.com")
    result = domain_set(name="example.com", postmaster="HostMaster")
    assert tomllib.loads(path_of(data_dir, "example.com").read_text())["postmaster"] == "hostmaster"
    assert (result.domain.postmaster, result.notes) == (
        "hostmaster",
        ["mail domain example.com: postmaster=hostmaster"],
    )
    with pytest.raises(DomainError, match="postmaster: invalid local part 'a b'"):
        domain_set(name="example.com", postmaster="a b")
    assert domain_set(name="example.com", postmaster="").domain.postmaster == ""


def test_a_key_rotation_in_progress_is_kept_in_the_file_and_imported_back(data_dir, settings):
    settings.EVERLOCK_DNS = True
    zone_create(origin="example.com")
    domain_create(name="example.com")
    started = timezone.now()
    rotation_start(name="example.com", now=started)
    path = path_of(data_dir, "example.com")
    text = path.read_text()
    rotation = tomllib.loads(text)["outbound"]["dkim"]["rotation"]
    day = started.strftime("%Y%m%d")
    assert {k: v for k, v in rotation.items() if not k.endswith("pem")} == {
        "state": "publishing",
        "selector": day,
        "rsa_selector": f"{day}-rsa",
        "ttl": 3600,
        "started": started,
    }
    # The console's view of the file leaves the private keys out, the rotation's too.
    assert "PRIVATE KEY" not in domain_text("example.com")
    assert f'[outbound.dkim.rotation]\nstate = "publishing"\nselector = "{day}"\nrsa_selector' in domain_text(
        "example.com"
    )
    # A domain restored from its file resumes the rotation with the same keys.
    domain_delete(name="example.com")
    assert Record.objects.count() == 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    domain_import(name="example.com")
    assert DkimRotation.objects.get().rsa_selector == f"{day}-rsa"
    assert sorted(
        Record.objects.filter(source="mail.dkim:example.com").values_list("name", flat=True)
    ) == sorted(f"{s}._domainkey.example.com" for s in ("default", "default-rsa", day, f"{day}-rsa"))
    # A file without the table ends the rotation; a bad state is refused.
    path.write_text(text.replace('state = "publishing"', 'state = "halfway"'))
    with pytest.raises(
        DomainError, match=re.escape("outbound.dkim.rotation.state: must be one of 'publishing', 'retiring'")
    ):
        domain_import(name="example.com")
    path.write_text(text.split("[outbound.dkim.rotation]")[0])
    domain_import(name="example.com")
    assert not DkimRotation.objects.exists()
    assert Record.objects.filter(source="mail.dkim:example.com").count() == 2
