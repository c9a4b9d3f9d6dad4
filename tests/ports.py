"""Free loopback ports for the servers tests and benchmarks start: one helper for all."""

from __future__ import annotations

import socket


def free_port(*hosts: str, udp: bool = False) -> int:
    """A TCP port (TCP and UDP with `udp`, as a DNS listener binds) free on every one of
    `hosts` (loopback addresses; 127.0.0.1 when none is given)."""
    hosts = hosts or ("127.0.0.1",)
    kinds = (socket.SOCK_STREAM, socket.SOCK_DGRAM) if udp else (socket.SOCK_STREAM,)
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((hosts[0], 0))
            port = probe.getsockname()[1]
        if all(_bindable(host, port, kind) for host in hosts for kind in kinds):
            return port
    raise RuntimeError(f"no port free on all of {hosts}")


def free_ports(count: int) -> list[int]:
    """`count` different TCP ports free on 127.0.0.1: each is held until all are picked, so
    the kernel cannot hand the same port out twice."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def _bindable(host: str, port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
