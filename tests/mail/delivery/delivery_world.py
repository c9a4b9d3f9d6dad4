"""The outside world of outbound delivery, made of real local servers (fixtures in conftest.py).

- `dns_server`: the internet's DNS, a small dnspython-based server on 127.0.0.1 (UDP and TCP
  on one ephemeral port) answering from plain dicts, with names that SERVFAIL and names
  whose UDP answers are truncated (so the resolver must retry over TCP).
- `sink`: remote MX hosts, aiosmtpd servers on 127.0.0.x with scripted replies.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import socketserver
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from aiosmtpd.smtp import SMTP as AioSMTP
from django.conf import settings as django_settings
from django.db import transaction

from mail.delivery.resolver import make_resolver
from mail.delivery.session import Remote
from mail.models import MailDomain
from mail.services.enqueue import enqueue_remote
from mail.services.mailboxes import mailbox_create
from mail.services.storage import StoredFiles, store_content
from tls.store import server_context


class Zone:
    """Answers by (name, type): `records["mx.example.net."]["A"] = ["127.0.0.1"]`."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, list[str]]] = {}
        self.servfail: set[str] = set()
        self.truncate_udp: set[str] = set()
        self.queries: list[tuple[str, str, str]] = []

    def add(self, name: str, rdtype: str, *values: str) -> None:
        name = name if name.endswith(".") else name + "."
        self.records.setdefault(name.lower(), {}).setdefault(rdtype, []).extend(values)

    def answer(self, wire: bytes, transport: str) -> bytes:
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        name = question.name.to_text().lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((transport, name, rdtype))
        if name in self.servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
            return response.to_wire()
        if name not in self.records:
            response.set_rcode(dns.rcode.NXDOMAIN)
            return response.to_wire()
        if transport == "udp" and name in self.truncate_udp:
            response.flags |= dns.flags.TC
            return response.to_wire()
        values = self.records[name].get(rdtype, [])
        if values:
            response.answer.append(
                dns.rrset.from_text_list(question.name, 300, dns.rdataclass.IN, rdtype, values)
            )
        return response.to_wire()


@dataclass
class DNSServer:
    zone: Zone
    port: int

    @property
    def spec(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextlib.contextmanager
def running_dns_server(zone: Zone | None = None) -> Iterator[DNSServer]:
    """A DNSServer answering from `zone` (a new empty one by default) until the block ends."""
    zone = zone if zone is not None else Zone()

    class UDPHandler(socketserver.BaseRequestHandler):
        def handle(self):
            data, sock = self.request
            sock.sendto(zone.answer(data, "udp"), self.client_address)

    class TCPHandler(socketserver.BaseRequestHandler):
        def handle(self):
            head = self.request.recv(2)
            if len(head) < 2:
                return
            size = int.from_bytes(head, "big")
            data = b""
            while len(data) < size:
                chunk = self.request.recv(size - len(data))
                if not chunk:
                    return
                data += chunk
            out = zone.answer(data, "tcp")
            self.request.sendall(len(out).to_bytes(2, "big") + out)

    for _ in range(20):
        # One port for both: the UDP port's TCP twin may be taken by someone else.
        udp = socketserver.ThreadingUDPServer(("127.0.0.1", 0), UDPHandler)
        port = udp.server_address[1]
        tcp = socketserver.ThreadingTCPServer(("127.0.0.1", port), TCPHandler, bind_and_activate=False)
        tcp.allow_reuse_address = True
        try:
            tcp.server_bind()
            tcp.server_activate()
            break
        except OSError:
            tcp.server_close()
            udp.server_close()
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (udp, tcp)]
    for t in threads:
        t.start()
    try:
        yield DNSServer(zone, port)
    finally:
        for s in (udp, tcp):
            s.shutdown()
            s.server_close()


@pytest.fixture
def dns_server():
    with running_dns_server() as server:
        yield server


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    tls: bool
    helo: str
    peer: str = ""


