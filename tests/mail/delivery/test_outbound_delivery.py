"""Outbound delivery against local aiosmtpd servers standing in for remote MX hosts, with MX
records served by a local DNS server."""

from __future__ import annotations

import logging
import socket
import threading
from datetime import timedelta

import pytest
from delivery_world import queue_message, remote_for
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.utils import timezone

from mail.addresses import AddressError
from mail.delivery.attempts import backoff, claim
from mail.delivery.batch import deliver_claims
from mail.delivery.client import Connection, SendOptions
from mail.delivery.mx import LookupFailed, lookup
from mail.delivery.resolver import make_resolver
from mail.delivery.tasks import source_addresses
from mail.models import Message, OutboundDelivery, OutboundRecipient
from mail.services.enqueue import QUEUE_LIFETIME
from mail.services.storage import read_content
from mail.smtp.extensions import EnvelopeParams, MailParams, RcptParams

RAW = (
    b"From: alice@example.com\r\nTo: bob@example.net\r\nSubject: hello\r\n"
    b"Message-Id: <m1@example.com>\r\n\r\nHello Bob.\r\n.leading dot\r\n"
)


def run(rows, dns, port):
    deliver_claims(claim(ids=[r.id for r in rows]), remote=remote_for(dns, port))


def inbox_dsns():
    return [
        read_content(m.content)
        for m in Message.objects.filter(folder__name="inbox", folder__mailbox__local_part="alice")
    ]


def mx_to(dns, *pairs):
    for pref, host, address in pairs:
        dns.zone.add("example.net", "MX", f"{pref} {host}.")
        dns.zone.add(host, "A", address)


def test_success_one_transaction_for_the_domain(sender, dns_server, sink, caplog):
    caplog.set_level(logging.INFO, logger="mail.delivery")
    remote = sink()
    mx_to(dns_server, (10, "mx.example.net", "127.0.0.1"))
    rows = queue_message(["bob@example.net", "Carol@example.net", "bob@example.net"], raw=RAW)
    assert len(rows) == 1
    run(rows, dns_server, remote.port)
    assert len(remote.received) == 1
    got = remote.received[0]
    assert got.mail_from == "alice@example.com"
    assert got.rcpt_tos == ["bob@example.net", "Carol@example.net"]
    # Dot-stuffed on the wire, unstuffed by the receiver: the bytes arrive unchanged.
    assert got.data == RAW
    assert got.helo == "out.example.com"
    assert got.tls is False
    row = OutboundDelivery.objects.get()
    assert (row.status, row.attempts) == ("delivered", 1)
    assert row.last_reply == "250 2.0.0 queued"
    assert list(row.recipients.values_list("status", flat=True)) == ["delivered", "delivered"]
    assert f"delivery #{row.id} to example.net: 2 of 2 recipients accepted by mx.example.net" in caplog.text
    assert inbox_dsns() == []


def test_each_delivery_is_recorded_before_the_next_one_starts(sender, dns_server, sink):
    # A worker killed while sending sends again only the message it was sending: every one
    # delivered before it is already recorded when the remote gets the next one.
    remote = sink()

    def delivered_so_far():
        try:
            return OutboundRecipient.objects.filter(status=OutboundRecipient.Status.DELIVERED).count()
        finally:
            connection.close()  # this thread's own connection

    remote.handler.observe = delivered_so_far
    mx_to(dns_server, (10, "mx.example.net", "127.0.0.1"))
    rows = [row for n in range(5) for row in queue_message([f"user{n}@example.net"], raw=RAW)]
    run(rows, dns_server, remote.port)
    assert remote.handler.connections == 1
    assert remote.handler.observed == [0, 1, 2, 3, 4]
    assert OutboundRecipient.objects.filter(status=OutboundRecipient.Status.DELIVERED).count() == 5


