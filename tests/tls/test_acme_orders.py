"""ACME orders against Pebble: dns-01 through the hosted zone, http-01 through the HTTP
listener, renewal at two thirds of the lifetime, and bad requests refused with a reason."""

from __future__ import annotations

import dataclasses
import datetime
import time

import pytest
from cryptography import x509
from django.core.cache import cache

from dns_zones.models import Record
from dns_zones.services import record_add, zone_create
from tests.tls.handshake import presented
from tls.issuance import account_client
from tls.models import AcmeAccount, Certificate, HTTPChallenge
from tls.services import (
    CertificateError,
    delete_certificates,
    last_failure,
    renew_due,
    request_certificate,
)
from tls.store import CertificateStore
from tls.tasks import RenewalTimer


def leaf_and_chain(cert: Certificate) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(cert.chain_pem.encode())


def assert_issued_by_pebble(cert: Certificate, pebble, names: list[str]) -> None:
    leaf, *issuers = leaf_and_chain(cert)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(san.get_values_for_type(x509.DNSName)) == sorted(names)
    assert issuers, "the chain holds the intermediate"
    leaf.verify_directly_issued_by(issuers[0])
    root = pebble.roots()[0]
    issuers[-1].verify_directly_issued_by(root)
    assert cert.issuer.startswith("Pebble Intermediate CA")
    assert cert.not_after == leaf.not_valid_after_utc
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert cert.renew_after == leaf.not_valid_before_utc + lifetime * 2 / 3


def test_dns01_through_the_hosted_zone(acme, pebble):
    zone_create(origin="example.com")
    cert = request_certificate(names=["mail.example.com", "*.example.com"], acme=acme)
    assert_issued_by_pebble(cert, pebble, ["mail.example.com", "*.example.com"])
    assert cert.names == ["mail.example.com", "*.example.com"]
    # No address leads to mail.example.com, and a wildcard is proved by DNS only: Pebble read
    # the TXT records from the hosted DNS. They are withdrawn once the order ends.
    assert cert.challenges == {"mail.example.com": "dns-01", "*.example.com": "dns-01"}
    assert not Record.objects.filter(name__startswith="_acme-challenge.").exists()
    assert AcmeAccount.objects.get().email == "hostmaster@example.com"


def test_the_store_chooses_by_server_name(acme, pebble, settings, tmp_path):
    zone_create(origin="example.com")
    store = CertificateStore(cert_file="", key_file="", data_dir=tmp_path, hostname="localhost")
    default = presented(store, "mail.example.com")
    request_certificate(names=["mail.example.com", "*.example.com"], acme=acme)
    assert presented(store, "mail.example.com") == default  # not refreshed yet
    assert store.refresh() is True
    assert store.refresh() is False  # nothing new: no rebuild
    leaf = leaf_and_chain(Certificate.objects.get())[0]
    assert presented(store, "mail.example.com") == leaf
    assert presented(store, "WWW.example.com.") == leaf  # the wildcard, any case, trailing dot
    assert presented(store, "example.com") == default  # *.example.com does not cover it
    assert presented(store, "a.b.example.com") == default
    assert presented(store, None) == default


def test_the_workers_timer_obtains_the_served_names(acme, pebble):
    from mail.services.domains import domain_create

    zone_create(origin="example.com")
    domain_create(name="example.com")
    timer = RenewalTimer(3600, first_delay=0)
    timer.start()
    try:
        deadline = time.monotonic() + 60
        while Certificate.objects.count() < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        timer.stopped.set()
        timer.join(60)
    assert sorted(c.names[0] for c in Certificate.objects.all()) == [
        "autoconfig.example.com",
        "mail.example.com",
        "mta-sts.example.com",
    ]


def test_http01_through_the_http_listener(acme, pebble, settings):
    # This installation serves no DNS: the hosted zone stands for the internet's DNS that
    # points mail.example.net at this server, so the name is proved over HTTP.
    settings.EVERLOCK_DNS = False
    zone_create(origin="example.net")
    record_add(origin="example.net", name="mail", rtype="A", data="127.0.0.1")
    cert = request_certificate(names=["mail.example.net"], acme=dataclasses.replace(acme, dns_hosted=False))
    assert_issued_by_pebble(cert, pebble, ["mail.example.net"])
    assert cert.challenges == {"mail.example.net": "http-01"}
    assert not HTTPChallenge.objects.exists()


def test_renewal_at_two_thirds_of_the_lifetime(acme, pebble):
    from mail.services.domains import domain_create

    zone_create(origin="example.com")
    domain_create(name="example.com")
    first = renew_due(acme=acme, admin_host="admin.example.com", retry_after=3600)
    names = ["mail.example.com", "mta-sts.example.com", "autoconfig.example.com", "admin.example.com"]
    assert [(o.names, o.error) for o in first] == [((n,), "") for n in names]
    issued = {c.names[0]: c for c in Certificate.objects.all()}
    assert sorted(issued) == sorted(names)

    # Before two thirds of the lifetime nothing is due.
    before = issued["mail.example.com"].renew_after - datetime.timedelta(minutes=1)
    assert renew_due(acme=acme, admin_host="admin.example.com", retry_after=3600, now=before) == []

    # After it, every certificate is renewed: a new one replaces each.
    after = max(c.renew_after for c in issued.values()) + datetime.timedelta(minutes=1)
    renewed = renew_due(acme=acme, admin_host="admin.example.com", retry_after=3600, now=after)
    assert sorted(o.names for o in renewed) == sorted((n,) for n in names)
    assert all(o.error == "" for o in renewed)
    now_held = {c.names[0]: c for c in Certificate.objects.all()}
    assert sorted(now_held) == sorted(names)
    for name in names:
        assert now_held[name].id > issued[name].id
        assert (
            leaf_and_chain(now_held[name])[0].serial_number != leaf_and_chain(issued[name])[0].serial_number
        )


