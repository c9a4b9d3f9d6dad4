"""DKIM key rotation seen in delivered mail: the signatures' selectors change only after the
new key records have been visible through the resolver for their TTL, the new signatures
verify against the hosted zone, and the old selectors are withdrawn after the grace period."""

from __future__ import annotations

import re
import smtplib
import time
from datetime import timedelta

import dkim
import dns.rcode
import pytest
from django.utils import timezone

from dns_zones.services import zone_create
from mail.config_files import domain_path
from mail.delivery.resolver import make_resolver
from mail.delivery.tasks import Rescan
from mail.models import DkimRotation, Message
from mail.services.dkim_rotation import advance_rotations, rotation_start, rotation_state
from mail.services.domains import DomainError, domain_set, get_domain
from mail.services.storage import read_content
from tests.dns_server import RunningDNS

GRACE = timedelta(days=7)


@pytest.fixture
def hosted(example_com, settings, tmp_path):
    """example.com signing with DKIM, its zone hosted here and served on 127.0.0.1, which is
    also the resolver (EVERLOCK_RESOLVER) the rotation looks the records up through."""
    settings.EVERLOCK_DNS = True
    settings.DATA_DIR = tmp_path
    zone_create(origin="example.com")
    domain_set(name="example.com", dkim_enabled=True)
    server = RunningDNS()
    settings.EVERLOCK_RESOLVER = f"127.0.0.1:{server.port}"
    yield server
    server.stop()


def _submit(smtp, subject: str) -> bytes:
    """Submit a message from alice to bob; the message as delivered into bob's inbox."""
    with smtplib.SMTP("127.0.0.1", smtp.submission_port, timeout=10) as client:
        client.login("alice", "change-me")
        client.sendmail(
            "alice@example.com",
            ["bob@example.com"],
            f"From: alice@example.com\r\nTo: bob@example.com\r\nSubject: {subject}\r\n\r\nHello\r\n".encode(),
        )
    message = Message.objects.filter(folder__name="inbox").order_by("-id").first()
    raw = read_content(message.content)
    assert f"Subject: {subject}".encode() in raw
    return raw


def _selectors(raw: bytes) -> list[str]:
    """The s= tag of each DKIM-Signature field, in order."""
    head = re.sub(rb"\r\n[ \t]+", b" ", raw.split(b"\r\n\r\n", 1)[0])
    fields = [line for line in head.split(b"\r\n") if line.lower().startswith(b"dkim-signature:")]
    return [re.search(rb"[; ]s=([^;]+);", field).group(1).decode() for field in fields]


def _verifies(raw: bytes, server: RunningDNS) -> list[bool]:
    verifier = dkim.DKIM(raw)
    out = []
    for idx in range(raw.count(b"DKIM-Signature:")):
        try:
            out.append(bool(verifier.verify(idx=idx, dnsfunc=server.dnsfunc)))
        except dkim.ValidationError:
            out.append(False)
    return out


