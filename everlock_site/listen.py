"""Listen addresses ("0.0.0.0:2525", "[::1]:2587", ":25"), and what every listening process
sets up: the open file limit, signals, and a bounded log of accept() failures."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import resource
import signal
from dataclasses import dataclass

from django.core.management.base import CommandError

log = logging.getLogger("everlock")


@dataclass(frozen=True)
class ListenAddress:
    host: str
    port: int

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
    return ListenAddress(host, port_number)


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM, for a command's loop to wait on before closing."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


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
