"""Listen addresses: "0.0.0.0:2525", "[::1]:2587", ":25"."""

from __future__ import annotations

import asyncio
import ipaddress
import signal
from dataclasses import dataclass

from django.core.management.base import CommandError


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
