"""What outside clients cannot do to `manage.py rundns`, and how soon it serves a change made
by another process.

    .venv/bin/python bench/dns_abuse.py

Prints: how long a record added by this process (another process than the server) takes to
be answered; whether TCP clients are answered, and how fast, while 300 idle connections from
one address and 260 connections that send queries but never read hold the server; the
server's RSS before and after 2,000 TCP queries carrying 60 KB of EDNS padding each.
"""

from __future__ import annotations

import os
import resource
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Import from the repository root; bench/ stays off the path (bench/dns.py would shadow dnspython).
sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench.smtp_abuse import ROOT, rss_kib
from tests.ports import free_port


def setup(data_dir: str) -> None:
    os.environ["EVERLOCK_DATA_DIR"] = data_dir
    os.environ.pop("DATABASE_URL", None)
    os.environ.setdefault("EVERLOCK_LOG", "warning")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "everlock_site.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)
    from dns_zones.services import record_add, zone_create

    zone_create(origin="example.com")
    record_add(origin="example.com", name="www", rtype="A", data="192.0.2.1")


def query(qname: str, *, padding: int = 0) -> bytes:
    import dns.edns
    import dns.message

    options = [dns.edns.GenericOption(dns.edns.OptionType.PADDING, os.urandom(padding))] if padding else []
    return dns.message.make_query(qname, "A", use_edns=0, options=options).to_wire(max_size=65535)


def udp_answer(port: int, qname: str) -> int:
    """The number of answer records for `qname` over UDP."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1)
        sock.sendto(query(qname), ("127.0.0.1", port))
        reply = sock.recv(65535)
    return struct.unpack_from("!H", reply, 6)[0]


def tcp_exchange(port: int, wire: bytes, source: str = "127.0.0.1", timeout: float = 5) -> bytes:
    with socket.socket() as sock:
        sock.settimeout(timeout)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        sock.sendall(struct.pack("!H", len(wire)) + wire)
        stream = sock.makefile("rb")
        (length,) = struct.unpack("!H", stream.read(2))
        return stream.read(length)


def propagation(port: int) -> list[float]:
    from dns_zones.services import record_add

    delays = []
    for n in range(20):
        name = f"new{n}"
        record_add(origin="example.com", name=name, rtype="A", data="192.0.2.9")
        started = time.perf_counter()
        while udp_answer(port, f"{name}.example.com") == 0:
            time.sleep(0.002)
        delays.append(time.perf_counter() - started)
    return delays


def flood_without_reading(sock: socket.socket) -> None:
    wire = query("www.example.com")
    frame = struct.pack("!H", len(wire)) + wire
    sock.setblocking(False)
    try:
        for _ in range(100_000):
            sock.send(frame * 64)
    except BlockingIOError:
        pass


def held_tcp(port: int) -> tuple[int, int, list[float]]:
    held = []
    for _ in range(300):
        sock = socket.socket()
        sock.bind(("127.0.0.2", 0))
        sock.connect(("127.0.0.1", port))
        held.append(sock)
    for n in range(260):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.bind((f"127.0.{3 + n // 200}.{1 + n % 200}", 0))
        sock.connect(("127.0.0.1", port))
        flood_without_reading(sock)
        held.append(sock)
    times, served, failed = [], 0, 0
    for n in range(50):
        started = time.perf_counter()
        try:
            reply = tcp_exchange(port, query("www.example.com"), source=f"127.0.9.{1 + n}")
            served += struct.unpack_from("!H", reply, 6)[0] == 1
        except OSError:
            failed += 1
        times.append(time.perf_counter() - started)
    for sock in held:
        sock.close()
    return served, failed, times


def padded_queries(port: int, pid: int) -> tuple[int, int]:
    for _ in range(50):  # warm-up
        tcp_exchange(port, query("www.example.com", padding=60_000))
    before = rss_kib(pid)
    for _ in range(2000):
        tcp_exchange(port, query("www.example.com", padding=60_000))
    return before, rss_kib(pid)


def main() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    data_dir = tempfile.mkdtemp(prefix="everlock-bench-")
    setup(data_dir)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "manage.py", "rundns", "--listen", f"127.0.0.1:{port}"],
        cwd=ROOT,
        env={**os.environ, "EVERLOCK_LOG": "warning"},
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if udp_answer(port, "www.example.com") == 1:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("rundns did not start")
            time.sleep(0.2)
        delays = propagation(port)
        served, failed, times = held_tcp(port)
        before, after = padded_queries(port, server.pid)
    finally:
        server.terminate()
        server.wait(30)
    ms = [d * 1000 for d in delays]
    print("a record added by another process, answered after (20 changes):")
    print(f"  median {statistics.median(ms):.0f} ms, max {max(ms):.0f} ms")
    print("TCP while 300 idle connections from one address and 260 that never read are held:")
    median, longest = statistics.median(times) * 1000, max(times) * 1000
    print(f"  {served} of 50 answered, {failed} failed; median {median:.1f} ms, max {longest:.1f} ms")
    print("2,000 TCP queries with 60 KB of EDNS padding each:")
    print(f"  RSS {before / 1024:.1f} MiB before, {after / 1024:.1f} MiB after")


if __name__ == "__main__":
    main()
