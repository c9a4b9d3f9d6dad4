"""A mailbox over its quota: inbound RCPT answers 452 4.2.2, other recipients still get the
message, and nothing accepted is lost."""

import smtplib

from mail.models import Mailbox, Message

MESSAGE = b"From: carol@example.net\r\nSubject: Hi\r\n\r\n" + (b"x" * 70 + b"\r\n") * 40


def test_rcpt_to_a_full_mailbox_is_deferred(smtp, example_com):
    Mailbox.objects.filter(local_part="bob").update(quota=2048)
    with smtplib.SMTP("127.0.0.1", smtp.inbound_port, timeout=10) as client:
        # Below the quota: accepted, even though it ends above it.
        assert client.sendmail("carol@example.net", ["bob@example.com"], MESSAGE) == {}
        client.ehlo("mx.example.net")
        client.mail("carol@example.net")
        assert client.rcpt("bob@example.com") == (452, b"4.2.2 Mailbox full")
        assert client.rcpt("alice@example.com") == (250, b"2.1.5 Recipient OK")
        assert client.data(MESSAGE)[0] == 250
    assert sorted(m.envelope_to for m in Message.objects.all()) == ["alice@example.com", "bob@example.com"]
    # Again, with the recipient remembered by the listener: still measured against the quota.
    with smtplib.SMTP("127.0.0.1", smtp.inbound_port, timeout=10) as client:
        client.ehlo("mx.example.net")
        client.mail("carol@example.net")
        assert client.rcpt("bob@example.com") == (452, b"4.2.2 Mailbox full")
    assert Message.objects.filter(envelope_to="bob@example.com").count() == 1