def test_a_row_claimed_again_meanwhile_is_left_to_that_claim(sender, dns_server, sink, caplog):
    # A worker's batch outlasts the backoff: its last row is due again and a second worker
    # claims it. The first worker must not send it as well.
    caplog.set_level(logging.INFO, logger="mail.delivery")
    remote = sink()
    mx_to(dns_server, (10, "mx.example.net", "127.0.0.1"))
    first, second = (queue_message([f"user{n}@example.net"], raw=RAW)[0] for n in range(2))
    slow_batch = claim(ids=[first.id, second.id])
    OutboundDelivery.objects.filter(id=second.id).update(next_attempt_at=timezone.now())
    [again] = claim(ids=[second.id])
    deliver_claims(slow_batch, remote=remote_for(dns_server, remote.port))
    assert [r.rcpt_tos for r in remote.received] == [["user0@example.net"]]
    assert f"delivery #{second.id} was claimed again meanwhile: left to that attempt" in caplog.messages
    deliver_claims([again], remote=remote_for(dns_server, remote.port))
    assert [r.rcpt_tos for r in remote.received] == [["user0@example.net"], ["user1@example.net"]]
    assert list(OutboundDelivery.objects.values_list("status", "attempts")) == [
        ("delivered", 1),
        ("delivered", 2),
    ]


def test_rows_per_domain(sender, dns_server, sink):
    rows = queue_message(["a@example.net", "b@example.org", "c@EXAMPLE.net"])
    assert sorted((r.domain, [x.address for x in r.recipients.all()]) for r in rows) == [
        ("example.net", ["a@example.net", "c@example.net"]),
        ("example.org", ["b@example.org"]),
    ]
    row = rows[0]
    assert row.status == "queued" and row.attempts == 0
    assert row.expires_at - row.next_attempt_at == timedelta(days=5)


def test_crlf_in_an_address_cannot_be_queued(sender):
    with pytest.raises(AddressError):
        queue_message(["bob@example.net\r\nRCPT TO:<x@example.org>"])
    assert OutboundDelivery.objects.count() == 0


def test_crlf_in_an_address_is_never_sent(dns_server, sink):
    remote = sink()
    conn = Connection(
        host="mx.example.net",
        address="127.0.0.1",
        port=remote.port,
        helo_hostname="out.example.com",
        tls_verify=False,
    )
    replies = conn.send(envelope_from="a@example.com", recipients=["b@example.net\r\nDATA"], data=RAW)
    conn.close()
    assert replies == {"b@example.net\r\nDATA": (553, "5.1.3 invalid address")}
    assert remote.received == []


def test_4xx_then_success(sender, dns_server, sink, caplog):
    caplog.set_level(logging.INFO, logger="mail.delivery")
    remote = sink()
    remote.handler.data_replies = ["451 4.7.1 greylisted, try later"]
    mx_to(dns_server, (10, "mx.example.net", "127.0.0.1"))
    rows = queue_message(["bob@example.net"])
    before = timezone.now()
    run(rows, dns_server, remote.port)
    row = OutboundDelivery.objects.get()
    assert (row.status, row.attempts, row.last_reply) == ("queued", 1, "451 4.7.1 greylisted, try later")
    assert before + backoff(1) <= row.next_attempt_at <= timezone.now() + backoff(1)
    assert "replied to bob@example.net: 451 4.7.1 greylisted, try later" in caplog.text
    # Not due yet: nothing is claimed; at the next attempt time it is.
    assert claim(ids=[row.id]) == []
    assert claim(ids=[row.id], now=row.next_attempt_at - timedelta(seconds=1)) == []
    deliver_claims(claim(ids=[row.id], now=row.next_attempt_at), remote=remote_for(dns_server, remote.port))
    row.refresh_from_db()
    assert (row.status, row.attempts) == ("delivered", 2)
    assert len(remote.received) == 1
    assert inbox_dsns() == []


