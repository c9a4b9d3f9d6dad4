"""Durability of the outbound queue with real `celery -A everlock_site worker` processes.

The database is a fresh one of each test's own (SQLite in its data dir, or a new PostgreSQL
database when DATABASE_URL names PostgreSQL); the broker is the embedded spool, or
EVERLOCK_TEST_BROKER_URL (CI: redis://127.0.0.1:6379/0) with a queue name of the test's own.
"""

from __future__ import annotations

import asyncio
import email
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.postgres import create_database, drop_database, is_postgres

ROOT = Path(__file__).resolve().parents[3]

QUEUE = """
import sys
from django.db import transaction
from mail.models import MailDomain
from mail.services.enqueue import enqueue_remote
from mail.services.mailboxes import mailbox_create
from mail.services.storage import StoredFiles, store_content
MailDomain.objects.get_or_create(name="example.com")
mailbox_create(address="alice@example.com")
start, count = {start}, {count}
for n in range(start, start + count):
    raw = (f"From: alice@example.com\\r\\nTo: bob@example.net\\r\\nMessage-Id: <n{{n}}@example.com>\\r\\n"
           f"Subject: {{n}}\\r\\n\\r\\nbody {{n}}\\r\\n").encode()
    with StoredFiles() as files, transaction.atomic():
        content = store_content(raw, files=files)
        enqueue_remote(content=content, envelope_from="alice@example.com",
                       recipients=["bob@example.net"], helo_hostname="out.example.com")
"""

STATUS = """
from mail.models import OutboundDelivery
print(sorted(set(OutboundDelivery.objects.values_list("status", flat=True))))
"""


class Installation:
    """An environment for worker processes, and the processes started in it."""

    def __init__(self, tmp_path: Path, dns_spec: str, port: int):
        self.tmp_path = tmp_path
        self.env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")}
        self.env.update(
            EVERLOCK_DATA_DIR=str(tmp_path),
            EVERLOCK_LOG="warning,mail.delivery=info",
            EVERLOCK_RESOLVER=dns_spec,
            EVERLOCK_REMOTE_SMTP_PORT=str(port),
            EVERLOCK_QUEUE_SCAN_INTERVAL="1",
            EVERLOCK_CELERY_QUEUE=f"everlock-test-{uuid.uuid4().hex[:12]}",
        )
        self.pg_name = ""
        url = os.environ.get("DATABASE_URL", "")
        if is_postgres(url):
            self.pg_url = url
            self.pg_name = f"everlock_w{uuid.uuid4().hex[:10]}"
            self.env["DATABASE_URL"] = create_database(url, self.pg_name)
        if os.environ.get("EVERLOCK_TEST_BROKER_URL"):
            self.env["CELERY_BROKER_URL"] = os.environ["EVERLOCK_TEST_BROKER_URL"]
        self.workers: list[subprocess.Popen] = []
        self.manage("migrate", "-v0")

    def manage(self, *args: str) -> str:
        return subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), *args],
            env=self.env, cwd=ROOT, check=True, timeout=180, capture_output=True, text=True,
        ).stdout  # fmt: skip

    def queue(self, start: int, count: int) -> None:
        self.manage("shell", "-v0", "-c", QUEUE.format(start=start, count=count))

    def statuses(self) -> list[str]:
        return eval(self.manage("shell", "-v0", "-c", STATUS))

    def start_worker(self, name: str, **extra_env: str) -> subprocess.Popen:
        with open(self.tmp_path / f"{name}.log", "a") as log:
            proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "everlock_site", "worker", "--concurrency", "1",
             "-n", f"{name}@%h", "--without-mingle", "--without-gossip", "--without-heartbeat",
             "--loglevel", "warning"],
                env={**self.env, **extra_env}, cwd=ROOT, stdout=log, stderr=log,
                start_new_session=True,
            )  # fmt: skip
        self.workers.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen) -> None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def stop(self, proc: subprocess.Popen) -> int:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                return proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                return proc.wait(10)
        return proc.returncode

    def close(self) -> None:
        for proc in self.workers:
            self.stop(proc)
        if self.pg_name:
            drop_database(self.pg_url, self.pg_name)

    def purge_broker(self) -> None:
        subprocess.run(
            [sys.executable, "-m", "celery", "-A", "everlock_site", "purge", "-f",
             "-Q", self.env["EVERLOCK_CELERY_QUEUE"]],
            env=self.env, cwd=ROOT, check=True, timeout=60, capture_output=True,
        )  # fmt: skip


@pytest.fixture
def installation(tmp_path, dns_server, sink):
    remote = sink()
    dns_server.zone.add("example.net", "MX", "10 mx.example.net.")
    dns_server.zone.add("mx.example.net", "A", "127.0.0.1")
    inst = Installation(tmp_path, dns_server.spec, remote.port)
    inst.sink = remote
    yield inst
    inst.close()


def message_ids(sink) -> list[str]:
    return [email.message_from_bytes(r.data)["Message-Id"] for r in sink.received]


def wait_for(predicate, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.1)


def test_worker_delivers_queued_mail(installation):
    installation.queue(0, 3)
    installation.start_worker("w1")
    wait_for(lambda: len(installation.sink.received) >= 3)
    assert sorted(message_ids(installation.sink)) == [f"<n{n}@example.com>" for n in range(3)]
    wait_for(lambda: installation.statuses() == ["delivered"], 30)


