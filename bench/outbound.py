"""Outbound delivery throughput: M queued messages through 2 Celery worker processes to a
local sink.

Sets up its own data dir (SQLite, embedded broker, or DATABASE_URL / CELERY_BROKER_URL when
given), a local DNS server whose MX for example.net points at 127.0.0.1, and an aiosmtpd
sink standing in for the remote MX. Starts the workers, waits until they deliver a warm-up
message, queues M messages as the submission listener commits them (--chunk per transaction:
the files, the sent copies and the queue rows) and times until the sink holds them all.

    .venv/bin/python bench/outbound.py [--messages 2000] [--workers 2] [--chunk 100]
    .venv/bin/python bench/outbound.py relay [--messages 2000] [--without-postfix]

Prints the queueing time and the delivered msgs/s, both from the first enqueue (after the
queueing process has started) to the last message received.

`relay` measures the whole path instead, against Postfix: authenticated submission (AUTH
PLAIN, 20 client connections, one message each) of M messages for a remote recipient until
the last reaches the sink, through `everlock serve` (its listener processes and delivery
worker, DKIM-signing) and through a private Postfix 3.7 with Cyrus SASL relaying to the same
kind of sink (needs root, Debian's postfix and sasl2-bin; without them the Postfix row is
left out).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Import from the repository root; bench/ stays off the path (bench/dns.py would shadow dnspython).
sys.path[0] = str(Path(__file__).resolve().parents[1])

import dns.message
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from aiosmtpd.smtp import SMTP

from bench.dns import _cpu_ns as _cpu_ns_by_child

QUEUE = """
import time
from django.db import transaction
from mail.models import MailDomain
from mail.services.mailboxes import mailbox_create
from mail.services.storage import StoredFiles
from mail.message import parse_message
from mail.services.submission import PreparedSubmission, commit_submission_many
domain, _ = MailDomain.objects.get_or_create(name="example.com")
alice, _ = mailbox_create(address="alice@example.com")
start, count, chunk = {start}, {count}, {chunk}
print(time.monotonic(), flush=True)  # the first enqueue: the clock is the machine's, shared
for base in range(start, start + count, chunk):
    batch = []
    for n in range(base, min(base + chunk, start + count)):
        raw = (f"From: alice@example.com\\r\\nTo: bob@example.net\\r\\n"
               f"Message-Id: <b{{n}}@example.com>\\r\\n"
               f"Subject: bench {{n}}\\r\\n\\r\\n" + ("x" * 98 + "\\r\\n") * 10).encode()
        batch.append(PreparedSubmission(
            raw=raw, parsed=parse_message(raw), envelope_from="alice@example.com",
            domain_id=domain.id, sender_local="alice",
            sender_mailbox_id=alice.id, mailbox_ids=(), remote=("bob@example.net",),
            helo_hostname="out.example.com"))
    # As the submission listener's group commit does: the chunk's files, sent copies and
    # queue rows in one transaction.
    with StoredFiles() as files, transaction.atomic():
        commit_submission_many(items=[{{"prepared": p}} for p in batch], files=files)