def test_a_row_with_a_recipient_failed_earlier_ends_failed(sender, dns_server, sink):
    remote = sink()
    remote.handler.rcpt_replies = {
        "nobody@example.net": "550 5.1.1 no such user",
        "busy@example.net": "450 4.2.1 busy",
    }
    mx_to(dns_server, (10, "mx.example.net", "127.0.0.1"))
    rows = queue_message(["nobody@example.net", "busy@example.net"])
    run(rows, dns_server, remote.port)
    assert OutboundDelivery.objects.get().status == "queued"
    remote.handler.rcpt_replies = {}
    OutboundDelivery.objects.update(next_attempt_at=timezone.now())
    run(rows, dns_server, remote.port)
    row = OutboundDelivery.objects.get()
    assert (row.status, row.attempts) == ("failed", 2)
    assert dict(row.recipients.values_list("address", "status")) == {
        "nobody@example.net": "failed",
        "busy@example.net": "delivered",
    }
    assert [r.rcpt_tos for r in remote.received] == [["busy@example.net"]]
    assert len(inbox_dsns()) == 1  # for nobody, after the first attempt


def test_backoff_schedule():
    assert [backoff(n) for n in range(1, 9)] == [
        timedelta(minutes=5),
        timedelta(minutes=10),
        timedelta(minutes=20),
        timedelta(minutes=40),
        timedelta(minutes=80),
        timedelta(minutes=160),
        timedelta(hours=4),
        timedelta(hours=4),
    ]


def test_5xx_bounces_to_the_sender_inbox(sender, dns_server, sink, caplog):
    caplog.set_level(logging.INFO, logger="mail.delivery")
    remote = sink()
    remote.handler.rcpt_replies = {"nobody@example.net": "550 5.1.1 no such user"}
    mx_to(dns_server, (10, "mx.example.net", "127.0.0.1"))
    rows = queue_message(["bob@example.net", "nobody@example.net"], raw=RAW)
    run(rows, dns_server, remote.port)
    assert [r.rcpt_tos for r in remote.received] == [["bob@example.net"]]
    row = OutboundDelivery.objects.get()
    assert row.status == "failed"
    assert dict(row.recipients.values_list("address", "status")) == {
        "bob@example.net": "delivered",
        "nobody@example.net": "failed",
    }
    assert OutboundRecipient.objects.get(address="nobody@example.net").reply == "550 5.1.1 no such user"
    [dsn] = inbox_dsns()
    assert dsn.startswith(b"Return-Path: <>\r\n")
    assert b"Content-Type: multipart/report; report-type=delivery-status" in dsn
    assert b"To: <alice@example.com>\r\n" in dsn
    assert b"Final-Recipient: rfc822; nobody@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n" in dsn
    assert b"Remote-MTA: dns; mx.example.net\r\nDiagnostic-Code: smtp; 550 5.1.1 no such user\r\n" in dsn
    assert b"bob@example.net" not in dsn.split(b"message/delivery-status")[1].split(b"rfc822-headers")[0]
    assert b"Content-Type: text/rfc822-headers\r\n\r\nFrom: alice@example.com\r\n" in dsn
    assert b"Hello Bob." not in dsn
    message = Message.objects.get(folder__name="inbox")
    assert message.envelope_from == ""
    assert message.subject == "Undelivered Mail Returned to Sender"
    assert "replied to nobody@example.net: 550 5.1.1 no such user" in caplog.text


def test_5xx_on_data_bounces_every_recipient(sender, dns_server, sink):
    remote = sink()
    remote.handler.data_replies = ["554 5.7.1 spam"]
    mx_to(dns_server, (10, "mx.example.net", "127.0.0.1"))
    run(queue_message(["bob@example.net", "carol@example.net"]), dns_server, remote.port)
    assert OutboundDelivery.objects.get().status == "failed"
    [dsn] = inbox_dsns()
    assert dsn.count(b"Diagnostic-Code: smtp; 554 5.7.1 spam") == 2


def test_no_bounce_to_a_null_sender(sender, dns_server, sink):
    remote = sink()
    remote.handler.rcpt_replies = {"bob@example.net": "550 5.1.1 no such user"}
    mx_to(dns_server, (10, "mx.example.net", "127.0.0.1"))
    run(queue_message(["bob@example.net"], envelope_from=""), dns_server, remote.port)
    assert OutboundDelivery.objects.get().status == "failed"
    assert Message.objects.count() == 0
    assert OutboundDelivery.objects.count() == 1


