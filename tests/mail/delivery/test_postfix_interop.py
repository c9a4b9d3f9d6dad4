"""Interoperability with Postfix, both directions: Debian's Postfix as a private instance on
loopback (tests/postfix.py) relays into Everlock's inbound listener, and Everlock's queue
delivers to it. Postfix logs every command it sends and receives (debug_peer_list): the
transcripts show PIPELINING, CHUNKING, SMTPUTF8, DSN and STARTTLS in use."""

from __future__ import annotations

import re
import smtplib
from pathlib import Path

import pytest
from delivery_world import remote_for
from django.conf import settings as django_settings

from mail.delivery.attempts import claim
from mail.delivery.batch import deliver_claims
from mail.models import Message, OutboundDelivery
from mail.services.storage import read_content
from tests.mail.smtp.conftest import example_com, start_smtp, tls_context
from tests.postfix import running_postfix

__all__ = ["example_com", "start_smtp"]

SUBJECT = "Grüße aus Köln"
LONG_LINE = b"L" * 1500  # longer than RFC 5321's 1,000, within Postfix's 2,048


def _certificate() -> tuple[Path, Path]:
    tls = Path(django_settings.DATA_DIR) / "tls"  # the listeners' self-signed pair
    return tls / "cert.pem", tls / "key.pem"


def _transcript(log: str, direction: str = "[<>]") -> list[str]:
    """The SMTP lines Postfix logged as sent (">") or received ("<"), in order, without the
    peer; both directions (each line then starting with its "<" or ">") by default."""
    pattern = rf"\]: ({direction}) [^:]+\[127\.0\.0\.1\](?::\d+)?: (.*)"
    both = len(direction) > 1
    return [f"{m[1]} {m[2]}" if both else m[2] for m in re.finditer(pattern, log)]


def _accepted_by_everlock(log: str, recipient: str) -> bool:
    return (
        re.search(
            rf"to=<{re.escape(recipient)}>, relay=127\.0\.0\.1\[.*status=sent \(250 2\.0\.0 Accepted\)", log
        )
        is not None
    )


def test_postfix_relays_into_everlock(start_smtp, example_com):
    smtp = start_smtp()
    cert, key = _certificate()
    with running_postfix(
        cert=cert, key=key, transport={"example.com": f"[127.0.0.1]:{smtp.inbound_port}"}
    ) as pf:
        message = (
            f"From: Zoë <zoë@example.net>\r\nTo: bob@example.com\r\nSubject: {SUBJECT}\r\n\r\n".encode()
            + LONG_LINE
            + b"\r\nbody\r\n"
        )
        with smtplib.SMTP("127.0.0.1", pf.port, timeout=10) as client:
            client.ehlo("client.example.net")
            client.sendmail(
                "zoë@example.net",
                ["bob@example.com"],
                message,
                mail_options=["SMTPUTF8", "RET=HDRS", "ENVID=pf-1"],
                rcpt_options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;Bob@example.com"],
            )
        # Everlock answered 250 once the message was committed (read the log, not the
        # database, which the listener's thread is writing meanwhile).
        pf.wait_for(lambda: _accepted_by_everlock(pf.log(), "bob@example.com"), what="relay to Everlock")
        log = pf.log()
        sent = _transcript(log, ">")
        both = _transcript(log)
    stored = Message.objects.get()
    assert (stored.folder.mailbox.address, stored.subject) == ("bob@example.com", SUBJECT)
    assert stored.envelope_from == "zoë@example.net"
    raw = read_content(stored.content)
    # Postfix added its Received, Message-Id and Date; the rest arrives byte for byte.
    assert raw.endswith(b"\r\n\r\n" + LONG_LINE + b"\r\nbody\r\n")
    assert f"\r\nSubject: {SUBJECT}\r\n".encode() in raw
    assert b"\tby mx.example.com (Everlock) with UTF8SMTPS\r\n" in raw
    # What Postfix sent: STARTTLS, then MAIL, RCPT and DATA in one go (before any reply) with
    # the DSN and SMTPUTF8 parameters. Postfix's client has no BDAT (its smtpd has CHUNKING):
    # the other direction shows CHUNKING.
    assert "STARTTLS" in sent
    assert "Untrusted TLS connection established to 127.0.0.1" in log
    assert "Using ESMTP PIPELINING" in log
    start = both.index("> DATA") - 2
    assert re.fullmatch(r"> MAIL FROM:<zoë@example.net> SIZE=\d+ ENVID=pf-1 RET=HDRS SMTPUTF8", both[start])
    assert both[start + 1 : start + 6] == [
        "> RCPT TO:<bob@example.com> ORCPT=rfc822;Bob@example.com NOTIFY=SUCCESS,FAILURE",
        "> DATA",
        "< 250 2.1.0 Sender OK",
        "< 250 2.1.5 Recipient OK",
        "< 354 End data with <CR><LF>.<CR><LF>",
    ]
    # NOTIFY=SUCCESS: Everlock reports the delivery itself, queued for the sender.
    dsn = OutboundDelivery.objects.get()
    assert (dsn.envelope_from, dsn.domain) == ("", "example.net")
    report = read_content(dsn.content)
    assert b"Action: delivered" in report and b"Original-Envelope-Id: pf-1" in report
    assert b"Original-Recipient: rfc822; Bob@example.com" in report


