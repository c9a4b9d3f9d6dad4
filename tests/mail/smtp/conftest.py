"""A real SMTP server (inbound + submission) on 127.0.0.1 ephemeral ports, in a thread."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import ssl
import threading
from dataclasses import dataclass

import pytest
from django.conf import settings as django_settings
from django.core.cache import cache

from accounts.services import grant_add, user_add
from dns_zones.services import record_add, zone_create
from everlock_site.listen import ListenAddress
from mail.models import MailDomain, Message, MessageContent, OutboundDelivery
from mail.services.directory import directory
from mail.smtp.listeners import start_listeners
from mail.smtp.server import SMTPConfig
from tests.dns_server import RunningDNS
from tls.store import server_context

HOSTNAME = "mx.example.com"


@dataclass
class RunningServer:
    inbound_port: int
    submission_port: int
    config: SMTPConfig
    submissions_port: int = 0  # implicit TLS (RFC 8314)


def test_config(**overrides) -> SMTPConfig:
    from pathlib import Path

    base = SMTPConfig(
        hostname=HOSTNAME,
        tls_context=server_context(
            cert="", key="", data_dir=Path(django_settings.DATA_DIR), hostname=HOSTNAME
        ),
        max_message_size=100_000,
        max_recipients=5,
        max_hops=10,
        idle_timeout=30,
        session_timeout=60,
        max_connections_per_client=20,
        plaintext_auth=False,
    )
    return dataclasses.replace(base, **overrides)


@pytest.fixture
def start_smtp(transactional_db, settings):
    """Start a server with SMTPConfig overrides; stopped after the test. The inbound checks
    are on, as they are by default, asking the senders' DNS (senders_dns) unless the test
    set its own (EVERLOCK_INBOUND_CHECKS and EVERLOCK_RESOLVER, as tests/mail/auth does)."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    # The login throttle's counters live in the cache table, which test flushes keep; the
    # directory's memory (mail.services.directory) is the process's, which they do not reach.
    cache.clear()
    directory.clear()
    running = []
    resolvers = []

    def start(**overrides) -> RunningServer:
        if not settings.EVERLOCK_INBOUND_CHECKS:
            resolvers.append(senders_dns())
            settings.EVERLOCK_INBOUND_CHECKS = True
            settings.EVERLOCK_RESOLVER = f"127.0.0.1:{resolvers[-1].port}"
        config = test_config(**overrides)
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        listens = {
            "smtp": ListenAddress("127.0.0.1", 0),
            "submission": ListenAddress("127.0.0.1", 0),
            "submissions": ListenAddress("127.0.0.1", 0),
        }
        listeners = asyncio.run_coroutine_threadsafe(
            start_listeners(listens=listens, config=config), loop
        ).result(10)
        running.append((loop, thread, listeners))
        ports = [s.sockets[0].getsockname()[1] for s in listeners.servers]
        return RunningServer(
            inbound_port=ports[0], submission_port=ports[1], submissions_port=ports[2], config=config
        )

    yield start
    for loop, thread, listeners in running:

        async def stop(listeners=listeners):
            listeners.close()
            await listeners.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        # As asyncio.run() does at the end of `runsmtp`: the worker threads end, and their
        # database connections with them.
        asyncio.run_coroutine_threadsafe(loop.shutdown_default_executor(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
    for resolver in resolvers:
        resolver.stop()


SENDER_DOMAINS = ("example.com", "example.net", "example.org")


def senders_dns() -> RunningDNS:
    """Everlock's DNS server hosting the domains the listener tests send from: each lets
    127.0.0.0/8 send (SPF) and has no DMARC record; 127.0.0.1 is mx.example.net, which points
    back (iprev). Other names are not served: asking for them is a temporary DNS failure."""
    for origin in SENDER_DOMAINS:
        zone_create(origin=origin)
        record_add(origin=origin, name="@", rtype="TXT", data='"v=spf1 ip4:127.0.0.0/8 -all"')
    record_add(origin="example.net", name="mx", rtype="A", data="127.0.0.1")
    zone_create(origin="0.0.127.in-addr.arpa")
    record_add(origin="0.0.127.in-addr.arpa", name="1", rtype="PTR", data="mx.example.net.")
    return RunningDNS()


@pytest.fixture
def smtp(start_smtp) -> RunningServer:
    return start_smtp()


@pytest.fixture
def example_com(transactional_db) -> MailDomain:
    """example.com with submission on, no DKIM; alice (password change-me) may send as
    alice@example.com; bob@example.com is a mailbox too."""
    domain = MailDomain.objects.create(name="example.com", submission_enabled=True)
    user_add(name="alice", password="change-me")
    grant_add(name="alice", resource="smtp/mail/example.com:alice", role="writer")
    user_add(name="bob", password="bob-secret")
    grant_add(name="bob", resource="smtp/mail/example.com:bob", role="writer")
    return domain


def tls_context() -> ssl.SSLContext:
    """A client context for the listeners' self-signed certificate."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def nothing_stored() -> bool:
    return (
        not Message.objects.exists()
        and not MessageContent.objects.exists()
        and not OutboundDelivery.objects.exists()
    )


class RawClient:
    """A line-level SMTP client over a plain socket, to send what smtplib never would."""

    def __init__(self, port: int, *, implicit_tls: bool = False):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        if implicit_tls:
            self.sock = tls_context().wrap_socket(self.sock)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"closed; pending {self.buffer!r}")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def reply(self) -> bytes:
        """One complete (possibly multi-line) reply, lines joined by CRLF."""
        lines = [self.line()]
        while lines[-1][3:4] == b"-":
            lines.append(self.line())
        return b"\r\n".join(lines)

    def cmd(self, text: bytes) -> bytes:
        self.send(text + b"\r\n")
        return self.reply()

    def starttls(self) -> None:
        context = tls_context()
        self.sock = context.wrap_socket(self.sock)

    def close(self) -> None:
        self.sock.close()