def test_a_redirect_never_bounces_to_a_remote_sender(sender, dns_server, sink, caplog):
    # A rule redirect queues with bounce_outside off: its sender came from outside, maybe forged.
    caplog.set_level(logging.INFO, logger="mail.delivery")
    remote = sink()
    remote.handler.rcpt_replies = {"bob@example.net": "550 5.1.1 no such user"}
    mx_to(dns_server, (10, "mx.example.net", "127.0.0.1"))
    rows = queue_message(["bob@example.net"], envelope_from="victim@example.net", bounce_outside=False)
    run(rows, dns_server, remote.port)
    assert OutboundDelivery.objects.get().status == "failed"
    assert OutboundDelivery.objects.count() == 1  # no DSN queued
    assert (
        "DSN of a redirected message not sent to the remote sender victim@example.net (backscatter)"
        in caplog.messages
    )
    assert (
        f"delivery #{rows[0].id} to example.net failed for bob@example.net; DSN not sent" in caplog.messages
    )


def test_a_redirect_still_bounces_to_a_local_sender(sender, dns_server, sink):
    remote = sink()
    remote.handler.rcpt_replies = {"bob@example.net": "550 5.1.1 no such user"}
    mx_to(dns_server, (10, "mx.example.net", "127.0.0.1"))
    run(queue_message(["bob@example.net"], bounce_outside=False), dns_server, remote.port)
    [dsn] = inbox_dsns()
    assert b"Final-Recipient: rfc822; bob@example.net\r\nAction: failed\r\n" in dsn


def test_a_remote_sender_gets_the_bounce_of_its_own_message(sender, dns_server, sink):
    remote = sink()
    remote.handler.rcpt_replies = {"bob@example.net": "550 5.1.1 no such user"}
    mx_to(dns_server, (10, "mx.example.net", "127.0.0.1"))
    run(queue_message(["bob@example.net"], envelope_from="carol@example.org"), dns_server, remote.port)
    dsn_row = OutboundDelivery.objects.exclude(domain="example.net").get()
    assert (dsn_row.domain, dsn_row.envelope_from) == ("example.org", "")


def test_expiry_bounces(sender, dns_server, sink, caplog):
    caplog.set_level(logging.INFO, logger="mail.delivery")
    remote = sink()
    remote.handler.data_replies = ["452 4.2.2 mailbox full"] * 3
    mx_to(dns_server, (10, "mx.example.net", "127.0.0.1"))
    # Queued almost QUEUE_LIFETIME ago: the next retry would fall after expiry.
    rows = queue_message(["bob@example.net"], now=timezone.now() - QUEUE_LIFETIME + timedelta(minutes=1))
    run(rows, dns_server, remote.port)
    row = OutboundDelivery.objects.get()
    assert (row.status, row.attempts) == ("failed", 1)
    assert row.last_reply == "message expired after 1 attempts; last reply: 452 4.2.2 mailbox full"
    [dsn] = inbox_dsns()
    assert b"Action: failed\r\nStatus: 4.2.2\r\n" in dsn
    assert b"Diagnostic-Code: smtp; 452 4.2.2 mailbox full" in dsn
    assert f"delivery #{row.id} to example.net expired" in caplog.text
    assert remote.received == []


def test_null_mx_bounces_without_dialling(sender, dns_server, sink, caplog):
    caplog.set_level(logging.INFO, logger="mail.delivery")
    remote = sink()
    dns_server.zone.add("example.net", "MX", "0 .")
    dns_server.zone.add("example.net", "A", "127.0.0.1")
    run(queue_message(["bob@example.net"]), dns_server, remote.port)
    row = OutboundDelivery.objects.get()
    assert row.status == "failed"
    assert remote.handler.connections == 0
    [dsn] = inbox_dsns()
    assert b"Diagnostic-Code: smtp; 550 5.1.2 example.net: null MX, the domain accepts no mail" in dsn
    assert "MX lookup for example.net failed: example.net: null MX" in caplog.text


