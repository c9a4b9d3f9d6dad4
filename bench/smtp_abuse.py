"""What outside clients cannot do to `manage.py runsmtp` (the listener as deployed):
figures for the memory a refusal holds and for the connection limit.

.venv/bin/python bench/smtp_abuse.py              both parts
.venv/bin/python bench/smtp_abuse.py refusals     RSS before and after 100,000 refused RCPTs
                                                  and 100 refused 1 MB messages (limit: +10 MB)
.venv/bin/python bench/smtp_abuse.py connections  3,000 idle connections from 150 loopback
                                                  addresses against the default limits, and
                                                  the time a normal client takes meanwhile
"""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Import from the repository root; bench/ stays off the path (bench/dns.py would shadow dnspython).
sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench.smtp_load import ROOT, prepare
from tests.ports import free_port

REFUSED_RCPTS = 100_000
REFUSED_MESSAGES = 100
IDLE_CONNECTIONS = 3_000
IDLE_ADDRESSES = 150  # 20 each: the default per-client limit


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def start_runsmtp(data_dir: str, log_path: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {**os.environ, "EVERLOCK_DATA_DIR": data_dir, "EVERLOCK_LOG": "warning"}
    env.pop("DATABASE_URL", None)
    process = subprocess.Popen(
        [sys.executable, "manage.py", "runsmtp", "--listen", f"127.0.0.1:{port}"],
        cwd=ROOT,
        env=env,
        stderr=log_path.open("w"),
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                if sock.recv(100).startswith(b"220 "):
                    return process, port
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("runsmtp did not start")


async def _replies(reader: asyncio.StreamReader, count: int) -> list[bytes]:
    out = []
    while len(out) < count:
        line = await reader.readline()
        if not line:
            raise RuntimeError("connection closed")
        if line[3:4] != b"-":
            out.append(line[:3])
    return out


async def refuse_rcpts(port: int, total: int, *, connections: int = 10, batch: int = 200) -> None:
    """`total` RCPTs to mailboxes that do not exist and domains that are not ours, pipelined."""

    async def one(share: int, n: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await _replies(reader, 1)
        writer.write(b"EHLO bench.example.net\r\nMAIL FROM:<carol@example.net>\r\n")
        assert await _replies(reader, 2) == [b"250", b"250"]
        sent = 0
        while sent < share:
            count = min(batch, share - sent)
            writer.write(
                b"".join(
                    f"RCPT TO:<nobody{n}.{sent + i}@{'example.com' if i % 2 else 'example.org'}>\r\n".encode()
                    for i in range(count)
                )
            )
            got = await _replies(reader, count)
            assert set(got) <= {b"550", b"554"}, got[:3]
            sent += count
        writer.write(b"QUIT\r\n")
        await _replies(reader, 1)
        writer.close()

    await asyncio.gather(*(one(total // connections, n) for n in range(connections)))


async def refuse_messages(port: int, total: int, *, size: int = 1024 * 1024) -> None:
    """`total` messages of `size` bytes with 51 Received headers, one more than the default
    EVERLOCK_SMTP_MAX_HOPS (refused 554 5.4.6 after DATA)."""
    head = b"Received: from relay.example.net\r\n" * 51 + b"Subject: refused\r\n\r\n"
    body = head + (b"x" * 70 + b"\r\n") * (size // 72)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await _replies(reader, 1)
    writer.write(b"EHLO bench.example.net\r\n")
    await _replies(reader, 1)
    for _ in range(total):
        writer.write(b"MAIL FROM:<carol@example.net>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n")
        assert await _replies(reader, 3) == [b"250", b"250", b"354"]
        writer.write(body + b".\r\n")
        assert await _replies(reader, 1) == [b"554"]
    writer.write(b"QUIT\r\n")
    await _replies(reader, 1)
    writer.close()


def refusals(data_dir: str) -> None:
    log_path = Path(data_dir) / "refusals.log"
    process, port = start_runsmtp(data_dir, log_path)
    try:
        # Warm-up: threads, database connections, allocator arenas.
        asyncio.run(refuse_rcpts(port, 2_000))
        asyncio.run(refuse_messages(port, 5))
        before = rss_kib(process.pid)
        started = time.perf_counter()
        asyncio.run(refuse_rcpts(port, REFUSED_RCPTS))
        after_rcpts = rss_kib(process.pid)
        asyncio.run(refuse_messages(port, REFUSED_MESSAGES))
        after = rss_kib(process.pid)
        elapsed = time.perf_counter() - started
    finally:
        process.terminate()
        process.wait(30)
    print(f"refusal flood against runsmtp ({elapsed:.1f} s)")
    print(f"RSS after warm-up:                           {before / 1024:8.1f} MiB")
    print(f"RSS after {REFUSED_RCPTS:,} refused RCPTs:             {after_rcpts / 1024:8.1f} MiB")
    print(f"RSS after {REFUSED_MESSAGES} refused 1 MB messages as well:  {after / 1024:8.1f} MiB")
    growth = (after - before) / 1024
    verdict = "ok" if growth <= 10 else "OVER"
    print(f"growth:                                      {growth:8.1f} MiB (limit 10 MiB: {verdict})")


async def hold_idle(
    port: int, count: int, addresses: int
) -> tuple[list[asyncio.StreamWriter], dict[bytes, int]]:
    """Open `count` connections from `addresses` loopback addresses (127.0.1.x), read each
    greeting and keep the connections silent. Returns the writers and the greetings by code."""
    writers: list[asyncio.StreamWriter] = []
    codes: dict[bytes, int] = {}

    async def one(n: int) -> None:
        source = f"127.0.1.{1 + n % addresses}"
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        line = await reader.readline()
        codes[line[:3]] = codes.get(line[:3], 0) + 1
        writers.append(writer)

    for start in range(0, count, 250):
        await asyncio.gather(*(one(n) for n in range(start, min(count, start + 250))))
    return writers, codes


def normal_client(port: int) -> tuple[str, float]:
    """One complete transaction from 127.0.0.1; its last reply and how long it took."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        stream = sock.makefile("rb")
        line = stream.readline()
        if not line.startswith(b"220"):
            return line.decode().strip(), time.perf_counter() - started
        for command in (
            b"EHLO bench.example.net",
            b"MAIL FROM:<carol@example.net>",
            b"RCPT TO:<bob@example.com>",
        ):
            sock.sendall(command + b"\r\n")
            while (line := stream.readline())[3:4] == b"-":
                pass
        sock.sendall(b"DATA\r\n")
        stream.readline()
        sock.sendall(b"Subject: normal\r\n\r\nhello\r\n.\r\n")
        line = stream.readline()
        sock.sendall(b"QUIT\r\n")
        stream.readline()
    return line.decode().strip(), time.perf_counter() - started


def connections(data_dir: str) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    log_path = Path(data_dir) / "connections.log"
    process, port = start_runsmtp(data_dir, log_path)
    try:
        idle_before = rss_kib(process.pid)

        async def scenario():
            started = time.perf_counter()
            writers, codes = await hold_idle(port, IDLE_CONNECTIONS, IDLE_ADDRESSES)
            opened = time.perf_counter() - started
            held_rss = rss_kib(process.pid)
            loop = asyncio.get_running_loop()
            during = await loop.run_in_executor(None, normal_client, port)
            await asyncio.sleep(10.5)  # the idle connections are now silent for 10 s
            after = await loop.run_in_executor(None, normal_client, port)
            for writer in writers:
                writer.close()
            return codes, opened, held_rss, during, after

        codes, opened, held_rss, during, after = asyncio.run(scenario())
    finally:
        process.terminate()
        process.wait(30)
    log_lines = log_path.read_text().splitlines()
    held = codes.get(b"220", 0)
    refused = codes.get(b"421", 0)
    print(f"{IDLE_CONNECTIONS:,} idle connections from {IDLE_ADDRESSES} addresses in {opened:.1f} s")
    print(f"greeted 220: {held:,}   refused 421: {refused:,}   other: {IDLE_CONNECTIONS - held - refused}")
    print(
        f"RSS: {idle_before / 1024:.1f} MiB before, {held_rss / 1024:.1f} MiB holding them "
        f"({(held_rss - idle_before) / max(1, held):.1f} KiB per connection)"
    )
    print(
        f"normal client while all places were taken within 10 s: {during[0]!r} in {during[1] * 1000:.0f} ms"
    )
    print(f"normal client once they had been silent 10 s:          {after[0]!r} in {after[1] * 1000:.0f} ms")
    print(f"server log: {len(log_lines)} lines, {log_path.stat().st_size:,} bytes")


if __name__ == "__main__":
    part = sys.argv[1] if len(sys.argv) > 1 else "all"
    data_dir = tempfile.mkdtemp(prefix="everlock-bench-")
    prepare(data_dir, dkim=False)
    if part in ("all", "refusals"):
        refusals(data_dir)
    if part in ("all", "connections"):
        connections(data_dir)
