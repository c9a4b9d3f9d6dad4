"""kill -9 of the whole `everlock serve` process tree under inbound and outbound load.

Run: .venv/bin/python bench/crash.py [CYCLES] [SECONDS]

A throwaway data dir (SQLite, or the database DATABASE_URL names: give an empty one) and
`everlock serve` with inbound SMTP, submission and the delivery worker on loopback. A remote
MX (aiosmtpd) and its DNS (MX and A records) run in this process. Each cycle starts serve,
sends messages for SECONDS from concurrent clients (inbound to bob@example.com on port 25,
submission from alice to remote recipients), and at a random moment stops and SIGKILLs every
process of the tree at once (serve, its listener processes and the delivery worker). Then serve runs
once more, without load, until the queue is empty.

Every message carries its own Message-Id. Printed: messages acknowledged with 250, how many
of them are stored (inbound: filed in bob's inbox; outbound: received by the remote MX), how
many are lost (must be 0), and the copies beyond the first (duplicates).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import os
import random
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # the repository, not bench/ (bench/dns.py would shadow dnspython)

import dns.message
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from aiosmtpd.controller import Controller

from tests.ports import free_port

CLIENTS = 8  # of each kind
CONCURRENCY = 2  # delivery worker processes
SESSIONS = 8  # SMTP sessions at once per worker process and destination
PASSWORD = "alice's long password"


class DNS(socketserver.BaseRequestHandler):
    """The internet's DNS for example.net: its MX is 127.0.0.1."""

    RECORDS = {("example.net.", "MX"): "10 mx.example.net.", ("mx.example.net.", "A"): "127.0.0.1"}

    def handle(self):
        data, sock = self.request
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        question = query.question[0]
        key = (question.name.to_text().lower(), dns.rdatatype.to_text(question.rdtype))
        if key in self.RECORDS:
            response.answer.append(
                dns.rrset.from_text(question.name, 300, dns.rdataclass.IN, key[1], self.RECORDS[key])
            )
        sock.sendto(response.to_wire(), self.client_address)


class RemoteMX:
    """The remote MX: counts each Message-Id it accepts."""

    def __init__(self):
        self.received: collections.Counter[str] = collections.Counter()

    async def handle_DATA(self, server, session, envelope):
        mid = message_id(envelope.original_content)
        for _ in envelope.rcpt_tos:
            self.received[mid] += 1
        return "250 2.0.0 queued"


def message_id(data: bytes) -> str:
    for line in data.split(b"\r\n"):
        if line.lower().startswith(b"message-id:"):
            return line.split(b":", 1)[1].strip().decode()
        if not line:
            break
    return ""


async def send_one(port: int, mid: str, *, auth: bool) -> bool:
    """One SMTP transaction; True when the message was acknowledged with 250."""
    sender, rcpt = (
        ("alice@example.com", "carol@example.net") if auth else ("dave@example.org", "bob@example.com")
    )
    data = (
        f"From: {sender}\r\nTo: {rcpt}\r\nSubject: crash test\r\nMessage-Id: {mid}\r\n\r\n"
        + ("x" * 76 + "\r\n") * 13
    ).encode()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    except (OSError, TimeoutError):
        return False
    try:

        async def reply() -> bytes:
            while True:
                line = await asyncio.wait_for(reader.readline(), 30)
                if not line:
                    raise ConnectionError("closed")
                if line[3:4] != b"-":
                    return line

        await reply()
        commands = [b"EHLO load.example.org"]
        if auth:
            commands.append(b"AUTH PLAIN " + base64.b64encode(f"\0alice\0{PASSWORD}".encode()))
        commands += [f"MAIL FROM:<{sender}>".encode(), f"RCPT TO:<{rcpt}>".encode(), b"DATA"]
        for command in commands:
            writer.write(command + b"\r\n")
            if (await reply())[:1] not in b"23":
                return False
        writer.write(data + b".\r\n")
        return (await reply()).startswith(b"250")
    except (OSError, ConnectionError, TimeoutError):
        return False
    finally:
        writer.close()


async def load(ports: dict, acknowledged: dict, stop: threading.Event, cycle: int) -> None:
    async def client(kind: str, n: int) -> None:
        seq = 0
        while not stop.is_set():
            seq += 1
            mid = f"<{kind}-{cycle}-{n}-{seq}@bench.example>"
            port = ports["submission"] if kind == "outbound" else ports["smtp"]
            if await send_one(port, mid, auth=kind == "outbound"):
                acknowledged[kind].add(mid)
            elif stop.is_set():
                return
            else:
                await asyncio.sleep(0.05)

    await asyncio.gather(*(client(kind, n) for kind in ("inbound", "outbound") for n in range(CLIENTS)))


