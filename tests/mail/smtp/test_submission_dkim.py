"""Submitted mail carries DKIM signatures (Ed25519 and RSA) that verify against the keys
Everlock's own DNS server publishes: with dkimpy, and the RSA one with Perl's Mail::DKIM."""

import smtplib

import dkim
import pytest

from dns_zones.services import zone_create
from mail.models import Message
from mail.services.domains import domain_set
from mail.services.storage import read_content
from tests.dns_server import RunningDNS


@pytest.fixture
def dns_server(example_com, settings, tmp_path):
    settings.EVERLOCK_DNS = True
    settings.DATA_DIR = tmp_path
    zone_create(origin="example.com")
    domain_set(name="example.com", dkim_enabled=True)
    server = RunningDNS()
    yield server
    server.stop()


def test_submitted_message_is_signed_with_both_keys(smtp, dns_server):
    with smtplib.SMTP("127.0.0.1", smtp.submission_port, timeout=10) as client:
        client.login("alice", "change-me")
        client.mail("alice@example.com")
        client.rcpt("bob@example.com")
        code, text = client.data(
            b"From: alice@example.com\r\nTo: bob@example.com\r\nSubject: Signed\r\n\r\nHello  Bob \r\n\r\n"
        )
    assert (code, text) == (250, b"2.0.0 Accepted")
    raw = read_content(Message.objects.get(folder__name="inbox").content)
    # Our Received field first (trace fields stay on top), then the signatures.
    assert raw.startswith(b"Received: from [127.0.0.1] ([127.0.0.1])\r\n")
    assert raw.split(b"\r\n", 3)[3].startswith(b"DKIM-Signature: v=1; a=ed25519-sha256;")
    assert raw.count(b"DKIM-Signature:") == 2
    verifier = dkim.DKIM(raw)
    assert verifier.verify(idx=0, dnsfunc=dns_server.dnsfunc) is True
    assert verifier.verify(idx=1, dnsfunc=dns_server.dnsfunc) is True
    assert dns_server.mail_dkim_verdicts(raw) == [
        "ed25519-sha256 default invalid",  # Debian's Mail::DKIM has no Ed25519 (RFC 8463)
        "rsa-sha256 default-rsa pass",
    ]
    # The signatures cover what an attacker would change.
    with pytest.raises(dkim.ValidationError, match="body hash mismatch"):
        dkim.DKIM(raw.replace(b"Hello  Bob", b"Hello Eve")).verify(idx=0, dnsfunc=dns_server.dnsfunc)
    assert (
        dns_server.mail_dkim_verdicts(raw.replace(b"Signed", b"Forged"))[1] == "rsa-sha256 default-rsa fail"
    )
