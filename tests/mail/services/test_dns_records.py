"""The DNS records a mail domain derives: published in its hosted zone and served (checked with
dig), the administrator's records left alone, printed for a zone hosted elsewhere
(/mail domains records) and checked through the resolver (/mail domains check)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dns_zones.models import Record
from dns_zones.services import record_add, zone_create
from mail.models import MailDomain
from mail.services.dns_records import mta_sts_id, mta_sts_policy
from mail.services.dns_status import domain_records
from mail.services.domains import domain_create, domain_set, domains_publish_dns, get_domain
from tests.dns_server import RunningDNS
from tests.sshadmin.commands.console import run

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def hosted(tmp_path, settings):
    settings.DATA_DIR = tmp_path
    settings.EVERLOCK_DNS = True
    settings.EVERLOCK_PUBLIC_ADDRESSES = []
    settings.EVERLOCK_PUBLIC_PORTS = {}


@pytest.fixture
def dns_server():
    server = RunningDNS()
    yield server
    server.stop()


def answer(server: RunningDNS, name: str, rtype: str) -> list[str]:
    """dig's answer lines for `name` `rtype`, whitespace collapsed."""
    out = server.dig("+noall", "+answer", name, rtype)
    return sorted(re.sub(r"\s+", " ", line) for line in out.splitlines() if line.strip())


def test_every_derived_record_is_served_and_dig_sees_it(settings, dns_server):
    settings.EVERLOCK_PUBLIC_ADDRESSES = ["192.0.2.25", "2001:db8::25"]
    zone_create(origin="example.com")
    domain_create(name="example.com")
    domain_set(
        name="example.com",
        submission_enabled=True,
        dmarc_policy=MailDomain.DmarcPolicy.REJECT,
        report_address="reports@example.com",
    )
    domain = get_domain("example.com")
    policy_id = mta_sts_id(mta_sts_policy(domain))
    expected = [
        "example.com. 3600 IN MX 10 mail.example.com.",
        "mail.example.com. 3600 IN A 192.0.2.25",
        "mail.example.com. 3600 IN AAAA 2001:db8::25",
        'example.com. 3600 IN TXT "v=spf1 mx -all"',
        '_dmarc.example.com. 3600 IN TXT "v=DMARC1; p=reject; rua=mailto:reports@example.com"',
        f'_mta-sts.example.com. 3600 IN TXT "v=STSv1; id={policy_id}"',
        "mta-sts.example.com. 3600 IN A 192.0.2.25",
        "mta-sts.example.com. 3600 IN AAAA 2001:db8::25",
        '_smtp._tls.example.com. 3600 IN TXT "v=TLSRPTv1; rua=mailto:reports@example.com"',
        "_submissions._tcp.example.com. 3600 IN SRV 0 1 465 mail.example.com.",
        "_submission._tcp.example.com. 3600 IN SRV 10 1 587 mail.example.com.",
        "_imaps._tcp.example.com. 3600 IN SRV 0 1 993 mail.example.com.",
        "_imap._tcp.example.com. 3600 IN SRV 10 1 143 mail.example.com.",
        "autoconfig.example.com. 3600 IN A 192.0.2.25",
        "autoconfig.example.com. 3600 IN AAAA 2001:db8::25",
        "autodiscover.example.com. 3600 IN A 192.0.2.25",
        "autodiscover.example.com. 3600 IN AAAA 2001:db8::25",
    ]
    records = domain_records(domain)
    lines = [r.zone_line() for r in records]
    assert lines[: len(expected)] == expected
    # Then the two DKIM keys.
    assert [line.split(" IN ")[0] for line in lines[len(expected) :]] == [
        "default._domainkey.example.com. 3600",
        "default-rsa._domainkey.example.com. 3600",
    ]
    for record, line in zip(records, lines, strict=True):
        assert line in answer(dns_server, record.name, record.rtype), line

    # A change of setting changes the served records, the policy id with the policy.
    domain_set(name="example.com", mta_sts_mode=MailDomain.MtaStsMode.ENFORCE, submission_enabled=False)
    new_id = mta_sts_id(mta_sts_policy(get_domain("example.com")))
    assert new_id != policy_id
    assert dns_server.wait_for(
        lambda: (
            answer(dns_server, "_mta-sts.example.com", "TXT")
            == [f'_mta-sts.example.com. 3600 IN TXT "v=STSv1; id={new_id}"']
        )
    )
    assert answer(dns_server, "_submission._tcp.example.com", "SRV") == []