def test_everlock_delivers_to_postfix_and_gets_its_dsn_back(start_smtp, example_com, dns_server):
    smtp = start_smtp()
    cert, key = _certificate()
    dns_server.zone.add("example.net", "MX", "10 mx.example.net.")
    dns_server.zone.add("mx.example.net", "A", "127.0.0.1")
    with running_postfix(
        cert=cert, key=key, transport={"example.com": f"[127.0.0.1]:{smtp.inbound_port}"}
    ) as pf:
        message = (
            f"From: alice@example.com\r\nTo: dave@example.net\r\nSubject: {SUBJECT}\r\n\r\n".encode()
            + LONG_LINE
            + b"\r\n"
        )
        with smtplib.SMTP("127.0.0.1", smtp.submission_port, timeout=10) as client:
            client.starttls(context=tls_context())
            client.login("alice", "change-me")
            client.sendmail(
                "alice@example.com",
                ["dave@example.net"],
                message,
                mail_options=["RET=HDRS", "ENVID=ev-2"],
                rcpt_options=["NOTIFY=SUCCESS", "ORCPT=rfc822;Dave@example.net"],
            )
        row = OutboundDelivery.objects.get()
        deliver_claims(claim(ids=[row.id]), remote=remote_for(dns_server, pf.port))
        pf.wait_for(lambda: pf.delivered(), what="delivery to the Maildir")
        # Postfix's success DSN comes back to alice through Everlock's inbound listener.
        pf.wait_for(lambda: _accepted_by_everlock(pf.log(), "alice@example.com"), what="DSN to Everlock")
        log = pf.log()
        received = _transcript(log, "<")
        delivered = pf.delivered()
    row.refresh_from_db()
    assert (row.status, row.last_reply[:3]) == ("delivered", "250")
    assert len(delivered) == 1
    assert SUBJECT.encode() in delivered[0] and LONG_LINE in delivered[0]
    # What Postfix received from Everlock.
    assert "STARTTLS" in received
    assert "Anonymous TLS connection established from localhost[127.0.0.1]" in log
    mail = next(line for line in received if line.startswith("MAIL FROM:<alice@example.com>"))
    assert re.fullmatch(
        r"MAIL FROM:<alice@example.com> SIZE=\d+ BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=ev-2", mail
    ), mail
    assert "RCPT TO:<dave@example.net> NOTIFY=SUCCESS ORCPT=rfc822;Dave@example.net" in received
    assert any(re.fullmatch(r"BDAT \d+ LAST", line) for line in received), received
    inbox = Message.objects.filter(folder__mailbox__local_part="alice", folder__name="inbox")
    report = read_content(inbox.get().content)
    assert b"Action: delivered" in report
    assert b"Original-Envelope-Id: ev-2" in report
    assert b"Original-Recipient: rfc822;Dave@example.net" in report


pytestmark = pytest.mark.django_db(transaction=True)
