"""The writer process: `manage.py runsmtp` files messages in a child process of its own
(EVERLOCK_SMTP_WRITER_PROCESS, on by default), answering 250 only after its commit."""

import glob
import os
import signal
import smtplib
import socket
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.mail.management.test_runsmtp_command import free_port
from tests.processes import terminate

ROOT = Path(__file__).resolve().parents[3]
MESSAGE = b"From: carol@example.net\r\nTo: bob@example.com\r\nSubject: Hi\r\n\r\nHello Bob\r\n"
SETUP = (
    "from mail.models import MailDomain; from mail.services.mailboxes import mailbox_create; "
    "MailDomain.objects.create(name='example.com'); mailbox_create(address='bob@example.com')"
)


class Server:
    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.env = {**os.environ, "EVERLOCK_DATA_DIR": str(data_dir), "EVERLOCK_LOG": "warning"}
        self.env.pop("DATABASE_URL", None)  # its own SQLite database in data_dir
        for args in (["migrate", "-v0"], ["createcachetable"], ["shell", "-c", SETUP]):
            subprocess.run(
                [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, check=True, timeout=120
            )
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "runsmtp", "--listen", f"127.0.0.1:{self.port}"],
            cwd=ROOT,
            env=self.env,
        )
        deadline = time.monotonic() + 60
        while not (self.writers() and self.listening()):
            assert time.monotonic() < deadline, "the listener and its writer did not start"
            time.sleep(0.1)

    def listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def writers(self) -> list[int]:
        children = []
        for path in glob.glob(f"/proc/{self.process.pid}/task/*/children"):
            children += [int(pid) for pid in Path(path).read_text().split()]
        return [pid for pid in children if b"smtpwriter" in Path(f"/proc/{pid}/cmdline").read_bytes()]

    def send(self) -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as client:
            client.ehlo("mx.example.net")
            client.mail("carol@example.net")
            assert client.rcpt("bob@example.com") == (250, b"2.1.5 Recipient OK")
            return client.data(MESSAGE)

    def filed(self) -> int:
        with sqlite3.connect(self.data_dir / "everlock.sqlite3") as db:
            return db.execute("SELECT count(*) FROM mail_message").fetchone()[0]

    def stop(self) -> None:
        terminate(self.process)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = Server(tmp_path_factory.mktemp("writer"))
    yield running
    running.stop()


def test_concurrent_messages_are_filed_before_their_250(server):
    before = server.filed()
    with ThreadPoolExecutor(10) as pool:
        replies = list(pool.map(lambda _: server.send(), range(30)))
    assert replies == [(250, b"2.0.0 Accepted")] * 30
    assert server.filed() == before + 30
    assert len(list((server.data_dir / "messages").rglob("*.eml"))) == before + 30


def test_storage_failure_answers_451_and_stores_nothing(server):
    before = server.filed()
    messages = server.data_dir / "messages"
    messages.rename(server.data_dir / "messages-away")
    messages.write_text("a file where the message directory should be")
    try:
        assert server.send() == (451, b"4.3.0 Temporary local problem")
        assert server.filed() == before
    finally:
        messages.unlink()
        (server.data_dir / "messages-away").rename(messages)
    assert server.send() == (250, b"2.0.0 Accepted")


def test_a_killed_writer_is_replaced(server):
    (writer,) = server.writers()
    os.kill(writer, signal.SIGKILL)
    deadline = time.monotonic() + 10
    # Reaped once the listener has seen it end (a zombie until then).
    while Path(f"/proc/{writer}").exists():
        assert time.monotonic() < deadline, "the killed writer was not reaped"
        time.sleep(0.05)
    before = server.filed()
    assert server.send() == (250, b"2.0.0 Accepted")
    assert server.filed() == before + 1
    assert len(server.writers()) == 1