def test_nxdomain_bounces(sender, dns_server, sink):
    run(queue_message(["bob@example.net"]), dns_server, 9)
    assert OutboundDelivery.objects.get().status == "failed"
    [dsn] = inbox_dsns()
    assert b"550 5.1.2 example.net: no such domain (NXDOMAIN)" in dsn


def test_servfail_retries(sender, dns_server, sink, caplog):
    caplog.set_level(logging.INFO, logger="mail.delivery")
    dns_server.zone.add("example.net", "MX", "10 mx.example.net.")
    dns_server.zone.servfail.add("example.net.")
    run(queue_message(["bob@example.net"]), dns_server, 9)
    row = OutboundDelivery.objects.get()
    assert (row.status, row.attempts) == ("queued", 1)
    assert row.last_reply.startswith("451 4.4.3 example.net MX: NoNameservers")
    assert "MX lookup for example.net failed: example.net MX: NoNameservers" in caplog.text
    assert inbox_dsns() == []


def test_no_mx_uses_the_domain_address(sender, dns_server, sink):
    remote = sink()
    dns_server.zone.add("example.net", "A", "127.0.0.1")
    run(queue_message(["bob@example.net"]), dns_server, remote.port)
    assert OutboundDelivery.objects.get().status == "delivered"
    assert [r.rcpt_tos for r in remote.received] == [["bob@example.net"]]


def test_several_mx_first_down(sender, dns_server, sink, caplog):
    caplog.set_level(logging.INFO, logger="mail.delivery")
    remote = sink()
    # The preferred host is 127.0.0.2 on the same port, where nothing listens.
    mx_to(dns_server, (10, "mx1.example.net", "127.0.0.2"), (20, "mx2.example.net", "127.0.0.1"))
    run(queue_message(["bob@example.net"]), dns_server, remote.port)
    row = OutboundDelivery.objects.get()
    assert (row.status, row.attempts) == ("delivered", 1)
    assert len(remote.received) == 1
    assert f"connect to mx1.example.net failed: mx1.example.net [127.0.0.2]:{remote.port}" in caplog.text
    assert "accepted by mx2.example.net" in caplog.text


def test_connections_leave_from_the_configured_source_address(sender, dns_server, sink):
    remote = sink()
    mx_to(dns_server, (10, "mx.example.net", "127.0.0.1"))
    rows = queue_message(["bob@example.net"])
    # An IPv6 source is ignored for an IPv4 destination.
    dial = remote_for(dns_server, remote.port, source_addresses=("::1", "127.0.0.3"))
    deliver_claims(claim(ids=[r.id for r in rows]), remote=dial)
    assert OutboundDelivery.objects.get().status == "delivered"
    assert [r.peer for r in remote.received] == ["127.0.0.3"]


def test_source_addresses_setting_is_checked():
    assert source_addresses(["192.0.2.25", " 2001:db8::25 "]) == ("192.0.2.25", "2001:db8::25")
    assert source_addresses([]) == ()
    with pytest.raises(ImproperlyConfigured, match="does not appear to be an IPv4 or IPv6 address"):
        source_addresses(["mail.example.com"])
    with pytest.raises(ImproperlyConfigured, match="at most one IPv4 and one IPv6 address"):
        source_addresses(["192.0.2.25", "192.0.2.26"])


def test_each_address_of_a_host_in_turn(sender, dns_server, sink):
    remote = sink()
    dns_server.zone.add("example.net", "MX", "10 mx.example.net.")
    dns_server.zone.add("mx.example.net", "A", "127.0.0.2", "127.0.0.1")
    run(queue_message(["bob@example.net"]), dns_server, remote.port)
    assert OutboundDelivery.objects.get().status == "delivered"


