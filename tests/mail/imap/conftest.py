"""A real IMAP server (STARTTLS and implicit TLS listeners) and a real SMTP server on 127.0.0.1
ephemeral ports, each on an event loop of its own thread."""

from __future__ import annotations

import asyncio
import imaplib
import threading
from dataclasses import dataclass

import pytest
from django.core.cache import cache
from django.db import connection

from accounts.services import grant_add, user_add
from everlock_site.listen import ListenAddress
from mail.imap.listener import start_listeners
from mail.models import MailDomain
from mail.services.mailboxes import mailbox_create
from tests.mail.smtp.conftest import start_smtp, tls_context  # noqa: F401 (fixture)


@dataclass
class RunningIMAP:
    port: int
    tls_port: int

    def login(self, user: str = "alice", password: str = "alice-secret") -> imaplib.IMAP4:
        client = imaplib.IMAP4("127.0.0.1", self.port, timeout=10)
        client.login(user, password)
        return client


@pytest.fixture
def imap(transactional_db, settings) -> RunningIMAP:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    # On PostgreSQL, news of other writers must come by NOTIFY: the safety-net look is made
    # too rare to help. On SQLite the look is all there is.
    settings.EVERLOCK_IMAP_NOTIFY_INTERVAL = 60.0 if connection.vendor == "postgresql" else 0.05
    cache.clear()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    listens = {"imap": ListenAddress("127.0.0.1", 0), "imaps": ListenAddress("127.0.0.1", 0)}
    listeners = asyncio.run_coroutine_threadsafe(start_listeners(listens=listens), loop).result(10)
    ports = [listener.server.sockets[0].getsockname()[1] for listener in listeners.listeners]
    yield RunningIMAP(port=ports[0], tls_port=ports[1])

    async def stop():
        listeners.close()
        await listeners.wait_closed()

    asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
    asyncio.run_coroutine_threadsafe(loop.shutdown_default_executor(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


@pytest.fixture
def mail_users(transactional_db) -> MailDomain:
    """example.com; alice owns alice@example.com and may read carol@example.com; bob owns
    bob@example.com and may write carol@example.com; nobody has a grant for dave@example.com."""
    domain = MailDomain.objects.create(name="example.com", submission_enabled=True)
    user_add(name="alice", password="alice-secret")
    grant_add(name="alice", resource="smtp/mail/example.com:alice", role="writer")
    user_add(name="bob", password="bob-secret")
    grant_add(name="bob", resource="smtp/mail/example.com:bob", role="writer")
    mailbox_create(address="carol@example.com")
    mailbox_create(address="dave@example.com")
    grant_add(name="alice", resource="smtp/mail/example.com:carol", role="reader")
    grant_add(name="bob", resource="smtp/mail/example.com:carol", role="writer")
    return domain


def message(subject: str, to: str = "alice@example.com", body: str = "Hello.") -> bytes:
    return (
        f"From: Zoe <zoe@example.net>\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Message-Id: <{subject.replace(' ', '.')}@example.net>\r\n\r\n{body}\r\n"
    ).encode()