"""


class Handler:
    def __init__(self):
        self.count = 0
        self.done = threading.Event()
        self.target = 1

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        if self.count >= self.target:
            self.done.set()
        return "250 2.0.0 queued"


def start_sink(handler: Handler) -> int:
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    async def create():
        return await loop.create_server(lambda: SMTP(handler, hostname="mx.example.net"), "127.0.0.1", 0)

    server = asyncio.run_coroutine_threadsafe(create(), loop).result(10)
    return server.sockets[0].getsockname()[1]


def start_dns() -> int:
    """MX example.net -> mx.example.net -> 127.0.0.1, over UDP."""

    class UDP(socketserver.BaseRequestHandler):
        def handle(self):
            data, sock = self.request
            query = dns.message.from_wire(data)
            response = dns.message.make_response(query)
            q = query.question[0]
            name, rdtype = q.name.to_text(), dns.rdatatype.to_text(q.rdtype)
            answers = {("example.net.", "MX"): "10 mx.example.net.", ("mx.example.net.", "A"): "127.0.0.1"}
            if (name, rdtype) in answers:
                response.answer.append(
                    dns.rrset.from_text(q.name, 300, dns.rdataclass.IN, rdtype, answers[(name, rdtype)])
                )
            sock.sendto(response.to_wire(), self.client_address)

    server = socketserver.ThreadingUDPServer(("127.0.0.1", 0), UDP)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1]


def _children(pid: int) -> list[int]:
    return [
        int(child)
        for task in Path(f"/proc/{pid}/task").glob("*")
        for child in (task / "children").read_text().split()
    ]


def _cpu_ns(root: int) -> int:
    """CPU time (ns) used so far by process `root` and all its descendants."""
    return sum(_cpu_ns_by_child(root).values())


def _cpu_seconds(root: int, word: str) -> float:
    """CPU seconds used so far by the process trees under `root` whose top process's command
    line holds `word` ("" for all of `root`'s tree)."""
    if not word:
        return _cpu_ns(root) / 1e9
    total, todo = 0, _children(root)
    while todo:
        pid = todo.pop()
        if word.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
            total += _cpu_ns(pid)
        else:
            todo.extend(_children(pid))
    return total / 1e9


def _relay_through(port: int, handler: Handler, messages: int) -> float:
    """Submit `messages` to `port` as alice; msgs/s until the sink has them all."""
    from bench.smtp_load import drive

    handler.count, handler.target = 0, messages
    handler.done.clear()
    started = time.monotonic()
    asyncio.run(drive(port, sender="alice@example.com", rcpt="bob@example.net", auth=("alice", "change-me"),
                      messages=messages))  # fmt: skip
    submitted, arrived = time.monotonic() - started, handler.count
    if not handler.done.wait(600):
        sys.exit(f"only {handler.count} of {messages} relayed messages arrived")
    elapsed = time.monotonic() - started
    if messages > 100:
        print(
            f"  submitted in {submitted:.2f} s ({arrived} had arrived), "
            f"the last arrived after {elapsed:.2f} s"
        )
    return messages / elapsed


def relay(messages: int, *, peer: bool = True) -> None:
    from bench.smtp_load import _everlock_server, prepare, start
    from bench.smtp_submission import _postfix_settings, _sasl_database
    from tests.postfix import available, running_postfix

    handler = Handler()
    sink_port = start_sink(handler)
    dns_port = start_dns()
    data_dir = tempfile.mkdtemp(prefix="everlock-bench-")
    os.environ.update(
        EVERLOCK_LOG="warning",
        EVERLOCK_RESOLVER=f"127.0.0.1:{dns_port}",
        EVERLOCK_REMOTE_SMTP_PORT=str(sink_port),
        EVERLOCK_CELERY_QUEUE=f"everlock-bench-{uuid.uuid4().hex[:8]}",
        # All the load comes from one address: the per-client limit (20) must not bite.
        EVERLOCK_SMTP_MAX_CONNECTIONS_PER_CLIENT="100",
    )
    prepare(data_dir, dkim=True)
    ours, ports = start(_everlock_server, data_dir)
    rows = []
    try:
        _relay_through(ports[1], handler, 20)  # warm-up
        before = _cpu_seconds(ours.pid, "celery"), _cpu_seconds(ours.pid, "")
        rows.append(("everlock (DKIM-signed)", _relay_through(ports[1], handler, messages)))
        worker_ms, total_ms = (
            (_cpu_seconds(ours.pid, word) - spent) * 1000 / messages
            for word, spent in zip(("celery", ""), before, strict=True)
        )
    finally:
        ours.terminate()
    if not peer:
        pass
    elif available() and shutil.which("saslpasswd2"):
        from django.conf import settings

        from tls.store import self_signed_pair

        cert, key = self_signed_pair(directory=Path(settings.DATA_DIR) / "tls", hostname="localhost")
        with running_postfix(
            cert=cert,
            key=key,
            transport={"example.net": f"[127.0.0.1]:{sink_port}"},
            virtual_domain="example.com",
            settings=_postfix_settings(None),
            prepare=_sasl_database,
            chroot=True,
        ) as postfix:
            _relay_through(postfix.port, handler, 20)
            rows.append(("postfix 3.7 + SASL (no DKIM)", _relay_through(postfix.port, handler, messages)))
    else:
        print("postfix or saslpasswd2 missing (or not root): no Postfix row")
    print(f"relay end to end: {messages} messages of 2 KB submitted with AUTH PLAIN over 20 connections")
    print("to a remote recipient, until the last reaches the sink")
    for name, rate in rows:
        print(f"  {name:30s} {rate:8.1f} msgs/s")
    print(
        f"  everlock CPU per message:      {total_ms:8.2f} ms, "
        f"of which the delivery worker {worker_ms:.2f} ms"
    )
    if len(rows) == 2:
        print(f"  everlock / postfix:            {rows[0][1] / rows[1][1]:8.2f}x (goal 1.0x)")


def main() -> None:
    if sys.argv[1:2] == ["relay"]:
        parser = argparse.ArgumentParser()
        parser.add_argument("--messages", type=int, default=2000)
        parser.add_argument("--without-postfix", action="store_true", help="leave the Postfix row out")
        args = parser.parse_args(sys.argv[2:])
        relay(args.messages, peer=not args.without_postfix)
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=100)
    args = parser.parse_args()

    handler = Handler()
    port = start_sink(handler)
    dns_port = start_dns()
    data_dir = tempfile.mkdtemp(prefix="everlock-bench-")
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL" or v.startswith("postgres")}
    env.update(
        EVERLOCK_DATA_DIR=data_dir,
        EVERLOCK_LOG="warning",
        EVERLOCK_RESOLVER=f"127.0.0.1:{dns_port}",
        EVERLOCK_REMOTE_SMTP_PORT=str(port),
        EVERLOCK_CELERY_QUEUE=f"everlock-bench-{uuid.uuid4().hex[:8]}",
    )
    manage = [sys.executable, str(ROOT / "manage.py")]
    if env.get("DATABASE_URL"):
        print("DATABASE_URL is set: the bench flushes nothing, use a database of its own")
    subprocess.run([*manage, "migrate", "-v0"], env=env, cwd=ROOT, check=True)
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "everlock_site",
                "worker",
                "--concurrency",
                "1",
                "-n",
                f"bench{n}@%h",
                "--without-mingle",
                "--without-gossip",
                "--without-heartbeat",
                "--loglevel",
                "warning",
            ],
            env=env,
            cwd=ROOT,
        )
        for n in range(args.workers)
    ]
    try:
        handler.target = 1
        subprocess.run(
            [*manage, "shell", "-v0", "-c", QUEUE.format(start=0, count=1, chunk=1)],
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        if not handler.done.wait(60):
            sys.exit("the warm-up message was not delivered")
        handler.done.clear()
        handler.target = 1 + args.messages
        cpu_before = sum(_cpu_ns(w.pid) for w in workers)
        queueing = subprocess.run(
            [*manage, "shell", "-v0", "-c", QUEUE.format(start=1, count=args.messages, chunk=args.chunk)],
            env=env, cwd=ROOT, check=True, capture_output=True, text=True,
        )  # fmt: skip
        started = float(queueing.stdout.split()[0])
        queued = time.monotonic() - started
        if not handler.done.wait(600):
            sys.exit(f"only {handler.count - 1} of {args.messages} messages arrived")
        elapsed = time.monotonic() - started
        worker_ms = (sum(_cpu_ns(w.pid) for w in workers) - cpu_before) / 1e6 / args.messages
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(30)
    print(f"{args.messages} messages, {args.workers} worker processes, {args.chunk} per queueing transaction")
    print(f"queued in {queued:.2f} s")
    print(f"all delivered after {elapsed:.2f} s: {args.messages / elapsed:.0f} msgs/s")
    print(f"delivery workers' CPU: {worker_ms:.2f} ms per message")


if __name__ == "__main__":
    main()