def test_without_public_addresses_the_web_names_are_cnames_of_the_mail_host(dns_server):
    zone_create(origin="example.com")
    record_add(origin="example.com", name="mail", rtype="A", data="192.0.2.25")
    domain_create(name="example.com")
    for label in ("mta-sts", "autoconfig", "autodiscover"):
        assert answer(dns_server, f"{label}.example.com", "A") == sorted(
            [
                f"{label}.example.com. 3600 IN CNAME mail.example.com.",
                "mail.example.com. 3600 IN A 192.0.2.25",
            ]
        )
    # The mail host's own address stays the administrator's.
    assert list(Record.objects.filter(name="mail.example.com").values_list("source", flat=True)) == [""]


def test_the_administrators_records_are_never_overwritten(dns_server):
    zone_create(origin="example.com")
    record_add(origin="example.com", name="@", rtype="TXT", data='"v=spf1 ip4:192.0.2.0/24 -all"')
    record_add(origin="example.com", name="@", rtype="TXT", data='"google-site-verification=abc"')
    domain_create(name="example.com")
    # The administrator's SPF stands; other TXT records do not stand in for it.
    assert answer(dns_server, "example.com", "TXT") == [
        'example.com. 3600 IN TXT "google-site-verification=abc"',
        'example.com. 3600 IN TXT "v=spf1 ip4:192.0.2.0/24 -all"',
    ]
    assert answer(dns_server, "example.com", "MX") == ["example.com. 3600 IN MX 10 mail.example.com."]
    # Records added by hand later take the derived ones' place.
    record_add(origin="example.com", name="@", rtype="MX", data="5 mx.example.net.")
    record_add(origin="example.com", name="autoconfig", rtype="A", data="198.51.100.7")
    record_add(origin="example.com", name="_dmarc", rtype="TXT", data='"v=DMARC1; p=none"')
    assert answer(dns_server, "example.com", "MX") == ["example.com. 3600 IN MX 5 mx.example.net."]
    assert answer(dns_server, "autoconfig.example.com", "A") == [
        "autoconfig.example.com. 3600 IN A 198.51.100.7"
    ]
    assert answer(dns_server, "_dmarc.example.com", "TXT") == [
        '_dmarc.example.com. 3600 IN TXT "v=DMARC1; p=none"'
    ]
    # ...and keep it when the domain's records are derived again.
    domain_set(name="example.com", dmarc_policy=MailDomain.DmarcPolicy.REJECT)
    assert answer(dns_server, "_dmarc.example.com", "TXT") == [
        '_dmarc.example.com. 3600 IN TXT "v=DMARC1; p=none"'
    ]
    assert answer(dns_server, "example.com", "MX") == ["example.com. 3600 IN MX 5 mx.example.net."]
    assert Record.objects.filter(source="mail.dns:example.com", rtype="SRV").count() == 2
    # The MTA-STS policy names the administrator's MX host too.
    assert "mx: mail.example.com\r\nmx: mx.example.net\r\n" in mta_sts_policy(get_domain("example.com"))


def test_records_follow_the_public_addresses_at_the_next_start(settings, dns_server):
    zone_create(origin="example.com")
    domain_create(name="example.com")
    assert answer(dns_server, "mail.example.com", "A") == []
    settings.EVERLOCK_PUBLIC_ADDRESSES = ["192.0.2.25"]
    assert domains_publish_dns() == 1  # what `everlock serve --backend-dns-dns` does at start
    assert answer(dns_server, "mail.example.com", "A") == ["mail.example.com. 3600 IN A 192.0.2.25"]
    assert answer(dns_server, "autoconfig.example.com", "A") == [
        "autoconfig.example.com. 3600 IN A 192.0.2.25"
    ]


