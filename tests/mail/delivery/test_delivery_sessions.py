"""SMTP sessions of outbound delivery: several at once with one destination, kept open from
one round of claimed rows to the next and, in a worker process, between its tasks for a
short idle time; seen at a local aiosmtpd sink."""

from __future__ import annotations

import asyncio
import time

from delivery_world import queue_message, remote_for
from django.db import connection

from mail.delivery.attempts import claim
from mail.delivery.batch import Deliveries, Kept
from mail.models import OutboundDelivery, OutboundRecipient

RAW = b"From: alice@example.com\r\nTo: bob@example.net\r\nSubject: hi\r\n\r\nHello.\r\n"


def mx_to_localhost(dns):
    dns.zone.add("example.net", "MX", "10 mx.example.net.")
    dns.zone.add("mx.example.net", "A", "127.0.0.1")


def queue(count: int, start: int = 0) -> list[OutboundDelivery]:
    return [queue_message([f"user{n}@example.net"], raw=RAW)[0] for n in range(start, start + count)]


def delivered() -> int:
    return OutboundRecipient.objects.filter(status=OutboundRecipient.Status.DELIVERED).count()


def test_rows_go_out_over_several_sessions_at_once(sender, dns_server, sink):
    remote = sink()
    mx_to_localhost(dns_server)
    in_data = 0
    most = 0

    async def slow_data(server, session, envelope):
        nonlocal in_data, most
        in_data += 1
        most = max(most, in_data)
        await asyncio.sleep(0.2)
        in_data -= 1
        return "250 2.0.0 queued"

    remote.handler.handle_DATA = slow_data
    rows = queue(6)
    with Deliveries(remote=remote_for(dns_server, remote.port, sessions=3)) as deliveries:
        deliveries.deliver(claim(ids=[r.id for r in rows]))
    assert remote.handler.connections == 3
    assert most == 3
    assert list(OutboundDelivery.objects.values_list("status", flat=True)) == ["delivered"] * 6


def test_each_session_records_its_delivery_before_it_sends_the_next(sender, dns_server, sink):
    # A worker killed while sending sends again only the messages its sessions were sending.
    remote = sink()

    def delivered_so_far():
        try:
            return delivered()
        finally:
            connection.close()  # this thread's own connection

    remote.handler.observe = delivered_so_far
    mx_to_localhost(dns_server)
    rows = queue(6)
    with Deliveries(remote=remote_for(dns_server, remote.port, sessions=2)) as deliveries:
        deliveries.deliver(claim(ids=[r.id for r in rows]))
    assert remote.handler.connections == 2
    # The n-th DATA (0-based) sees at least the n - 1 before the other session's last one.
    assert all(seen >= n - 1 for n, seen in enumerate(remote.handler.observed))
    assert delivered() == 6


def test_sessions_stay_open_from_one_round_to_the_next(sender, dns_server, sink):
    remote = sink()
    mx_to_localhost(dns_server)
    first, second = queue(2), queue(2, start=2)
    with Deliveries(remote=remote_for(dns_server, remote.port)) as deliveries:
        deliveries.deliver(claim(ids=[r.id for r in first]))
        deliveries.deliver(claim(ids=[r.id for r in second]))
    assert remote.handler.connections == 1
    assert [r.rcpt_tos for r in remote.received] == [[f"user{n}@example.net"] for n in range(4)]
    # One MX lookup for both rounds.
    assert [q for q in dns_server.zone.queries if q[1:] == ("example.net.", "MX")] == [
        ("udp", "example.net.", "MX")
    ]
    assert delivered() == 4


def test_kept_sessions_serve_the_next_use_and_close_when_idle(sender, dns_server, sink):
    remote = sink()
    mx_to_localhost(dns_server)
    rows = queue(3)
    kept = Kept(idle=0.3)

    def deliveries():
        return Deliveries(remote=remote_for(dns_server, remote.port))

    for row in rows[:2]:
        with kept.use(deliveries) as current:
            current.deliver(claim(ids=[row.id]))
    assert remote.handler.connections == 1
    time.sleep(0.8)
    # Idle past its time: the session was closed, the next use dials again.
    with kept.use(deliveries) as current:
        current.deliver(claim(ids=[rows[2].id]))
    kept.close()
    assert remote.handler.connections == 2
    assert delivered() == 3


def test_each_row_keeps_its_own_reply_when_recorded_together(sender, dns_server, sink):
    remote = sink()
    mx_to_localhost(dns_server)
    count = 0

    async def numbered(server, session, envelope):
        nonlocal count
        count += 1
        await asyncio.sleep(0.05)
        return f"250 2.0.0 queued as {envelope.rcpt_tos[0].split('@')[0]}"

    remote.handler.handle_DATA = numbered
    rows = queue(6)
    with Deliveries(remote=remote_for(dns_server, remote.port, sessions=3)) as deliveries:
        deliveries.deliver(claim(ids=[r.id for r in rows]))
    assert count == 6
    assert list(OutboundDelivery.objects.order_by("id").values_list("status", "last_reply")) == [
        ("delivered", f"250 2.0.0 queued as user{n}") for n in range(6)
    ]
    assert list(OutboundRecipient.objects.order_by("id").values_list("reply", flat=True)) == [
        f"250 2.0.0 queued as user{n}" for n in range(6)
    ]