@dataclass
class SinkHandler:
    """Scripted replies: `rcpt_replies[address]` for RCPT, `data_replies` popped per DATA."""

    received: list[Received] = field(default_factory=list)
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    data_replies: list[str] = field(default_factory=list)
    connections: int = 0
    # Called (in a thread) at each DATA before the reply; what it returns is kept in `observed`.
    observe: Callable[[], object] | None = None
    observed: list[object] = field(default_factory=list)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.rcpt_replies.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.observe is not None:
            self.observed.append(await asyncio.to_thread(self.observe))
        if self.data_replies:
            reply = self.data_replies.pop(0)
            if not reply.startswith("2"):
                return reply
        self.received.append(
            Received(
                envelope.mail_from,
                list(envelope.rcpt_tos),
                envelope.original_content,
                session.ssl is not None,
                session.host_name,
                session.peer[0],
            )
        )
        return "250 2.0.0 queued"


@dataclass
class Sink:
    handler: SinkHandler
    host: str
    port: int

    @property
    def received(self) -> list[Received]:
        return self.handler.received


@contextlib.contextmanager
def running_sinks() -> Iterator[Callable[..., Sink]]:
    """start(host="127.0.0.1", port=0, tls=False) -> Sink: aiosmtpd servers on one loop in a
    thread, all stopped when the block ends."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    servers = []
    context = server_context(
        cert="", key="", data_dir=Path(django_settings.DATA_DIR), hostname="mx.example.net"
    )

    def start(
        host: str = "127.0.0.1",
        port: int = 0,
        tls: bool = False,
        size_limit: int = 33554432,
        tls_context: ssl.SSLContext | None = None,
    ) -> Sink:
        """A sink offering STARTTLS when `tls` (with the data dir's self-signed pair, or
        `tls_context`)."""
        handler = SinkHandler()

        def factory():
            handler.connections += 1
            return AioSMTP(
                handler,
                hostname="mx.example.net",
                tls_context=(tls_context or context) if tls else None,
                require_starttls=False,
                decode_data=False,
                data_size_limit=size_limit,
            )

        async def create():
            return await loop.create_server(factory, host, port, family=socket.AF_INET)

        server = asyncio.run_coroutine_threadsafe(create(), loop).result(10)
        servers.append(server)
        return Sink(handler, host, server.sockets[0].getsockname()[1])

    try:
        yield start
    finally:
        asyncio.run_coroutine_threadsafe(_stop_servers(servers), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


async def _stop_servers(servers) -> None:
    for server in servers:
        server.close()
        await server.wait_closed()


@pytest.fixture
def sink():
    """start(host="127.0.0.1", port=0, tls=False) -> Sink: an aiosmtpd server in a thread."""
    with running_sinks() as start:
        yield start


def remote_for(dns: DNSServer, port: int, **kw) -> Remote:
    return Remote(resolver=make_resolver(dns.spec, timeout=2, lifetime=4), port=port, tls_verify=False, **kw)


@pytest.fixture
def sender(transactional_db):
    """The local domain example.com with the mailbox alice@example.com."""
    MailDomain.objects.create(name="example.com", outbound_hostname="out.example.com")
    mailbox, _ = mailbox_create(address="alice@example.com")
    return mailbox


def queue_message(
    recipients: list[str],
    *,
    raw: bytes | None = None,
    envelope_from="alice@example.com",
    params=None,
    bounce_outside=True,
    now=None,
):
    """Store a message and queue it for `recipients` (at `now`, default the clock); returns
    the queue rows."""
    raw = raw or (
        b"From: alice@example.com\r\nTo: bob@example.net\r\nSubject: hello\r\n"
        b"Message-Id: <m1@example.com>\r\n\r\nHello Bob.\r\n.leading dot\r\n"
    )
    with StoredFiles() as files, transaction.atomic():
        content = store_content(raw, files=files)
        return enqueue_remote(
            content=content,
            envelope_from=envelope_from,
            recipients=recipients,
            helo_hostname="out.example.com",
            params=params,
            bounce_outside=bounce_outside,
            now=now,
        )
