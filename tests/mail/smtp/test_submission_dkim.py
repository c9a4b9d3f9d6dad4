"""Submitted mail carries DKIM signatures (Ed25519 and RSA) that verify."""

import smtplib

import dkim
import pytest

from mail.dkim.keys import generate_ed25519_pem, generate_rsa_pem, txt_value
from mail.models import MailDomain, Message
from mail.services.storage import read_content


def test_submitted_message_is_signed_with_both_keys(smtp, example_com):
    ed_pem, rsa_pem = generate_ed25519_pem(), generate_rsa_pem()
    MailDomain.objects.filter(pk=example_com.pk).update(
        dkim_enabled=True, dkim_private_key_pem=ed_pem, dkim_rsa_private_key_pem=rsa_pem
    )
    with smtplib.SMTP("127.0.0.1", smtp.submission_port, timeout=10) as client:
        client.login("alice", "change-me")
        client.mail("alice@example.com")
        client.rcpt("bob@example.com")
        code, text = client.data(
            b"From: alice@example.com\r\nTo: bob@example.com\r\nSubject: Signed\r\n\r\nHello  Bob \r\n\r\n"
        )
    assert (code, text) == (250, b"2.0.0 Accepted")
    raw = read_content(Message.objects.get(folder__name="inbox").content)
    assert raw.startswith(b"DKIM-Signature: v=1; a=ed25519-sha256;")
    assert raw.count(b"DKIM-Signature:") == 2
    records = {
        b"default._domainkey.example.com.": txt_value(ed_pem).encode(),
        b"default-rsa._domainkey.example.com.": txt_value(rsa_pem).encode(),
    }

    def dnsfunc(name, timeout=5):
        return records.get(name if name.endswith(b".") else name + b".")

    verifier = dkim.DKIM(raw)
    assert verifier.verify(idx=0, dnsfunc=dnsfunc) is True
    assert verifier.verify(idx=1, dnsfunc=dnsfunc) is True
    # The first signature covers what an attacker would change.
    with pytest.raises(dkim.ValidationError, match="body hash mismatch"):
        dkim.DKIM(raw.replace(b"Hello  Bob", b"Hello Eve")).verify(idx=0, dnsfunc=dnsfunc)
