"""Shared load driver for the SMTP benchmarks (bench/smtp_inbound.py, bench/smtp_submission.py).

Each server under test runs in its own process; this process only drives the load: N
concurrent clients, one connection per message, each a complete SMTP transaction.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import multiprocessing
import os
import ssl
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = 20
MESSAGES = int(os.environ.get("BENCH_MESSAGES", "1000"))
# Each server gets the same untimed warm-up (a message per client: connections, caches, the
# first login's password check), then ROUNDS timed rounds, the two servers' rounds taking
# turns (so that both meet the same machine, whatever else it is doing at the time); the
# best round of each counts.
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))


def setup_django(data_dir: str) -> None:
    os.environ["EVERLOCK_DATA_DIR"] = data_dir
    os.environ.setdefault("EVERLOCK_LOG", "warning")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "everlock_site.settings")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def message(size: int = 2048) -> bytes:
    head = b"From: alice@example.com\r\nTo: bob@example.com\r\nSubject: bench\r\n\r\n"
    line = b"x" * 70 + b"\r\n"
    body = line * ((size - len(head)) // len(line))
    return head + body


async def _expect(reader: asyncio.StreamReader, code: bytes) -> None:
    while True:
        line = await reader.readline()
        if not line.startswith(code):
            raise RuntimeError(f"expected {code!r}, got {line!r}")
        if line[3:4] != b"-":
            return


@functools.cache
def _client_tls() -> ssl.SSLContext:
    # The servers under test have self-signed certificates: encrypt, do not verify. One
    # context for all connections (making one loads the system's CA list).
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def one_message(
    port: int, *, sender: str, rcpt: str, data: bytes, auth: bytes | None, starttls: bool = False
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await _expect(reader, b"220")
        writer.write(b"EHLO bench.example.net\r\n")
        await _expect(reader, b"250")
        if starttls:
            writer.write(b"STARTTLS\r\n")
            await _expect(reader, b"220")
            await writer.start_tls(_client_tls())
            writer.write(b"EHLO bench.example.net\r\n")
            await _expect(reader, b"250")
        if auth is not None:
            writer.write(b"AUTH PLAIN " + auth + b"\r\n")
            await _expect(reader, b"235")
        writer.write(f"MAIL FROM:<{sender}>\r\n".encode())
        await _expect(reader, b"250")
        writer.write(f"RCPT TO:<{rcpt}>\r\n".encode())
        await _expect(reader, b"250")
        writer.write(b"DATA\r\n")
        await _expect(reader, b"354")
        writer.write(data + b".\r\n")
        await _expect(reader, b"250")
        writer.write(b"QUIT\r\n")
        await _expect(reader, b"221")
    finally:
        writer.close()


async def drive(
    port: int,
    *,
    sender: str,
    rcpt: str,
    auth: tuple[str, str] | None,
    messages: int = MESSAGES,
    starttls: bool = False,
    size: int = 2048,
    data: bytes | None = None,
) -> float:
    """Send `messages` messages (`data`, else message(size)) with CLIENTS concurrent clients
    (each with STARTTLS when `starttls`); return messages per second."""
    data = data or message(size)
    blob = base64.b64encode(f"\0{auth[0]}\0{auth[1]}".encode()) if auth else None
    remaining = messages

    async def client() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await one_message(port, sender=sender, rcpt=rcpt, data=data, auth=blob, starttls=starttls)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return messages / (time.perf_counter() - started)


def measure(
    ports: list[int],
    *,
    sender: str,
    rcpt: str,
    auth: tuple[str, str] | None,
    starttls: bool = False,
    data: bytes | None = None,
) -> list[list[float]]:
    """The warm-up of each server, then ROUNDS timed rounds taking turns: the msgs/s of each
    round, per server."""
    return measure_cpu(ports, [()] * len(ports), sender=sender, rcpt=rcpt, auth=auth,
                       starttls=starttls, data=data)[0]  # fmt: skip


def measure_cpu(
    ports: list[int],
    processes: list[tuple[int, ...]],
    *,
    sender: str,
    rcpt: str,
    auth: tuple[str, str] | None,
    starttls: bool = False,
    data: bytes | None = None,
) -> tuple[list[list[float]], list[list[float]]]:
    """measure(), and the CPU milliseconds per message each server spent in each round: the
    processes `processes[i]` and their descendants (cpu_seconds); none measured for ()."""
    load = {"sender": sender, "rcpt": rcpt, "auth": auth, "starttls": starttls, "data": data}
    for port in ports:
        asyncio.run(drive(port, messages=CLIENTS, **load))
    rates: list[list[float]] = [[] for _ in ports]
    cpu: list[list[float]] = [[] for _ in ports]
    for _ in range(ROUNDS):
        for port, roots, rounds, spent in zip(ports, processes, rates, cpu, strict=True):
            before = sum(map(cpu_seconds, roots))
            rounds.append(asyncio.run(drive(port, **load)))
            if roots:
                spent.append(1000 * (sum(map(cpu_seconds, roots)) - before) / MESSAGES)
    return rates, cpu


def cpu_seconds(root: int) -> float:
    """CPU time (user and system) process `root` and its descendants have used: those alive
    now, and those that ended and were reaped by one of them (a process's reaped children
    count in its cutime/cstime, proc(5)). A server that forks a process per connection, as
    Postfix does, is measured whole."""
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                line = stat.read()
        except OSError:  # ended meanwhile
            continue
        # After the command name in parentheses: state, ppid, ..., utime, stime, cutime, cstime.
        fields = line[line.rindex(b")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
        ticks[int(entry)] = sum(int(v) for v in fields[11:15])
    total, pending = 0, [root]
    while pending:
        pid = pending.pop()
        total += ticks.get(pid, 0)
        pending.extend(children.get(pid, ()))
    return total / os.sysconf("SC_CLK_TCK")


def _cpu_summary(values: list[float]) -> str:
    """The CPU per message of a server's rounds: the median, and the range."""
    if not values:
        return ""
    ordered = sorted(values)
    return f"{ordered[len(ordered) // 2]:6.2f} ms CPU/msg ({ordered[0]:.2f}-{ordered[-1]:.2f})"


