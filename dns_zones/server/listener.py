"""The authoritative DNS listener: asyncio UDP and TCP on one address.

The event loop only moves bytes: answers come from dns_zones.server.answer.Responder, which
reads an in-memory Snapshot. The database is read in a dedicated worker thread: once at start,
then `data_version()` every `poll_interval` seconds, and a fresh snapshot whenever it changed,
so zone changes are served about a second later without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from concurrent.futures import ThreadPoolExecutor

from django.db import close_old_connections, connection

from dns_zones.server.answer import Responder
from dns_zones.server.snapshot import data_version, load_snapshot
from everlock_site.listen import binding

log = logging.getLogger("dns_zones")

# RFC 7766 section 6.2.3: idle TCP connections are closed after a few seconds.
TCP_IDLE_TIMEOUT = 10.0
MAX_TCP_CONNECTIONS = 256
POLL_INTERVAL = 1.0


class _UDPProtocol(asyncio.DatagramProtocol):
    def __init__(self, responder: Responder):
        self.responder = responder
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        response = self.responder.respond(data, tcp=False)
        if response is not None:
            self.transport.sendto(response, addr)

    def error_received(self, exc):
        # ICMP errors from earlier sends (a client that went away): nothing to do.
        log.debug("DNS UDP error: %s", exc)


class DNSServer:
    """A running DNS listener: `host`, `port` (the bound port), close() and wait_closed()."""

    def __init__(self, *, poll_interval: float = POLL_INTERVAL):
        self.poll_interval = poll_interval
        self.host = ""
        self.port = 0
        self.responder: Responder | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dns-snapshot")
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.AbstractServer | None = None
        self._poller: asyncio.Task | None = None
        self._connections: set[asyncio.Task] = set()
        self._closed = asyncio.Event()

    async def _in_thread(self, func):
        def run():
            close_old_connections()
            try:
                return func()
            except Exception:
                # A broken connection must not poison the next poll.
                connection.close()
                raise

        return await asyncio.get_running_loop().run_in_executor(self._executor, run)

    async def start(self, host: str, port: int) -> None:
        """Load the zone data, then bind UDP and TCP on (host, port); port 0 picks one free port
        for both. Raises OSError when the address cannot be bound."""
        snapshot = await self._in_thread(load_snapshot)
        self.responder = Responder(snapshot)
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        for attempt in range(20):
            self._udp, _ = await loop.create_datagram_endpoint(
                lambda: _UDPProtocol(self.responder), local_addr=(host, port), family=family
            )
            bound = self._udp.get_extra_info("sockname")[1]
            try:
                self._tcp = await asyncio.start_server(
                    self._serve_tcp, host, bound, family=family, reuse_address=True
                )
            except OSError:
                self._udp.close()
                if port != 0 or attempt == 19:
                    raise
                continue  # the TCP side of an ephemeral port was taken: pick another port
            self.host, self.port = host, bound
            break
        self._poller = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                version = await self._in_thread(data_version)
                if version != self.responder.snapshot.version:
                    snapshot = await self._in_thread(load_snapshot)
                    self.responder.install(snapshot)
                    log.info("DNS zone data reloaded (%d zones)", len(snapshot.zones))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The database may be away for a moment; keep answering from what we have.
                log.warning("DNS zone data not reloaded: %s", exc)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if len(self._connections) >= MAX_TCP_CONNECTIONS:
            writer.close()
            return
        self._connections.add(task)
        try:
            while True:
                # RFC 1035 section 4.2.2: each message is prefixed by its two-octet length.
                header = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE_TIMEOUT)
                (length,) = struct.unpack("!H", header)
                wire = await asyncio.wait_for(reader.readexactly(length), TCP_IDLE_TIMEOUT)
                response = self.responder.respond(wire, tcp=True)
                if response is None:
                    continue
                writer.write(struct.pack("!H", len(response)) + response)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("DNS TCP connection failed")
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def close(self) -> None:
        """Stop listening and polling; open TCP connections are closed."""
        if self._poller is not None:
            self._poller.cancel()
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        for task in list(self._connections):
            task.cancel()

    async def wait_closed(self) -> None:
        if self._poller is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        if self._tcp is not None:
            await self._tcp.wait_closed()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        # Close the worker thread's database connection in that thread.
        await asyncio.get_running_loop().run_in_executor(self._executor, lambda: connection.close())
        self._executor.shutdown(wait=True)


async def start_dns(*, listens, poll_interval: float = POLL_INTERVAL) -> DNSServer:
    """Start the DNS listener on listens["dns"] (a ListenAddress); return the running server.

    Used by `everlock serve --backend-dns-dns` and `manage.py rundns`. Logs the bound address
    (with the real port when port 0 was asked for) on the "dns_zones" logger.
    """
    listen = listens["dns"]
    log.info("backend-dns-dns: binding DNS listener on %s", listen)
    server = DNSServer(poll_interval=poll_interval)
    with binding(listen):
        await server.start(listen.host, listen.port)
    bound = f"[{server.host}]:{server.port}" if ":" in server.host else f"{server.host}:{server.port}"
    log.info("DNS listener on %s (udp, tcp)", bound)
    return server
