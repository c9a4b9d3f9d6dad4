"""The SMTP listeners count each message they accept and each refusal, by listener, command
and reason, into the metrics every process shares (everlock_site.metrics)."""

from __future__ import annotations

import pytest
from django.conf import settings
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from mail.smtp.server import refusal_reason
from tests.mail.smtp.conftest import RawClient

MESSAGE = b"From: zoe@example.net\r\nSubject: counted\r\n\r\nHello.\r\n"


def counts() -> dict[tuple, float]:
    """{(sample, labels...): value} as a scrape sees them now."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(settings.EVERLOCK_METRICS_DIR))
    return {
        key(sample.name, **sample.labels): sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name.startswith("everlock_smtp_")
    }


def key(name: str, **labels: str) -> tuple:
    return (name, *sorted(labels.items()))


def changes(before: dict, after: dict) -> dict:
    return {key: after[key] - before.get(key, 0) for key in after if after[key] != before.get(key, 0)}


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"554 5.7.1 Relaying denied", "relay_denied"),
        (b"452 4.2.2 Mailbox full", "mailbox_full"),
        (b"501 5.5.4 Syntax: MAIL FROM: <address>", "5.5.4"),
        (b"554 Transaction failed", "554"),
    ],
)
def test_refusal_reason(line, reason):
    assert refusal_reason(line) == reason


def test_listeners_count_accepted_and_refused_messages(smtp, example_com):
    before = counts()
    client = RawClient(smtp.inbound_port)
    try:
        client.reply()
        client.cmd(b"EHLO client.example.net")
        assert client.cmd(b"MAIL FROM:<zoe@example.net>") == b"250 2.1.0 Sender OK"
        assert client.cmd(b"RCPT TO:<nobody@example.org>") == b"554 5.7.1 Relaying denied"
        assert client.cmd(b"DATA") == b"503 5.5.1 Need RCPT command"
        assert client.cmd(b"RCPT TO:<alice@example.com>") == b"250 2.1.5 Recipient OK"
        client.send(b"BDAT %d LAST\r\n" % len(MESSAGE) + MESSAGE)
        assert client.reply() == b"250 2.0.0 Accepted"
        assert client.cmd(b"MAIL FROM:<zoe@example.net>") == b"250 2.1.0 Sender OK"
        assert client.cmd(b"RCPT TO:<alice@example.com>") == b"250 2.1.5 Recipient OK"
        assert client.cmd(b"DATA").startswith(b"354 ")
        assert client.cmd(MESSAGE + b".") == b"250 2.0.0 Accepted"
        assert client.cmd(b"MAIL FROM:<zoe@example.net>") == b"250 2.1.0 Sender OK"
        assert client.cmd(b"RCPT TO:<alice@example.com>") == b"250 2.1.5 Recipient OK"
        client.send(b"BDAT 200000 LAST\r\n" + b"x" * 200_000)
        assert client.reply() == b"552 5.3.4 Message too big"
    finally:
        client.close()
    secure = RawClient(smtp.submissions_port, implicit_tls=True)
    try:
        secure.reply()
        secure.cmd(b"EHLO client.example.net")
        assert secure.cmd(b"MAIL FROM:<alice@example.com>") == b"530 5.7.0 Authentication required"
    finally:
        secure.close()
    refused = "everlock_smtp_messages_refused_total"
    assert changes(before, counts()) == {
        key("everlock_smtp_messages_accepted_total", listener="inbound"): 2,
        key(refused, listener="inbound", command="RCPT", reason="relay_denied"): 1,
        key(refused, listener="inbound", command="DATA", reason="5.5.1"): 1,
        key(refused, listener="inbound", command="BDAT", reason="message_too_big"): 1,
        key(refused, listener="submissions", command="MAIL", reason="auth_required"): 1,
    }