def _bare_server(ready, auth: bool, cert: str = "", key: str = "") -> None:
    """aiosmtpd accepting everything (any login with `auth`), STARTTLS with `cert`/`key`."""
    import logging

    from aiosmtpd.smtp import SMTP, AuthResult

    # aiosmtpd warns at every AUTH that it sets its deprecated Session.login_data: no line
    # per message on the terminal while measuring (Everlock's logging drops it too).
    logging.getLogger("mail.log").setLevel(logging.ERROR)

    context = None
    if cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)

    class Discard:
        async def handle_DATA(self, server, session, envelope):
            return "250 2.0.0 Accepted"

    def authenticator(server, session, envelope, mechanism, auth_data):
        return AuthResult(success=True)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SMTP(
                Discard(),
                auth_require_tls=False,
                authenticator=authenticator if auth else None,
                tls_context=context,
            ),
            "127.0.0.1",
            0,
        )
        ready.put(server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    asyncio.run(main())


def _everlock_server(ready, data_dir: str, env: dict[str, str] | None = None) -> None:
    """`everlock serve` with inbound SMTP and submission on two free loopback ports, as
    deployed: its listener processes (BENCH_PROCESSES, default one per core) share them."""
    import signal
    import socket
    import subprocess

    os.environ.update(env or {})

    # Both probes stay bound until both ports are read, so the kernel cannot give one twice.
    with socket.socket() as first, socket.socket() as second:
        first.bind(("127.0.0.1", 0))
        second.bind(("127.0.0.1", 0))
        ports = [first.getsockname()[1], second.getsockname()[1]]
    processes = os.environ.get("BENCH_PROCESSES")
    env = {**os.environ, "EVERLOCK_DATA_DIR": data_dir, "EVERLOCK_LOG": "warning,everlock=info"}
    serve = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "serve", *(["--processes", processes] if processes else []),
         "--backend-mail-smtp", "--frontend-smtp", "--frontend-smtp-listen", f"127.0.0.1:{ports[0]}",
         "--frontend-smtp-submission", "--frontend-smtp-submission-listen", f"127.0.0.1:{ports[1]}"],
        env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    signal.signal(signal.SIGTERM, lambda *_: (serve.terminate(), serve.wait(60), os._exit(0)))
    for line in serve.stderr:
        if "serving:" in line:
            break
        if "Error" in line:
            raise RuntimeError(line)
    ready.put(ports)
    for line in serve.stderr:
        sys.stderr.write(line)
    serve.wait()


def start(target, *args, daemon: bool = True):
    """Run target(ready, *args) in a new process; returns it and what it put on `ready`. A
    server that starts processes of its own runs with `daemon` False (the caller terminates
    it)."""
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Queue()
    process = ctx.Process(target=target, args=(ready, *args), daemon=daemon)
    process.start()
    return process, ready.get(timeout=60)


def prepare(data_dir: str, *, dkim: bool) -> None:
    """Migrate a fresh database in data_dir with example.com, bob and alice (change-me)."""
    setup_django(data_dir)
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)
    call_command("createcachetable", verbosity=0)
    from accounts.services import grant_add, user_add
    from mail.dkim.keys import generate_ed25519_pem, generate_rsa_pem
    from mail.models import MailDomain

    MailDomain.objects.create(
        name="example.com",
        submission_enabled=True,
        dkim_enabled=dkim,
        dkim_private_key_pem=generate_ed25519_pem() if dkim else "",
        dkim_rsa_private_key_pem=generate_rsa_pem() if dkim else "",
    )
    user_add(name="alice", password="change-me")
    grant_add(name="alice", resource="smtp/mail/example.com:alice", role="writer")
    grant_add(name="alice", resource="smtp/mail/example.com:bob", role="reader")


def _rounds(rates: list[float]) -> str:
    return ", ".join(f"{r:.1f}" for r in rates)