def test_signing_switches_after_the_ttl_and_old_keys_retire_after_the_grace(smtp, hosted, settings):
    resolver = make_resolver(settings.EVERLOCK_RESOLVER)
    t0 = timezone.now()
    change = rotation_start(name="example.com", now=t0)
    day = t0.strftime("%Y%m%d")
    assert change.notes == [
        f"DKIM key rotation of example.com started: new keys under selectors {day} (Ed25519) "
        f"and {day}-rsa (RSA)",
        "signing stays with default and default-rsa until the new records have been visible through the "
        "resolver for their TTL (3600 s)",
        "DKIM TXT published in hosted zone example.com: default._domainkey.example.com",
        "DKIM TXT published in hosted zone example.com: default-rsa._domainkey.example.com",
        f"DKIM TXT published in hosted zone example.com: {day}._domainkey.example.com",
        f"DKIM TXT published in hosted zone example.com: {day}-rsa._domainkey.example.com",
    ]
    text = domain_path(settings.DATA_DIR, "example.com").read_text()
    assert f'[outbound.dkim.rotation]\nstate = "publishing"\nselector = "{day}"\n' in text
    assert "visible_since" not in text
    # All four keys are served by the hosted zone.
    for selector in ("default", "default-rsa", day, f"{day}-rsa"):
        assert "v=DKIM1" in hosted.dig(f"{selector}._domainkey.example.com", "TXT", "+short")

    before = _submit(smtp, "before the check")
    assert _selectors(before) == ["default", "default-rsa"]

    # The resolver sees the new records: the TTL wait starts now.
    assert advance_rotations(now=t0, resolver=resolver, grace=GRACE) == [
        "DKIM key rotation of example.com: the new records are visible; signing switches in 3600 s"
    ]
    assert rotation_state(get_domain("example.com")).startswith(
        f"publishing new keys {day}, {day}-rsa: visible since "
    )
    assert "\nvisible_since = " in domain_path(settings.DATA_DIR, "example.com").read_text()
    assert _selectors(_submit(smtp, "during the wait")) == ["default", "default-rsa"]
    assert advance_rotations(now=t0 + timedelta(seconds=3599), resolver=resolver, grace=GRACE) == []
    assert _selectors(_submit(smtp, "still waiting")) == ["default", "default-rsa"]

    # One TTL after they became visible, signing moves to the new keys.
    switch = t0 + timedelta(seconds=3600)
    assert advance_rotations(now=switch, resolver=resolver, grace=GRACE) == [
        f"DKIM key rotation of example.com: signing with {day} and {day}-rsa; default and default-rsa "
        "stay published for the grace period"
    ]
    after = _submit(smtp, "after the switch")
    assert _selectors(after) == [day, f"{day}-rsa"]
    # The new signatures verify against the hosted zone (dkimpy; RSA also with Perl's Mail::DKIM).
    assert _verifies(after, hosted) == [True, True]
    assert hosted.mail_dkim_verdicts(after)[1] == f"rsa-sha256 {day}-rsa pass"
    # Mail signed before the switch still verifies during the grace period.
    assert _verifies(before, hosted) == [True, True]
    text = domain_path(settings.DATA_DIR, "example.com").read_text()
    assert f'selector = "{day}"\n' in text.split("[outbound.dkim.rotation]")[0]
    assert '[outbound.dkim.rotation]\nstate = "retiring"\nselector = "default"\n' in text

    assert advance_rotations(now=switch + GRACE - timedelta(seconds=1), resolver=resolver, grace=GRACE) == []
    assert advance_rotations(now=switch + GRACE, resolver=resolver, grace=GRACE) == [
        "DKIM key rotation of example.com done: old selectors default and default-rsa withdrawn"
    ]
    assert not DkimRotation.objects.exists()
    assert "[outbound.dkim.rotation]" not in domain_path(settings.DATA_DIR, "example.com").read_text()
    for selector in ("default", "default-rsa"):
        response = hosted.udp(f"{selector}._domainkey.example.com", "TXT")
        assert response.rcode() == dns.rcode.NXDOMAIN
    assert _verifies(_submit(smtp, "after the grace"), hosted) == [True, True]
    assert _verifies(before, hosted) == [False, False]


def test_no_switch_while_the_records_are_not_visible(smtp, hosted, settings):
    """The new records must be seen without a gap for their TTL: a lookup that fails starts
    the wait again, and nothing switches while the resolver does not return them."""
    t0 = timezone.now()
    rotation_start(name="example.com", now=t0)
    elsewhere = make_resolver("127.0.0.1:9")  # nobody answers there
    elsewhere.lifetime = 0.5
    resolver = make_resolver(settings.EVERLOCK_RESOLVER)
    assert advance_rotations(now=t0, resolver=elsewhere, grace=GRACE) == []
    assert advance_rotations(now=t0 + timedelta(days=1), resolver=elsewhere, grace=GRACE) == []
    assert rotation_state(get_domain("example.com")).endswith("not yet visible through the resolver")
    assert len(advance_rotations(now=t0, resolver=resolver, grace=GRACE)) == 1
    assert advance_rotations(now=t0 + timedelta(seconds=1800), resolver=elsewhere, grace=GRACE) == [
        "DKIM key rotation of example.com: the new records are no longer visible; waiting again"
    ]
    later = t0 + timedelta(seconds=3000)
    assert len(advance_rotations(now=later, resolver=resolver, grace=GRACE)) == 1
    assert advance_rotations(now=t0 + timedelta(seconds=3600), resolver=resolver, grace=GRACE) == []
    assert _selectors(_submit(smtp, "not yet")) == ["default", "default-rsa"]
    assert len(advance_rotations(now=later + timedelta(seconds=3600), resolver=resolver, grace=GRACE)) == 1
    assert _selectors(_submit(smtp, "now")) != ["default", "default-rsa"]


def test_refused_rotations_and_dkim_off(hosted):
    with pytest.raises(DomainError, match=r"no mail domain example\.org"):
        rotation_start(name="example.org", now=timezone.now())
    rotation_start(name="example.com", now=timezone.now())
    with pytest.raises(
        DomainError, match=r"a DKIM key rotation of example\.com is in progress: publishing new keys"
    ):
        rotation_start(name="example.com", now=timezone.now())
    # Turning DKIM off ends the rotation and withdraws every key record.
    domain_set(name="example.com", dkim_enabled=False)
    assert not DkimRotation.objects.exists()
    with pytest.raises(DomainError, match=r"DKIM is off for example\.com"):
        rotation_start(name="example.com", now=timezone.now())


def test_the_workers_timer_moves_rotations_on(hosted, settings):
    rotation_start(name="example.com", now=timezone.now())
    timer = Rescan(3600, sweep_interval=3600, orphan_age=86400, rotation_interval=0.1)
    timer.start()
    try:
        deadline = time.monotonic() + 20
        while DkimRotation.objects.get().visible_since is None:
            assert time.monotonic() < deadline, "the timer did not look the records up"
            time.sleep(0.1)
    finally:
        timer.stopped.set()
        timer.join(timeout=20)
