"""How soon a client in IMAP IDLE hears of mail filed by another process.

Starts `everlock serve` (inbound SMTP, the delivery backend, IMAP) in a throw-away data dir,
logs a client in, selects INBOX and enters IDLE; then, one message at a time, sends mail to
port 25 and times from the SMTP `250` (the message is committed) to the client's `EXISTS`.
Prints the median, 90th percentile and maximum.

    .venv/bin/python bench/imap_push.py                 (SQLite: the watcher's timed look)
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test .venv/bin/python bench/imap_push.py
                                                        (PostgreSQL: LISTEN/NOTIFY; uses a
                                                         database of its own, dropped after)

BENCH_MESSAGES (default 50) sets how many messages are timed.
"""

from __future__ import annotations

import os
import smtplib
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])

from imapclient import IMAPClient

from tests.ports import free_port
from tests.postgres import create_database, drop_database, is_postgres

ROOT = Path(__file__).resolve().parents[1]
EVERLOCK = ROOT / ".venv" / "bin" / "everlock"


SETUP = """
from accounts.services import grant_add, user_add
from mail.services.domains import domain_create
domain_create(name="example.com")
user_add(name="carol", password="carol-secret-1")
grant_add(name="carol", resource="smtp/mail/example.com:carol", role="writer")
"""


def main() -> None:
    count = int(os.environ.get("BENCH_MESSAGES", "50"))
    data_dir = Path(tempfile.mkdtemp(prefix="everlock-bench-push-"))
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env.update(EVERLOCK_DATA_DIR=str(data_dir), EVERLOCK_LOG="mail.imap=info")
    pg_url, pg_name = os.environ.get("DATABASE_URL", ""), ""
    if is_postgres(pg_url):
        pg_name = f"everlock_bench_{uuid.uuid4().hex[:10]}"
        env["DATABASE_URL"] = create_database(pg_url, pg_name)
    smtp, imap = free_port("127.0.0.1"), free_port("127.0.0.1")
    flags = [
        "--frontend-smtp",
        "--frontend-smtp-listen",
        f"127.0.0.1:{smtp}",
        "--backend-mail-smtp",
        "--frontend-imap-listen",
        f"127.0.0.1:{imap}",
    ]
    with open(data_dir / "serve.log", "w") as log:
        server = subprocess.Popen(
            [str(EVERLOCK), "serve", *flags], env=env, cwd=data_dir, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 60
        while "IMAP listener" not in (data_dir / "serve.log").read_text():
            assert time.monotonic() < deadline and server.poll() is None, (data_dir / "serve.log").read_text()
            time.sleep(0.1)
        subprocess.run([str(EVERLOCK), "shell", "-c", SETUP], env=env, cwd=data_dir, check=True)
        waits = measure(smtp, imap, count)
    finally:
        server.terminate()
        server.wait(60)
        if pg_name:
            drop_database(pg_url, pg_name)
    database = "PostgreSQL (LISTEN/NOTIFY)" if pg_name else "SQLite (timed look every 0.25 s)"
    waits.sort()
    print(f"IMAP IDLE push, {database}: {len(waits)} messages")
    print(
        f"  SMTP 250 -> IDLE EXISTS: median {statistics.median(waits) * 1000:.0f} ms, "
        f"90th percentile {waits[int(len(waits) * 0.9) - 1] * 1000:.0f} ms, max {waits[-1] * 1000:.0f} ms "
        f"(target: under 1 s)"
    )


def measure(smtp_port: int, imap_port: int, count: int) -> list[float]:
    waits = []
    with IMAPClient("127.0.0.1", port=imap_port, ssl=False, timeout=30) as client:
        client.login("carol", "carol-secret-1")
        client.select_folder("INBOX")
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as sender:
            for n in range(count):
                client.idle()
                sender.sendmail(
                    "zoe@example.net",
                    ["carol@example.com"],
                    f"From: zoe@example.net\r\nSubject: push {n}\r\n\r\nHello.\r\n".encode(),
                )
                sent = time.monotonic()
                while True:
                    responses = client.idle_check(timeout=10)
                    if any(r[1:2] == (b"EXISTS",) for r in responses):
                        break
                    assert time.monotonic() - sent < 10, "no EXISTS within 10 s"
                waits.append(time.monotonic() - sent)
                client.idle_done()
    return waits


if __name__ == "__main__":
    main()