def test_a_name_nobody_answers_for_is_refused_with_the_cas_reason(acme, pebble):
    # No hosted zone holds nothing.example.org: http-01 is tried, and Pebble cannot resolve it.
    with pytest.raises(CertificateError) as failed:
        request_certificate(names=["nothing.example.org"], acme=acme)
    assert str(failed.value).startswith("nothing.example.org: nothing.example.org (http-01): ")
    assert not Certificate.objects.exists()
    assert not HTTPChallenge.objects.exists()


@pytest.mark.parametrize(
    ("names", "reason"),
    [
        (["localhost"], "invalid host name 'localhost': not a fully qualified name"),
        (["bad_name.example.com"], "invalid host name 'bad_name.example.com': bad label 'bad_name'"),
        ([], "give at least one name"),
    ],
)
def test_bad_names_are_refused_before_any_order(acme, names, reason):
    with pytest.raises(CertificateError) as refused:
        request_certificate(names=names, acme=acme)
    assert str(refused.value) == reason
    assert not AcmeAccount.objects.exists()


def test_acme_off_without_an_email(acme):
    with pytest.raises(CertificateError) as refused:
        request_certificate(names=["mail.example.com"], acme=dataclasses.replace(acme, email=""))
    assert str(refused.value) == "ACME is off: set EVERLOCK_ACME_EMAIL (and EVERLOCK_ACME_DIRECTORY)"


def test_a_changed_email_updates_the_account(acme, pebble):
    zone_create(origin="example.com")
    request_certificate(names=["mail.example.com"], acme=acme)
    moved = dataclasses.replace(acme, email="postmaster@example.com")
    request_certificate(names=["mail.example.com"], acme=moved)
    account = AcmeAccount.objects.get()
    assert account.email == "postmaster@example.com"
    # The CA holds the new contact: asking it for the account returns it.
    acme_client = account_client(moved)
    regr = acme_client.query_registration(acme_client.net.account)
    assert regr.body.contact == ("mailto:postmaster@example.com",)
    assert Certificate.objects.count() == 1  # the second replaced the first


def test_deleting_by_name_and_the_sweeps(acme, pebble):
    zone_create(origin="example.com")
    request_certificate(names=["mail.example.com", "www.example.com"], acme=acme)
    request_certificate(names=["imap.example.com"], acme=acme)
    assert delete_certificates(name="WWW.example.com") == 1
    assert [c.names for c in Certificate.objects.all()] == [["imap.example.com"]]
    assert delete_certificates(name="www.example.com") == 0

    stale = HTTPChallenge.objects.create(token="left-behind", key_authorization="x.y")
    fresh = HTTPChallenge.objects.create(token="running", key_authorization="x.z")
    HTTPChallenge.objects.filter(id=stale.id).update(created_at=stale.created_at - datetime.timedelta(days=2))
    renew_due(acme=acme, admin_host="", retry_after=3600)
    assert list(HTTPChallenge.objects.values_list("id", flat=True)) == [fresh.id]

    # Once expired, a certificate is dropped (not renewed: it is no longer presented).
    held = Certificate.objects.get()
    assert renew_due(acme=acme, admin_host="", retry_after=3600, now=held.not_after) == []
    assert not Certificate.objects.exists()


def test_a_failed_order_waits_and_is_shown_by_tls_list(acme, pebble, settings):
    from mail.services.domains import domain_create
    from tests.sshadmin.commands.console import run

    domain_create(name="example.org")  # in no zone: http-01, and no address leads here
    failed = renew_due(acme=acme, admin_host="", retry_after=3600)
    names = ["mail.example.org", "mta-sts.example.org", "autoconfig.example.org"]
    assert [o.names for o in failed] == [(n,) for n in names]
    assert all(o.error.startswith(f"{o.names[0]}: {o.names[0]} (http-01): ") for o in failed)
    # Not placed again before the retry delay (Let's Encrypt limits failed validations).
    assert renew_due(acme=acme, admin_host="", retry_after=3600) == []

    rows = {line.split()[0]: line for line in run("/tls list").splitlines()[1:]}
    for outcome in failed:
        assert rows[outcome.names[0]].split(None, 3)[1:] == ["-", "-", f"none: {outcome.error}"]
    cache.clear()
    assert last_failure(["mail.example.org"]) == ""
    rows = {line.split()[0]: line for line in run("/tls list").splitlines()[1:]}
    assert rows["mail.example.org"].split(None, 3)[1:] == ["-", "-", "none yet (ordered at the next check)"]


def test_renewal_keeps_requested_certificates_and_lets_unserved_ones_expire(acme, pebble):
    zone_create(origin="example.com")
    wanted = request_certificate(names=["extra.example.com"], acme=acme)
    # Ordered for a name Everlock no longer serves (its mail domain was deleted).
    request_certificate(names=["mail.example.com"], acme=acme, requested=False)
    after = max(c.renew_after for c in Certificate.objects.all()) + datetime.timedelta(minutes=1)
    renewed = renew_due(acme=acme, admin_host="", retry_after=3600, now=after)
    assert [(o.names, o.error) for o in renewed] == [(("extra.example.com",), "")]
    held = {c.names[0]: c for c in Certificate.objects.all()}
    assert held["extra.example.com"].id > wanted.id and held["extra.example.com"].requested
    assert held["mail.example.com"].requested is False