def test_records_command_prints_zone_file_lines_for_a_zone_hosted_elsewhere(settings):
    settings.EVERLOCK_DNS = False
    settings.EVERLOCK_PUBLIC_PORTS = {"imap": 1143}
    domain_create(name="example.org")
    policy_id = mta_sts_id(mta_sts_policy(get_domain("example.org")))
    assert run("/mail domains records example.org") == (
        "; DNS records of mail domain example.org\n"
        "example.org. 3600 IN MX 10 mail.example.org.\n"
        "; mail.example.org. A/AAAA: the public addresses of this server (the mail host resolves)\n"
        'example.org. 3600 IN TXT "v=spf1 mx -all"\n'
        '_dmarc.example.org. 3600 IN TXT "v=DMARC1; p=quarantine; rua=mailto:postmaster@example.org"\n'
        f'_mta-sts.example.org. 3600 IN TXT "v=STSv1; id={policy_id}"\n'
        "mta-sts.example.org. 3600 IN CNAME mail.example.org.\n"
        '_smtp._tls.example.org. 3600 IN TXT "v=TLSRPTv1; rua=mailto:postmaster@example.org"\n'
        "_imaps._tcp.example.org. 3600 IN SRV 0 1 993 mail.example.org.\n"
        "_imap._tcp.example.org. 3600 IN SRV 10 1 1143 mail.example.org.\n"
        "autoconfig.example.org. 3600 IN CNAME mail.example.org.\n"
        "autodiscover.example.org. 3600 IN CNAME mail.example.org."
    )
    # With DKIM on, its keys follow, an RSA key split into strings of at most 255 octets.
    domain_set(name="example.org", dkim_enabled=True)
    lines = run("/mail domains records example.org").splitlines()
    assert lines[-2].startswith('default._domainkey.example.org. 3600 IN TXT "v=DKIM1; k=ed25519; p=')
    rsa = lines[-1]
    assert rsa.startswith('default-rsa._domainkey.example.org. 3600 IN TXT "v=DKIM1; k=rsa; p=')
    assert all(len(s) <= 255 for s in re.findall(r'"([^"]*)"', rsa)) and rsa.count('"') >= 4


def test_check_says_what_is_missing_or_different_and_what_to_change(settings, dns_server):
    settings.EVERLOCK_RESOLVER = f"127.0.0.1:{dns_server.port}"
    zone_create(origin="example.com")
    domain_create(name="example.com")
    out = run("/mail domains check example.com").splitlines()
    # The mail host has no address yet: the only record missing.
    assert out[0] == "OK        MX     example.com"
    assert out[1:3] == [
        "MISSING   A/AAAA mail.example.com",
        "          add A and/or AAAA records of mail.example.com with this server's addresses",
    ]
    assert out[-1] == "1 of 13 records of example.com need attention"

    record_add(origin="example.com", name="mail", rtype="A", data="192.0.2.25")
    # One wrong record: a DMARC policy set by hand that differs from the derived one.
    record_add(origin="example.com", name="_dmarc", rtype="TXT", data='"v=DMARC1; p=none"')
    out = run("/mail domains check example.com").splitlines()
    bad = [line for line in out if not line.startswith("OK ")]
    assert bad == [
        'DIFFERENT TXT    _dmarc.example.com: found "v=DMARC1; p=none"',
        "          replace it with _dmarc.example.com. 3600 IN TXT "
        '"v=DMARC1; p=quarantine; rua=mailto:postmaster@example.com"',
        "1 of 13 records of example.com need attention",
    ]
    assert "OK        CNAME  autoconfig.example.com" in out
    assert "OK        TXT    default-rsa._domainkey.example.com" in out


def test_check_of_a_zone_nobody_serves_says_each_record_is_missing(settings, dns_server):
    settings.EVERLOCK_RESOLVER = f"127.0.0.1:{dns_server.port}"
    settings.EVERLOCK_DNS = False
    domain_create(name="example.com")
    zone_create(origin="example.com")  # served, but empty: every record is missing
    out = run("/mail domains check example.com").splitlines()
    assert out[:2] == [
        "MISSING   MX     example.com",
        "          add example.com. 3600 IN MX 10 mail.example.com.",
    ]
    # DKIM is off (the zone was not hosted when the domain was created): 11 records.
    assert out[-1] == "11 of 11 records of example.com need attention"


@pytest.mark.parametrize(
    ("variable", "value", "error"),
    [
        (
            "EVERLOCK_PUBLIC_ADDRESSES",
            "192.0.2.25,mail.example.com",
            "'mail.example.com' is not an IP address",
        ),
        (
            "EVERLOCK_PUBLIC_PORTS",
            "imap=1143,pop3=110",
            "expected submissions|submission|imaps|imap=PORT, got 'pop3=110'",
        ),
    ],
)
def test_public_settings_are_checked_at_start(tmp_path, variable, value, error):
    env = {**os.environ, "EVERLOCK_DATA_DIR": str(tmp_path), variable: value}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert (
        result.stderr.splitlines()[-1] == f"django.core.exceptions.ImproperlyConfigured: {variable}: {error}"
    )
