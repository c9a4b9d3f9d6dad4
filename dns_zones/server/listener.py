"""The authoritative DNS listener: asyncio UDP and TCP on one address.

The event loop only moves bytes: answers come from dns_zones.server.answer.Responder, which
reads an in-memory Snapshot. The database is read in a dedicated worker thread: once at start,
then a fresh snapshot whenever zone data changes. A change made in this process (the console
of `everlock serve`) is announced on commit (dns_zones.changes) and served before the change's
service returns; one made by another process is seen by `data_version()`, polled every
`poll_interval` seconds (POLL_INTERVAL, so within about 0.1 s).

Several processes may serve the same address: UDP and TCP are bound with SO_REUSEPORT and the
kernel spreads queries over them (`manage.py rundns --processes N`, the `everlock serve`
supervisor). Each process loads its own snapshot and precompiles it (dns_zones.server.wire);
the database poll that notices a change is one aggregate query.

TCP (RFC 7766): every connection has an idle timeout and a write timeout (a client that
sends queries but does not read the answers is dropped), at most `tcp_per_client`
connections come from one address, and at most `tcp_connections` are open in all; when full,
the connection that made progress longest ago (sent a whole query, or took an answer) is
closed for the newcomer (RFC 7766 section 6.2.3 lets a server close connections to free
resources), so connections that sit idle or stall cannot keep new clients out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor

import dns.rcode
from django.conf import settings
from django.db import close_old_connections, connection

from dns_zones import changes
from dns_zones.server.answer import Responder
from dns_zones.server.snapshot import data_version, load_snapshot
from dns_zones.server.wire import WireAnswers
from everlock_site import metrics
from everlock_site.listen import AcceptErrorLog, binding, raise_open_file_limit

log = logging.getLogger("dns_zones")

# RFC 7766 section 6.2.3: idle TCP connections are closed after a few seconds.
TCP_IDLE_TIMEOUT = 10.0
# How long an answer may wait for a client to take it.
TCP_WRITE_TIMEOUT = 5.0
POLL_INTERVAL = 0.05
# How long a change's service waits for this process's DNS servers to serve it.
CHANGE_WAIT = 10.0
# Datagrams answered per wake-up of the event loop, the largest one read, and the receive
# buffer asked for.
UDP_BATCH = 64
UDP_RECEIVE = 65535
UDP_RECEIVE_BUFFER = 4 * 1024 * 1024


def load_answers() -> WireAnswers:
    """The zone data read from the database and precompiled (in the worker thread)."""
    return WireAnswers(load_snapshot())


class _TCPClient:
    """One open TCP connection: its task, writer, client address and last progress."""

    __slots__ = ("host", "progress", "task", "writer")

    def __init__(self, task: asyncio.Task, writer: asyncio.StreamWriter, host: str, now: float):
        self.task = task
        self.writer = writer
        self.host = host
        self.progress = now


class _AnswerCounts:
    """Answers by transport and response code (the header's RCODE, RFC 1035 section 4.1.1)
    since the last flush. Counting a UDP answer is one list increment on the event loop (a TCP
    one a dict increment); flush() hands the counts to the metrics counters (a lock and a
    shared-memory write each) from the poll loop, so the metrics lag the answers by at most
    the poll interval."""

    def __init__(self) -> None:
        # UDP answers by RCODE (its four bits in the header).
        self.udp = [0] * 16
        self.pending: defaultdict[tuple[str, int], int] = defaultdict(int)

    def add(self, transport: str, response: bytes) -> None:
        self.pending[transport, response[3] & 0x0F] += 1

    def flush(self) -> None:
        udp, self.udp = self.udp, [0] * 16
        pending, self.pending = self.pending, defaultdict(int)
        for rcode, count in enumerate(udp):
            if count:
                pending["udp", rcode] += count
        for (transport, rcode), count in pending.items():
            metrics.DNS_QUERIES.labels(transport, dns.rcode.to_text(rcode)).inc(count)


class _UDPListener:
    """The UDP socket, read with loop.add_reader: each wake-up drains up to UDP_BATCH
    datagrams (one event loop turn per datagram would cost more than answering it)."""

    def __init__(self, sock: socket.socket, responder: Responder, counts: _AnswerCounts):
        self.sock = sock
        self.responder = responder
        self.counts = counts

    def readable(self) -> None:
        # The loop runs once per datagram: names are bound to locals here, and a query seen
        # before is answered from udp_replies without a call (Responder.respond_udp).
        recvfrom = self.sock.recvfrom
        sendto = self.sock.sendto
        respond = self.responder.respond_udp
        replies = self.responder.udp_replies.get  # install() replaces it on this same loop only
        answered = self.counts.udp  # flush() swaps it on this same loop, never meanwhile
        for _ in range(UDP_BATCH):
            try:
                data, addr = recvfrom(UDP_RECEIVE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # ICMP errors from earlier sends (a client that went away): nothing to do.
                log.debug("DNS UDP error: %s", exc)
                continue
            key = data[2:]
            reply = replies(key)
            if reply is None:
                reply = respond(data, key)
                if reply is None:
                    continue
            try:
                sendto(data[:2] + reply, addr)
            except OSError as exc:
                # A full send buffer or an unreachable client: the client asks again (RFC 1035
                # section 4.2.1 leaves retransmission to it).
                log.debug("DNS UDP answer to %s not sent: %s", addr, exc)
                continue
            answered[reply[1] & 0x0F] += 1


def _udp_socket(host: str, port: int) -> socket.socket:
    """A UDP socket bound to (host, port) with SO_REUSEPORT, so that several processes share
    the port and the kernel spreads the datagrams over them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        with contextlib.suppress(OSError):  # capped by net.core.rmem_max; a bigger one helps bursts
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class DNSServer:
    """A running DNS listener: `host`, `port` (the bound port), close() and wait_closed()."""

    def __init__(
        self, *, poll_interval: float = POLL_INTERVAL, tcp_connections: int = 256, tcp_per_client: int = 8
    ):
        self.poll_interval = poll_interval
        self.tcp_connections = tcp_connections
        self.tcp_per_client = tcp_per_client
        self.tcp_idle_timeout = TCP_IDLE_TIMEOUT
        self.tcp_write_timeout = TCP_WRITE_TIMEOUT
        self.host = ""
        self.port = 0
        self.responder: Responder | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dns-snapshot")
        self._counts = _AnswerCounts()
        self._udp: socket.socket | None = None
        self._tcp: asyncio.AbstractServer | None = None
        self._poller: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reload_lock = asyncio.Lock()
        self._connections: dict[asyncio.Task, _TCPClient] = {}
        self._per_client: Counter[str] = Counter()

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
        """Load the zone data, then bind UDP and TCP on (host, port) with SO_REUSEPORT (other
        processes may serve the same port); port 0 picks one free port for both. Raises
        OSError when the address cannot be bound."""
        answers = await self._in_thread(load_answers)
        self.responder = Responder(answers)
        loop = self._loop = asyncio.get_running_loop()
        raise_open_file_limit()
        AcceptErrorLog.install(loop)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        for attempt in range(20):
            udp = _udp_socket(host, port)
            bound = udp.getsockname()[1]
            try:
                self._tcp = await asyncio.start_server(
                    self._serve_tcp, host, bound, family=family, reuse_address=True, reuse_port=True
                )
            except OSError:
                udp.close()
                if port != 0 or attempt == 19:
                    raise
                continue  # the TCP side of an ephemeral port was taken: pick another port
            self._udp = udp
            loop.add_reader(udp.fileno(), _UDPListener(udp, self.responder, self._counts).readable)
            self.host, self.port = host, bound
            break
        self._poller = asyncio.create_task(self._poll())
        changes.subscribe(self._changed)

    @property
    def tcp_open(self) -> int:
        """TCP connections open now."""
        return len(self._connections)

    async def reload(self, *, if_changed: bool = False) -> None:
        """Load the zone data again and answer from it (only when data_version() moved, with
        `if_changed`)."""
        async with self._reload_lock:
            if if_changed and await self._in_thread(data_version) == self.responder.snapshot.version:
                return
            answers = await self._in_thread(load_answers)
            self.responder.install(answers)
        log.info("DNS zone data reloaded (%d zones)", len(answers.snapshot.zones))

    def _changed(self) -> None:
        # Called by dns_zones.changes in the thread that committed a change.
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:  # on our own loop: cannot wait for it here
            loop.create_task(self.reload())
            return
        try:
            asyncio.run_coroutine_threadsafe(self.reload(), loop).result(CHANGE_WAIT)
        except Exception as exc:
            log.warning("DNS zone data not reloaded at once: %r", exc)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            self._counts.flush()
            try:
                await self.reload(if_changed=True)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The database may be away for a moment; keep answering from what we have.
                log.warning("DNS zone data not reloaded: %s", exc)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        peer = writer.get_extra_info("peername")
        host = peer[0] if isinstance(peer, tuple) else str(peer)
        if self._per_client[host] >= self.tcp_per_client:
            writer.transport.abort()
            return
        if len(self._connections) >= self.tcp_connections:
            stalest = min(self._connections.values(), key=lambda c: c.progress)
            stalest.task.cancel()
            self._forget(stalest)
        task = asyncio.current_task()
        client = _TCPClient(task, writer, host, loop.time())
        self._connections[task] = client
        self._per_client[host] += 1
        clean = False
        try:
            while True:
                # RFC 1035 section 4.2.2: each message is prefixed by its two-octet length.
                try:
                    header = await asyncio.wait_for(reader.readexactly(2), self.tcp_idle_timeout)
                except asyncio.IncompleteReadError as exc:
                    clean = not exc.partial  # the client closed between messages
                    return
                (length,) = struct.unpack("!H", header)
                wire = await asyncio.wait_for(reader.readexactly(length), self.tcp_idle_timeout)
                client.progress = loop.time()
                response = self.responder.respond(wire, tcp=True)
                if response is None:
                    continue
                writer.write(struct.pack("!H", len(response)) + response)
                self._counts.add("tcp", response)
                await asyncio.wait_for(writer.drain(), self.tcp_write_timeout)
                client.progress = loop.time()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("DNS TCP connection failed")
        finally:
            self._forget(client)
            if clean:
                writer.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(writer.wait_closed(), self.tcp_write_timeout)
            # Whatever is still unsent after a timeout (a client that does not read) is dropped.
            writer.transport.abort()

    def _forget(self, client: _TCPClient) -> None:
        if self._connections.pop(client.task, None) is not None:
            self._per_client[client.host] -= 1
            if self._per_client[client.host] <= 0:
                del self._per_client[client.host]

    def close(self) -> None:
        """Stop listening and polling; open TCP connections are closed."""
        changes.unsubscribe(self._changed)
        if self._poller is not None:
            self._poller.cancel()
        if self._udp is not None:
            self._loop.remove_reader(self._udp.fileno())
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
        for task in list(self._connections):
            task.cancel()

    async def wait_closed(self) -> None:
        if self._poller is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        self._counts.flush()
        if self._tcp is not None:
            await self._tcp.wait_closed()
        if self._connections:
            await asyncio.gather(*list(self._connections), return_exceptions=True)
        # Close the worker thread's database connection in that thread.
        await asyncio.get_running_loop().run_in_executor(self._executor, lambda: connection.close())
        self._executor.shutdown(wait=True)


async def start_dns(*, listens, poll_interval: float = POLL_INTERVAL) -> DNSServer:
    """Start the DNS listener on listens["dns"] (a ListenAddress); return the running server.

    Used by `everlock serve --backend-dns-dns` and `manage.py rundns`; safe to run in several
    processes on one fixed port (SO_REUSEPORT), each with its own zone data. Logs the bound address
    (with the real port when port 0 was asked for) on the "dns_zones" logger.
    """
    listen = listens["dns"]
    log.info("backend-dns-dns: binding DNS listener on %s", listen)
    server = DNSServer(
        poll_interval=poll_interval,
        tcp_connections=settings.EVERLOCK_DNS_TCP_MAX_CONNECTIONS,
        tcp_per_client=settings.EVERLOCK_DNS_TCP_MAX_CONNECTIONS_PER_CLIENT,
    )
    with binding(listen):
        await server.start(listen.host, listen.port)
    bound = f"[{server.host}]:{server.port}" if ":" in server.host else f"{server.host}:{server.port}"
    log.info("DNS listener on %s (udp, tcp)", bound)
    return server
