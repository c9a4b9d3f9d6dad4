"""Forwarding without backscatter: a rule redirect to another server gets an SRS envelope
sender (or the null sender when the original sender passed neither SPF nor DMARC), and a
bounce that comes back to the SRS address is sent on once, to the original sender."""

from __future__ import annotations

import smtplib

import dkim

from mail.auth import srs
from mail.models import OutboundDelivery
from mail.services.rules import set_rules
from mail.services.storage import read_content
from tests.mail.auth.conftest import letter, send, signed

REDIRECT = """
[[rule]]
name = "away"
scope = "bob@example.com"
redirect = ["dave@example.net"]
"""


def bounce(server, address: str, *, sender: str = "<>") -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", server.inbound_port, timeout=30) as client:
        client.ehlo("mx.corpus.test")
        client.docmd(f"MAIL FROM:{sender}")
        code, text = client.docmd(f"RCPT TO:<{address}>")
        if code != 250:
            return code, text
        return client.data(
            b"From: MAILER-DAEMON@mx.corpus.test\r\nTo: " + address.encode() + b"\r\n"
            b"Subject: Undelivered Mail Returned to Sender\r\n\r\nThe mail could not be delivered.\r\n"
        )


def test_redirect_of_a_verified_sender_uses_srs_and_its_bounce_goes_back(checked_smtp, corpus_dns):
    set_rules(text=REDIRECT)
    raw = signed(letter("corpus.test"), corpus_dns, "corpus.test")
    assert send(checked_smtp, raw, mail_from="carol@corpus.test") == (250, b"2.0.0 Accepted")
    row = OutboundDelivery.objects.get(domain="example.net")
    assert row.envelope_from.startswith("SRS0=") and row.envelope_from.endswith(
        "=corpus.test=carol@example.com"
    )
    assert srs.reverse(row.envelope_from) == "carol@corpus.test"
    # The message is sent on as received (a loop-detection field prepended): signatures hold.
    sent_on = read_content(row.content)
    assert [dkim.DKIM(sent_on).verify(idx=i, dnsfunc=corpus_dns.server.dnsfunc) for i in (0, 1)] == [
        True,
        True,
    ]

    assert bounce(checked_smtp, row.envelope_from) == (250, b"2.0.0 Accepted")
    back = OutboundDelivery.objects.get(domain="corpus.test")
    assert back.envelope_from == ""  # sent on once: nothing can bounce it again
    assert list(back.recipients.values_list("address", flat=True)) == ["carol@corpus.test"]
    assert b"Subject: Undelivered Mail Returned to Sender" in read_content(back.content)


def test_redirect_of_an_unverified_sender_has_the_null_sender(checked_smtp):
    set_rules(text=REDIRECT)
    reply = send(checked_smtp, letter("watch.test"), mail_from="carol@watch.test", source="127.0.0.2")
    assert reply == (250, b"2.0.0 Accepted")
    assert OutboundDelivery.objects.get(domain="example.net").envelope_from == ""


def test_srs_addresses_take_only_bounces_with_a_valid_hash(checked_smtp):
    address = srs.forward("carol@corpus.test", "example.com")
    assert bounce(checked_smtp, address, sender="<someone@corpus.test>") == (
        550,
        b"5.1.1 Mailbox unavailable",
    )
    forged = "SRS0=AAAA=" + address.split("=", 2)[2]
    assert bounce(checked_smtp, forged) == (550, b"5.1.1 Mailbox unavailable")
    assert bounce(checked_smtp, srs.forward("carol@corpus.test", "example.org")) == (
        554,
        b"5.7.1 Relaying denied",
    )
    assert not OutboundDelivery.objects.exists()