def test_all_hosts_down_retries(sender, dns_server, sink, caplog):
    caplog.set_level(logging.INFO, logger="mail.delivery")
    remote = sink()
    mx_to(dns_server, (10, "mx1.example.net", "127.0.0.2"))
    rows = queue_message(["bob@example.net"]) + queue_message(["carol@example.net"])
    run(rows, dns_server, remote.port)
    assert list(OutboundDelivery.objects.values_list("status", "attempts")) == [("queued", 1), ("queued", 1)]
    row = OutboundDelivery.objects.first()
    assert row.last_reply.startswith(f"451 4.4.1 mx1.example.net [127.0.0.2]:{remote.port}: ")
    assert OutboundRecipient.objects.get(address="bob@example.net").reply == row.last_reply
    # One dial for both rows: the second waits without dialling the dead host again.
    assert caplog.text.count("connect to mx1.example.net failed") == 1


def test_starttls_offered(sender, dns_server, sink):
    remote = sink(tls=True)
    mx_to(dns_server, (10, "mx.example.net", "127.0.0.1"))
    run(queue_message(["bob@example.net"], raw=RAW), dns_server, remote.port)
    assert [(r.tls, r.data) for r in remote.received] == [(True, RAW)]


def test_starttls_verification_fails_for_a_self_signed_host(sender, dns_server, sink):
    remote = sink(tls=True)
    mx_to(dns_server, (10, "mx.example.net", "127.0.0.1"))
    rows = queue_message(["bob@example.net"])
    r = remote_for(dns_server, remote.port)
    deliver_claims(
        claim(ids=[x.id for x in rows]), remote=type(r)(resolver=r.resolver, port=r.port, tls_verify=True)
    )
    row = OutboundDelivery.objects.get()
    assert (row.status, remote.received) == ("queued", [])
    assert row.last_reply == "451 4.4.1 mx.example.net [127.0.0.1]: certificate: self-signed certificate"


def test_one_connection_per_destination_for_a_batch(sender, dns_server, sink):
    remote = sink()
    mx_to(dns_server, (10, "mx.example.net", "127.0.0.1"))
    rows = []
    for n in range(5):
        rows += queue_message([f"user{n}@example.net"])
    run(rows, dns_server, remote.port)
    assert len(remote.received) == 5
    assert remote.handler.connections == 1
    assert set(OutboundDelivery.objects.values_list("status", flat=True)) == {"delivered"}


def test_mx_order_and_random_among_equal(dns_server):
    zone = dns_server.zone
    zone.add("example.net", "MX", "20 c.example.net.", "10 a.example.net.", "10 b.example.net.")
    for name in ("a", "b", "c"):
        zone.add(f"{name}.example.net", "A", "192.0.2.1")
    zone.add("c.example.net", "AAAA", "2001:db8::1")
    resolver = make_resolver(dns_server.spec, timeout=2, lifetime=4)
    orders = {tuple(h.name for h in lookup("example.net", resolver=resolver)) for _ in range(40)}
    assert orders == {
        ("a.example.net", "b.example.net", "c.example.net"),
        ("b.example.net", "a.example.net", "c.example.net"),
    }
    hosts = lookup("example.net", resolver=resolver)
    assert hosts[-1].addresses == ("192.0.2.1", "2001:db8::1")


def test_mx_truncated_udp_answer_retried_over_tcp(dns_server):
    dns_server.zone.add("example.net", "MX", "10 mx.example.net.")
    dns_server.zone.add("mx.example.net", "A", "192.0.2.7")
    dns_server.zone.truncate_udp.add("example.net.")
    hosts = lookup("example.net", resolver=make_resolver(dns_server.spec, timeout=2, lifetime=4))
    assert [(h.name, h.addresses) for h in hosts] == [("mx.example.net", ("192.0.2.7",))]
    assert ("udp", "example.net.", "MX") in dns_server.zone.queries
    assert ("tcp", "example.net.", "MX") in dns_server.zone.queries


