"""The DNS resolver outbound delivery uses, built from EVERLOCK_RESOLVER."""

from __future__ import annotations

import dns.nameserver
import dns.resolver


def make_resolver(spec: str, *, timeout: float = 5.0, lifetime: float = 15.0) -> dns.resolver.Resolver:
    """A dnspython resolver for `spec`: "host:port,host:port" nameservers, or the system's
    (/etc/resolv.conf) when empty.

    dnspython retries a truncated UDP answer over TCP itself. Raises ValueError for a
    malformed spec.
    """
    if not spec.strip():
        resolver = dns.resolver.Resolver()
    else:
        resolver = dns.resolver.Resolver(configure=False)
        servers = []
        for item in spec.split(","):
            item = item.strip()
            host, sep, port = item.rpartition(":")
            if not sep or not host or (host.count(":") and not host.startswith("[")):
                host, port = item, "53"
            host = host.strip("[]")
            if not port.isdigit():
                raise ValueError(f"invalid resolver {item!r}: want host:port")
            servers.append(dns.nameserver.Do53Nameserver(host, int(port)))
        resolver.nameservers = servers
    resolver.timeout = timeout
    resolver.lifetime = lifetime
    resolver.cache = None
    return resolver