def tree(pid: int) -> list[int]:
    """`pid` and every process descending from it (from /proc)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children[ppid].append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def kill_tree(process: subprocess.Popen) -> int:
    pids = tree(process.pid)
    for pid in pids:  # freeze all first, so that none reacts to another's death
        with contextlib.suppress(ProcessLookupError):  # it has exited meanwhile
            os.kill(pid, signal.SIGSTOP)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait(30)
    return len(pids)


def start_serve(env: dict, ports: dict, log) -> subprocess.Popen:
    serve = subprocess.Popen(
        [
            sys.executable, "manage.py", "serve",
            "--frontend-smtp", "--frontend-smtp-listen", f"127.0.0.1:{ports['smtp']}",
            "--frontend-smtp-submission",
            "--frontend-smtp-submission-listen", f"127.0.0.1:{ports['submission']}",
            "--backend-mail-smtp",
        ],
        cwd=ROOT, env=env, stdout=log, stderr=log, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    for port in (ports["smtp"], ports["submission"]):
        while True:
            if serve.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"everlock serve did not start (see {log.name})")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.2)
    return serve


def main() -> None:
    cycles = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 6.0
    data_dir = tempfile.mkdtemp(prefix="everlock-crash-")
    dns_server = socketserver.ThreadingUDPServer(("127.0.0.1", 0), DNS)
    threading.Thread(target=dns_server.serve_forever, daemon=True).start()
    mx = RemoteMX()
    controller = Controller(mx, hostname="127.0.0.1", port=free_port())
    controller.start()
    ports = {"smtp": free_port(), "submission": free_port()}
    env = {k: v for k, v in os.environ.items() if k not in ("CELERY_BROKER_URL",)}
    env.update(
        EVERLOCK_DATA_DIR=data_dir,
        EVERLOCK_LOG="warning",
        EVERLOCK_RESOLVER=f"127.0.0.1:{dns_server.server_address[1]}",
        EVERLOCK_REMOTE_SMTP_PORT=str(controller.port),
        # Rows a killed worker had claimed are due again this soon (seconds), so the queue
        # drains quickly; a live worker renews its claim before each message it sends.
        EVERLOCK_QUEUE_FIRST_RETRY="2",
        EVERLOCK_QUEUE_MAX_RETRY="2",
        EVERLOCK_QUEUE_SCAN_INTERVAL="1",
        EVERLOCK_DELIVERY_CONCURRENCY=str(CONCURRENCY),
        EVERLOCK_DELIVERY_SESSIONS=str(SESSIONS),
        EVERLOCK_AUTH_MAX_FAILURES_PER_ADDRESS="100000",
    )
    os.environ.update(env)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "everlock_site.settings")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from accounts.services import grant_add, user_add
    from mail.models import MailDomain, Message, OutboundDelivery

    call_command("migrate", interactive=False, verbosity=0)
    call_command("createcachetable", verbosity=0)
    MailDomain.objects.create(name="example.com", submission_enabled=True)
    user_add(name="alice", password=PASSWORD)
    grant_add(name="alice", resource="smtp/mail/example.com:alice", role="writer")
    from mail.services.mailboxes import mailbox_create

    mailbox_create(address="bob@example.com")
    connection.close()

    acknowledged: dict[str, set[str]] = {"inbound": set(), "outbound": set()}
    killed = 0
    with open(Path(data_dir) / "serve.log", "a") as log:
        for cycle in range(cycles):
            serve = start_serve(env, ports, log)
            stop = threading.Event()
            loader = threading.Thread(target=asyncio.run, args=(load(ports, acknowledged, stop, cycle),))
            loader.start()
            time.sleep(random.uniform(seconds / 2, seconds))
            killed += kill_tree(serve)
            stop.set()
            loader.join(60)
            print(
                f"cycle {cycle + 1}: killed; acknowledged so far: {len(acknowledged['inbound'])} inbound, "
                f"{len(acknowledged['outbound'])} outbound",
                flush=True,
            )
        serve = start_serve(env, ports, log)
        deadline = time.monotonic() + 300
        while OutboundDelivery.objects.filter(status=OutboundDelivery.Status.QUEUED).exists():
            if time.monotonic() > deadline:
                print("the queue did not drain within 300 s")
                break
            time.sleep(1)
        time.sleep(3)  # a delivery recorded a moment before the check has arrived by now
        os.killpg(serve.pid, signal.SIGTERM)
        serve.wait(60)
    controller.stop()
    dns_server.shutdown()

    stored = collections.Counter(
        Message.objects.filter(folder__mailbox__local_part="bob", folder__name="inbox").values_list(
            "message_id", flat=True
        )
    )
    print(
        f"\n{cycles} kill -9 of the whole process tree ({killed} processes in all), "
        f"{CLIENTS} clients of each kind"
    )
    print(f"{'':<9} {'acknowledged':>12} {'stored':>8} {'lost':>6} {'duplicates':>11}")
    for kind, counts in (("inbound", stored), ("outbound", mx.received)):
        acked = acknowledged[kind]
        kept = sum(1 for mid in acked if counts[mid])
        duplicates = sum(n - 1 for mid, n in counts.items() if n > 1)
        print(f"{kind:<9} {len(acked):>12} {kept:>8} {len(acked) - kept:>6} {duplicates:>11}")
    print(
        "(outbound: stored = received by the remote MX; at most "
        f"{CONCURRENCY * SESSIONS} duplicates per crash expected, one per session)"
    )


if __name__ == "__main__":
    main()