def test_mx_lookup_failures(dns_server):
    zone = dns_server.zone
    resolver = make_resolver(dns_server.spec, timeout=1, lifetime=2)
    with pytest.raises(LookupFailed) as nx:
        lookup("example.net", resolver=resolver)
    assert (nx.value.permanent, str(nx.value)) == (True, "example.net: no such domain (NXDOMAIN)")
    zone.add("example.org", "MX", "10 gone.example.org.")
    with pytest.raises(LookupFailed) as gone:
        lookup("example.org", resolver=resolver)
    assert gone.value.permanent is True
    zone.add("example.test", "MX", "10 broken.example.test.")
    zone.add("broken.example.test", "A", "192.0.2.1")
    zone.servfail.add("broken.example.test.")
    with pytest.raises(LookupFailed) as broken:
        lookup("example.test", resolver=resolver)
    assert broken.value.permanent is False
    with pytest.raises(LookupFailed) as timeout:
        lookup("example.net", resolver=make_resolver("127.0.0.1:9", timeout=0.3, lifetime=0.6))
    assert timeout.value.permanent is False


def test_delay_notice_once(sender, dns_server, sink):
    remote = sink()
    remote.handler.data_replies = ["451 4.3.0 try later"] * 2
    mx_to(dns_server, (10, "mx.example.net", "127.0.0.1"))
    rows = queue_message(["bob@example.net"])
    OutboundDelivery.objects.update(created_at=timezone.now() - timedelta(hours=5))
    for _ in range(2):
        OutboundDelivery.objects.update(next_attempt_at=timezone.now())
        deliver_claims(
            claim(ids=[r.id for r in rows]),
            remote=remote_for(dns_server, remote.port),
            delay_notice_after=timedelta(hours=4),
        )
    row = OutboundDelivery.objects.get()
    assert (row.status, row.attempts, row.delay_notified) == ("queued", 2, True)
    [notice] = inbox_dsns()
    assert b"Subject: Delivery delayed\r\n" in notice
    assert b"Final-Recipient: rfc822; bob@example.net\r\nAction: delayed\r\nStatus: 4.0.0\r\n" in notice
    assert b"Diagnostic-Code: smtp; 451 4.3.0 try later" in notice


def test_size_is_announced_so_a_smaller_peer_refuses_before_the_data(sender, dns_server, sink):
    # RFC 1870 section 6: SIZE= on MAIL; the peer refuses there, the message is never sent.
    remote = sink(size_limit=1000)
    mx_to(dns_server, (10, "mx.example.net", "127.0.0.1"))
    raw = RAW + b"x" * 2000 + b"\r\n"
    run(queue_message(["bob@example.net"], raw=raw), dns_server, remote.port)
    assert remote.received == []
    assert (
        OutboundRecipient.objects.get().reply == "552 Error: message size exceeds fixed maximum message size"
    )
    assert b"Action: failed" in inbox_dsns()[0]


def test_requiretls_bounces_without_verified_tls(sender, dns_server, sink):
    # RFC 8689 section 4.2: not sent over TLS we cannot verify, to a host without REQUIRETLS.
    remote = sink(tls=True)
    mx_to(dns_server, (10, "mx.example.net", "127.0.0.1"))
    params = EnvelopeParams(mail=MailParams(requiretls=True))
    run(queue_message(["bob@example.net"], raw=RAW, params=params), dns_server, remote.port)
    assert remote.received == []
    assert OutboundRecipient.objects.get().reply == "550 5.7.30 REQUIRETLS support required"
    assert b"Status: 5.7.30" in inbox_dsns()[0]


def test_notify_decides_which_dsns_are_sent(sender, dns_server, sink):
    # RFC 3461 section 4.1: NEVER gets no failure DSN; SUCCESS to a host without DSN gets
    # ours (Action: relayed), with the ENVID and ORCPT the sender gave.
    remote = sink()
    remote.handler.rcpt_replies["never@example.net"] = "550 5.1.1 no such user"
    mx_to(dns_server, (10, "mx.example.net", "127.0.0.1"))
    params = EnvelopeParams(
        mail=MailParams(envid="env 7"),
        recipients=(
            ("never@example.net", RcptParams(notify=frozenset({"NEVER"}))),
            ("bob@example.net", RcptParams(notify=frozenset({"SUCCESS"}), orcpt="rfc822;Bob@example.net")),
        ),
    )
    run(
        queue_message(["never@example.net", "bob@example.net"], raw=RAW, params=params),
        dns_server,
        remote.port,
    )
    assert [r.rcpt_tos for r in remote.received] == [["bob@example.net"]]
    [dsn] = inbox_dsns()
    for line in (
        b"Subject: Successful Mail Delivery Report",
        b"Original-Envelope-Id: env+207",
        b"Original-Recipient: rfc822; Bob@example.net",
        b"Final-Recipient: rfc822; bob@example.net",
        b"Action: relayed",
    ):
        assert line in dsn, line
    assert b"never@example.net" not in dsn