def test_worker_killed_mid_delivery_loses_nothing(installation):
    slow = installation.sink.handler

    original = type(slow).handle_DATA

    async def handle_data(self, server, session, envelope):
        await asyncio.sleep(0.1)
        return await original(self, server, session, envelope)

    slow.handle_DATA = handle_data.__get__(slow)
    installation.queue(0, 40)
    worker = installation.start_worker("w1", EVERLOCK_QUEUE_FIRST_RETRY="3", EVERLOCK_DELIVERY_SESSIONS="2")
    wait_for(lambda: len(installation.sink.received) >= 5)
    installation.kill(worker)
    got_before = len(installation.sink.received)
    assert got_before < 40
    installation.start_worker("w2", EVERLOCK_QUEUE_FIRST_RETRY="3")
    wait_for(lambda: len(set(message_ids(installation.sink))) == 40)
    assert sorted(set(message_ids(installation.sink))) == sorted(f"<n{n}@example.com>" for n in range(40))
    # Each session's delivery is recorded before that session sends its next one: only the
    # messages in flight at the kill may arrive twice, one per session (two in the one
    # worker process here).
    assert len(installation.sink.received) <= 40 + 2
    wait_for(lambda: installation.statuses() == ["delivered"], 30)


def test_a_worker_keeps_its_sessions_from_one_task_to_the_next(installation):
    # Messages queued one at a time, each with its own kick: the worker's sessions stay open
    # between its tasks (and the rounds of one task), so they share few connections.
    installation.start_worker("w1", EVERLOCK_DELIVERY_SESSIONS="2")
    installation.queue(0, 20)
    wait_for(lambda: len(installation.sink.received) >= 20)
    assert sorted(message_ids(installation.sink)) == sorted(f"<n{n}@example.com>" for n in range(20))
    assert installation.sink.handler.connections <= 2
    wait_for(lambda: installation.statuses() == ["delivered"], 30)


def test_a_starting_worker_sweeps_old_message_files_without_a_row(installation):
    installation.queue(0, 1)
    orphan = installation.tmp_path / "messages" / "2020" / "01" / "01" / "000000-0123456789abcdef.eml"
    young = orphan.with_name("000001-0123456789abcdef.eml")
    orphan.parent.mkdir(parents=True)
    for path in (orphan, young):
        path.write_bytes(b"Subject: written, then the writer was killed before its commit\r\n\r\n")
    os.utime(orphan, (time.time() - 7200, time.time() - 7200))
    installation.start_worker("w1", EVERLOCK_ORPHAN_FILE_AGE="3600")
    wait_for(lambda: not orphan.exists(), 60)
    wait_for(lambda: installation.statuses() == ["delivered"], 60)
    assert young.exists()  # its row might still be committing
    # The queued message's file has its row: delivered, and kept.
    assert message_ids(installation.sink) == ["<n0@example.com>"]
    kept = [p for p in (installation.tmp_path / "messages").rglob("*.eml") if p.parent != orphan.parent]
    assert len(kept) == 1


def test_broker_emptied_while_mail_waits(installation):
    installation.queue(0, 20)
    installation.purge_broker()
    installation.start_worker("w1")
    wait_for(lambda: len(installation.sink.received) >= 20)
    assert sorted(message_ids(installation.sink)) == sorted(f"<n{n}@example.com>" for n in range(20))


def test_four_workers_deliver_each_message_once(installation):
    for n in range(4):
        installation.start_worker(f"w{n}")
    installation.queue(0, 200)
    wait_for(lambda: len(installation.sink.received) >= 200, 180)
    time.sleep(2)  # anything delivered twice would arrive by now
    ids = message_ids(installation.sink)
    assert len(ids) == 200
    assert sorted(set(ids)) == sorted(f"<n{n}@example.com>" for n in range(200))
    wait_for(lambda: installation.statuses() == ["delivered"], 30)


def test_serve_runs_the_delivery_worker(installation):
    import re

    log_path = installation.tmp_path / "serve.log"
    with open(log_path, "w") as log:
        serve = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "serve", "--backend-mail-smtp"],
            env={**installation.env, "EVERLOCK_LOG": "warning,mail.delivery=info"},
            cwd=ROOT, stderr=log, stdout=log, start_new_session=True,
        )  # fmt: skip
    installation.workers.append(serve)
    wait_for(lambda: "delivery worker started" in log_path.read_text(), 60)
    broker = installation.env.get("CELERY_BROKER_URL", "filesystem://")
    assert re.search(
        r"^\S+ \[INFO mail\.delivery\] backend-mail-smtp: delivery worker started \(broker "
        + re.escape(broker.split("://")[0])
        + r"://",
        log_path.read_text(),
        re.M,
    )
    installation.queue(0, 5)
    wait_for(lambda: len(installation.sink.received) >= 5)
    assert sorted(message_ids(installation.sink)) == [f"<n{n}@example.com>" for n in range(5)]
    os.killpg(serve.pid, signal.SIGTERM)
    assert serve.wait(60) == 0
    text = log_path.read_text()
    assert "backend-mail-smtp: delivery worker stopped" in text
    assert "Traceback" not in text
