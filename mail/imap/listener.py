"""The IMAP listeners: port 143 with STARTTLS and port 993 with implicit TLS (RFC 8314).

Each accepted connection runs a mail.imap.server.Connection. The listener enforces:

- a total connection limit per listener (`* BYE [LIMIT]`); the per-user limit on sessions is
  checked at login;
- an idle timeout (RFC 9051 §5.4: at least 30 minutes), IDLE included.

Command line and literal limits are the connection's. Listeners bind with SO_REUSEPORT, so
several processes may serve one port; everything they share is in the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from django.conf import settings

from everlock_site import metrics
from everlock_site.listen import binding
from mail.imap import mailboxes, selected, sort  # noqa: F401 (their commands register)
from mail.imap.notify import watch_folders
from mail.imap.server import Connection
from mail.imap.threads import database_threads
from mail.smtp.server import peer_host
from tls.store import listener_store

log = logging.getLogger("mail.imap")


class IMAPListener:
    """One bound IMAP listener (plain with STARTTLS, or implicit TLS)."""

    def __init__(
        self,
        *,
        name: str,
        starttls,
        implicit_tls,
        max_connections: int,
        idle_timeout: float,
        max_literal: int,
    ):
        self.name = name
        self.starttls = starttls
        self.implicit_tls = implicit_tls
        self.max_literal = max_literal
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.connections: set[Connection] = set()
        self.server: asyncio.AbstractServer | None = None

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(
            self._connected, host, port, ssl=self.implicit_tls, reuse_address=True, reuse_port=True
        )

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if len(self.connections) >= self.max_connections:
            log.warning(
                "%s: connection from %s refused: %d connections open", self.name, peer, len(self.connections)
            )
            writer.write(b"* BYE [LIMIT] Too many connections, try again later.\r\n")
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()
            return
        connection = Connection(self, reader, writer)
        self.connections.add(connection)
        metrics.IMAP_CONNECTIONS.labels(self.name).inc()
        try:
            await connection.run()
        except (ConnectionError, EOFError, TimeoutError) as exc:
            log.info(
                "%s: connection from %s ended: %s", self.name, peer, exc, extra={"client": peer_host(peer)}
            )
        except Exception:
            log.exception("%s: connection from %s failed", self.name, peer, extra={"client": peer_host(peer)})
        finally:
            self.connections.discard(connection)
            writer.close()

    def sweep_idle(self) -> None:
        """Close the connections silent for longer than the idle timeout."""
        now = time.monotonic()
        for connection in list(self.connections):
            if now - connection.last_activity > self.idle_timeout:
                with contextlib.suppress(Exception):
                    connection.writer.write(b"* BYE Idle for too long.\r\n")
                connection.writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for connection in list(self.connections):
            with contextlib.suppress(Exception):
                connection.writer.write(b"* BYE [UNAVAILABLE] Server shutting down.\r\n")
            connection.writer.close()

    async def wait_closed(self) -> None:
        if self.server is not None:
            await self.server.wait_closed()


class Listeners:
    def __init__(self, listeners: list[IMAPListener], tasks: list[asyncio.Task]):
        self.listeners = listeners
        self.tasks = tasks

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for listener in self.listeners:
            listener.close()

    async def wait_closed(self) -> None:
        for listener in self.listeners:
            await listener.wait_closed()
        await asyncio.get_running_loop().run_in_executor(None, database_threads.stop)


async def _sweep(listeners: list[IMAPListener], every: float) -> None:
    while True:
        await asyncio.sleep(every)
        for listener in listeners:
            listener.sweep_idle()


async def start_listeners(*, listens) -> Listeners:
    """Bind the STARTTLS listener (listens["imap"]) and the implicit-TLS one
    (listens["imaps"]); either may be None."""
    tls = (await asyncio.to_thread(listener_store)).context
    database_threads.start()
    listeners = []
    for key, starttls in (("imap", True), ("imaps", False)):
        address = listens.get(key)
        if address is None:
            continue
        listener = IMAPListener(
            name=key,
            starttls=tls if starttls else None,
            implicit_tls=None if starttls else tls,
            max_connections=settings.EVERLOCK_IMAP_MAX_CONNECTIONS,
            idle_timeout=settings.EVERLOCK_IMAP_IDLE_TIMEOUT,
            # An APPEND literal may be as large as a message SMTP accepts, plus some slack for
            # the literals of other commands.
            max_literal=settings.EVERLOCK_SMTP_MAX_MESSAGE_SIZE + 64 * 1024,
        )
        kind = "STARTTLS" if starttls else "implicit TLS"
        log.info("IMAP listener (%s) on %s:%s", kind, address.host, address.port)
        with binding(address):
            await listener.start(address.host, address.port)
        listeners.append(listener)
    tasks = [
        asyncio.create_task(watch_folders(interval=settings.EVERLOCK_IMAP_NOTIFY_INTERVAL)),
        asyncio.create_task(_sweep(listeners, every=min(60.0, settings.EVERLOCK_IMAP_IDLE_TIMEOUT / 4))),
    ]
    return Listeners(listeners, tasks)
