"""The IMAP listeners: port 143 with STARTTLS and port 993 with implicit TLS (RFC 8314).

Each accepted connection runs pymap's IMAPConnection with Everlock's connection state
(mail.imap.commands). Around it, the listener enforces what pymap leaves to its host:

- a total connection limit per listener and a per-user limit on sessions, answered with
  `* BYE` / `NO [LIMIT]`;
- a command line limit: a longer line is read to its end and answered with a tagged BAD
  [TOOBIG];
- a literal limit (the APPEND size limit, EVERLOCK_SMTP_MAX_MESSAGE_SIZE): a client announcing
  more is disconnected before anything is read;
- an idle timeout (RFC 9051 §5.4: at least 30 minutes), IDLE included.

Before TLS, logins are refused (LOGINDISABLED) except from loopback, as for submission.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid

from django.conf import settings
from proxyprotocol.sock import SocketInfoLocal
from pymap.context import connection_exit, subsystem
from pymap.imap import IMAPConnection

from everlock_site import metrics
from everlock_site.listen import binding
from mail.imap.commands import CAPABILITIES, TOO_LONG, EverlockConnectionState, commands
from mail.imap.config import Config
from mail.imap.login import Login
from mail.imap.notify import watch_folders
from mail.imap.threads import database_threads
from mail.smtp.server import peer_host
from tls.store import listener_store

log = logging.getLogger("mail.imap")

_TAG = re.compile(rb"[^ \r\n]{1,64}")


class LimitedReader(asyncio.StreamReader):
    """A StreamReader that bounds command lines and literals and remembers the last read."""

    def __init__(self, *, max_line: int, max_literal: int) -> None:
        super().__init__(limit=max_line)
        self.max_line = max_line
        self.max_literal = max_literal
        self.last_activity = time.monotonic()

    def feed_data(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        super().feed_data(data)

    async def readline(self) -> bytes:
        try:
            return await self.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            return exc.partial
        except asyncio.LimitOverrunError as exc:
            # Longer than max_line: read the line to its end, keep its tag for the answer.
            head = await super().readexactly(exc.consumed)
            while True:
                try:
                    await self.readuntil(b"\n")
                    break
                except asyncio.LimitOverrunError as more:
                    await super().readexactly(more.consumed)
        tag = _TAG.match(head)
        return (tag.group() if tag else b"*") + b" " + TOO_LONG + b"\r\n"

    async def readexactly(self, n: int) -> bytes:
        if n > self.max_literal:
            raise EOFError(f"literal of {n} bytes refused")
        return await super().readexactly(n)


class CorkedWriter:
    """A StreamWriter that sends what was written at drain() in one piece.

    pymap writes a response a token at a time and drains after each response; sent as they
    come, the tokens leave as many small segments, and a client reading while they arrive sees
    lines cut in the middle. Everything else is the wrapped writer's."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._pending = bytearray()

    def write(self, data: bytes) -> None:
        self._pending += data

    def writelines(self, data) -> None:
        for chunk in data:
            self._pending += chunk

    def _flush(self) -> None:
        if self._pending:
            self._writer.write(bytes(self._pending))
            self._pending.clear()

    async def drain(self) -> None:
        self._flush()
        await self._writer.drain()

    async def start_tls(self, *args, **kwargs) -> None:
        self._flush()
        await self._writer.start_tls(*args, **kwargs)

    def close(self) -> None:
        self._flush()
        self._writer.close()

    def __getattr__(self, name: str):
        return getattr(self._writer, name)


class IMAPListener:
    """One bound IMAP listener (plain with STARTTLS, or implicit TLS)."""

    def __init__(
        self,
        *,
        name: str,
        config: Config,
        implicit_tls,
        max_connections: int,
        idle_timeout: float,
        max_literal: int,
    ):
        self.name = name
        self.max_literal = max_literal
        self.config = config
        self.login = Login(config)
        self.implicit_tls = implicit_tls
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.connections: dict[asyncio.StreamWriter, LimitedReader] = {}
        self.server: asyncio.AbstractServer | None = None
        self.commands = config.commands

    def _protocol(self) -> asyncio.StreamReaderProtocol:
        reader = LimitedReader(max_line=settings.EVERLOCK_IMAP_MAX_LINE, max_literal=self.max_literal)
        return asyncio.StreamReaderProtocol(reader, self._connected)

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            self._protocol, host, port, ssl=self.implicit_tls, reuse_address=True
        )

    async def _connected(self, reader: LimitedReader, stream_writer: asyncio.StreamWriter) -> None:
        writer = CorkedWriter(stream_writer)
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
        self.connections[writer] = reader
        metrics.IMAP_CONNECTIONS.labels(self.name).inc()
        self.config.apply_context()
        subsystem.set(self.config.subsystem)
        info = SocketInfoLocal(writer, unique_id=uuid.uuid4().bytes)
        connection = IMAPConnection(self.commands, self.config, reader, writer, info)
        state = EverlockConnectionState(self.login, self.config)
        try:
            async with contextlib.AsyncExitStack() as stack:
                connection_exit.set(stack)
                stack.enter_context(contextlib.closing(connection))
                await connection.run(state)
        except (ConnectionError, EOFError, TimeoutError) as exc:
            log.info(
                "%s: connection from %s ended: %s", self.name, peer, exc, extra={"client": peer_host(peer)}
            )
        except Exception:
            log.exception("%s: connection from %s failed", self.name, peer, extra={"client": peer_host(peer)})
        finally:
            self.connections.pop(writer, None)
            writer.close()

    def sweep_idle(self) -> None:
        """Close the connections silent for longer than the idle timeout."""
        now = time.monotonic()
        for writer, reader in list(self.connections.items()):
            if now - reader.last_activity > self.idle_timeout:
                with contextlib.suppress(Exception):
                    writer.write(b"* BYE Idle for too long.\r\n")
                writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in list(self.connections):
            with contextlib.suppress(Exception):
                writer.write(b"* BYE [UNAVAILABLE] Server shutting down.\r\n")
            writer.close()

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
    common = dict(
        ssl_context=tls,
        hostname=settings.EVERLOCK_HOSTNAME,
        max_append_len=settings.EVERLOCK_SMTP_MAX_MESSAGE_SIZE,
        extra_capabilities=CAPABILITIES,
        commands=commands,
    )
    database_threads.start()
    listeners = []
    for key, starttls in (("imap", True), ("imaps", False)):
        address = listens.get(key)
        if address is None:
            continue
        listener = IMAPListener(
            name=key,
            config=Config(starttls=starttls, **common),
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
