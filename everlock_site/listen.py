"""Listen addresses: "0.0.0.0:2525", "[::1]:2587", ":25"."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field

from django.core.management.base import CommandError


@dataclass(frozen=True)
class ListenAddress:
    host: str
    port: int
    # The command-line option that set this address, named when it cannot be bound.
    option: str = field(default="", compare=False)

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