class ScriptedPeer:
    """A raw SMTP server on 127.0.0.1 offering PIPELINING, CHUNKING, DSN and SMTPUTF8: it
    answers one session and records each chunk of bytes as it arrived."""

    EHLO = (
        b"250-mx.example.net\r\n250-PIPELINING\r\n250-SIZE 1000000\r\n250-DSN\r\n"
        b"250-SMTPUTF8\r\n250 CHUNKING\r\n"
    )

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.reads: list[bytes] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            conn.settimeout(10)
            conn.sendall(b"220 mx.example.net ESMTP\r\n")
            buffer = b""
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                self.reads.append(data)
                buffer += data
                while b"\r\n" in buffer:
                    line, _, rest = buffer.partition(b"\r\n")
                    verb = line.split(b" ")[0].upper()
                    if verb == b"BDAT":
                        size = int(line.split()[1])
                        while len(rest) < size:
                            more = conn.recv(65536)
                            self.reads.append(more)
                            rest += more
                        rest = rest[size:]
                        conn.sendall(b"250 2.0.0 queued\r\n")
                    elif verb == b"EHLO":
                        conn.sendall(self.EHLO)
                    elif verb == b"QUIT":
                        conn.sendall(b"221 2.0.0 Bye\r\n")
                        return
                    else:
                        conn.sendall(b"250 2.0.0 OK\r\n")
                    buffer = rest


def test_pipelining_chunking_dsn_and_smtputf8_with_a_peer_that_offers_them():
    peer = ScriptedPeer()
    conn = Connection(
        host="mx.example.net",
        address="127.0.0.1",
        port=peer.port,
        helo_hostname="out.example.com",
        tls_verify=False,
    )
    raw = "From: alice@example.com\r\nSubject: Grüße\r\n\r\nHello\r\n".encode()
    options = SendOptions(
        ret="HDRS",
        envid="e 1",
        notify={"b@example.net": "SUCCESS"},
        orcpt={"b@example.net": "rfc822;B@example.net"},
    )
    replies = conn.send(
        envelope_from="alice@example.com",
        recipients=["a@example.net", "b@example.net"],
        data=raw,
        options=options,
    )
    conn.close()
    peer.thread.join(10)
    assert replies == {"a@example.net": (250, "2.0.0 queued"), "b@example.net": (250, "2.0.0 queued")}
    # MAIL and both RCPTs in one write (RFC 2920); the message in one BDAT with its command.
    assert (
        b"MAIL FROM:<alice@example.com> SIZE=%d SMTPUTF8 RET=HDRS ENVID=e+201\r\n"
        b"RCPT TO:<a@example.net>\r\n"
        b"RCPT TO:<b@example.net> NOTIFY=SUCCESS ORCPT=rfc822;B@example.net\r\n" % len(raw)
    ) in peer.reads
    assert b"BDAT %d LAST\r\n" % len(raw) + raw in b"".join(peer.reads)
    assert b"DATA" not in b"".join(peer.reads)


def test_binarymime_needs_a_peer_with_binarymime(sender, dns_server, sink):
    # RFC 3030 section 3: binary data cannot be converted; it bounces with 5.6.3.
    remote = sink()
    mx_to(dns_server, (10, "mx.example.net", "127.0.0.1"))
    params = EnvelopeParams(mail=MailParams(binarymime=True))
    run(queue_message(["bob@example.net"], raw=RAW, params=params), dns_server, remote.port)
    assert remote.received == []
    assert OutboundRecipient.objects.get().reply == "554 5.6.3 Remote host does not accept BINARYMIME"
