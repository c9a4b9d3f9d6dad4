"""Listen addresses ("0.0.0.0:2525", "[::1]:2587", ":25"), and what every listening process
sets up: the open file limit, signals, and a bounded log of accept() failures."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import resource
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field

from django.core.management.base import CommandError

log = logging.getLogger("everlock")


@dataclass(frozen=True)
class ListenAddress:
    host: str
    port: int
    # The command-line option that set this address, named when it cannot be bound.
    option: str = field(default="", compare=False)
    # Bind with SO_REUSEPORT: the same address is served by several processes of
    # `everlock serve` (everlock_site.supervisor), the kernel spreading clients over them.
    reuse_port: bool = field(default=False, compare=False)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen(text: str, *, option: str = "listen") -> ListenAddress:
    """Parse HOST:PORT (IPv6 in brackets; an empty host means 0.0.0.0).

    Raises CommandError naming `option` when the text is not an IP address and a port.
    """
    host, sep, port = text.rpartition(":")
    if not sep:
        raise CommandError(f"{option}: expected HOST:PORT, got {text!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    host = host or "0.0.0.0"
    try:
        ipaddress.ip_address(host)
        port_number = int(port)
    except ValueError:
        raise CommandError(f"{option}: expected an IP address and a port, got {text!r}") from None
    if not 0 <= port_number <= 65535:
        raise CommandError(f"{option}: port out of range in {text!r}")
    return ListenAddress(host, port_number, option)


def bind_failure(listen: ListenAddress, exc: OSError) -> str:
    """One line saying why `listen` could not be bound and which option moves it."""
    where = f"choose another with {listen.option}" if listen.option else "choose another address"
    if exc.errno == errno.EADDRINUSE:
        return f"port {listen.port} is in use: {where}"
    if exc.errno == errno.EACCES:
        return f"port {listen.port} needs privileges this process lacks (ports below 1024 do): {where}"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{listen.host} is not an address of this machine: {where}"
    return f"cannot listen on {listen}: {exc.strerror or exc}: {where}"


@contextlib.contextmanager
def binding(listen: ListenAddress) -> Iterator[None]:
    """Turn an OSError of the bind inside this block into a one-line CommandError."""
    try:
        yield
    except OSError as exc:
        raise CommandError(bind_failure(listen, exc)) from None


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM, for a command's loop to wait on before closing."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def serve_until_stopped(start, *, listens) -> None:
    """`await start(listens=listens)`, then run until SIGINT or SIGTERM, then close what it
    returned (an object with close() and wait_closed()): the body of every `run*` command."""
    stop = stop_on_signals()
    listeners = await start(listens=listens)
    try:
        await stop.wait()
    finally:
        listeners.close()
        await listeners.wait_closed()


def raise_open_file_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (each connection is a file
    descriptor; the usual soft default of 1,024 is far below what a listener can hold).
    Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("open file limit stays at %d (hard limit %d): %s", soft, hard, exc)
    return soft


# What asyncio says when accept() fails for want of file descriptors or memory (EMFILE,
# ENFILE, ENOBUFS, ENOMEM): it retries a second later, and says it again each time.
_ACCEPT_ERROR = "socket.accept() out of system resource"


class AcceptErrorLog:
    """An event loop exception handler that logs accept() failures at most once per
    `interval` seconds, with the number seen since the last line; everything else goes to
    the handler that was there before (or the loop's default)."""

    def __init__(self, previous, *, interval: float = 1.0):
        self.previous = previous
        self.interval = interval
        self.count = 0
        self.logged_at = float("-inf")

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        if not str(context.get("message", "")).startswith(_ACCEPT_ERROR):
            if self.previous is not None:
                self.previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        self.count += 1
        now = loop.time()
        if now - self.logged_at >= self.interval:
            log.error(
                "accept() failed %d time(s) since the last report: %s",
                self.count,
                context.get("exception") or context["message"],
            )
            self.count = 0
            self.logged_at = now

    @classmethod
    def install(cls, loop: asyncio.AbstractEventLoop) -> None:
        """Put one AcceptErrorLog in front of `loop`'s exception handler (once per loop)."""
        current = loop.get_exception_handler()
        if not isinstance(current, cls):
            loop.set_exception_handler(cls(current))
