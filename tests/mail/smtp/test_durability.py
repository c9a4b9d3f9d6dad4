"""A 250 only after the message bytes are on stable storage and their rows are committed.

The operating system's sync calls (fsync, syncfs) and the database driver's COMMIT are
replaced by recording stand-ins that call the real ones; a real SMTP listener on 127.0.0.1
takes the messages, and the journal must show, for every message: its file synced, then the
commit, then the reply. Another stand-in makes COMMIT itself fail: every client of that batch
must get 451, and no message file may be left behind.
"""

from __future__ import annotations

import os
import smtplib
import threading
import time
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.db import OperationalError, connections

from mail.models import MessageContent
from mail.services import storage
from tests.mail.smtp.conftest import example_com, nothing_stored, smtp, start_smtp  # noqa: F401

COMMIT_THREAD = "smtp-group-commit"
# Each stand-in sync takes this much longer than the real one, so that a commit that does not
# wait for the sync shows up in the journal as a commit before the sync's end.
SLOW_SYNC = 0.05


class Journal:
    """What happened, in order, from every thread."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def add(self, kind: str, detail: str = "") -> None:
        with self._lock:
            self.events.append((kind, detail))


@pytest.fixture
def journal(monkeypatch, settings, tmp_path):
    """Recording stand-ins for fsync(2), syncfs(2) and the database COMMIT; messages in tmp_path."""
    settings.STORAGES = {
        **django_settings.STORAGES,
        "messages": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "messages"), "file_permissions_mode": 0o600},
        },
    }
    recorded = Journal()
    real_fsync, real_syncfs = os.fsync, storage._syncfs
    backend = type(connections["default"])
    real_commit = backend._commit

    def fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        time.sleep(SLOW_SYNC)
        real_fsync(fd)
        recorded.add("fsync", path)

    def syncfs(fd: int) -> int:
        time.sleep(SLOW_SYNC)
        result = real_syncfs(fd)
        recorded.add("syncfs", os.readlink(f"/proc/self/fd/{fd}"))
        return result

    def commit(self):
        if threading.current_thread().name != COMMIT_THREAD:
            return real_commit(self)
        if recorded.fail_commit:
            recorded.add("commit failed")
            raise OperationalError("disk I/O error (a stand-in for a failing COMMIT)")
        result = real_commit(self)
        recorded.add("commit")
        return result

    recorded.fail_commit = False
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(storage, "_syncfs", syncfs)
    monkeypatch.setattr(backend, "_commit", commit)
    recorded.location = tmp_path / "messages"
    return recorded


def send(port: int, n: int) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("mx.example.net")
        client.mail("carol@example.net")
        client.rcpt("bob@example.com")
        return client.data(b"From: carol@example.net\r\nSubject: n%d\r\n\r\nbody\r\n" % n)


def fsynced(events, path) -> bool:
    """The file and its directory were fsynced."""
    return ("fsync", path) in events and ("fsync", os.path.dirname(path)) in events


def send_and_check_order(smtp, journal) -> list[str]:  # noqa: F811
    """Send three messages one after another; return how each file was synced before its
    commit, which came before its reply."""
    ways = []
    for n in range(3):
        before = len(journal.events)
        assert send(smtp.inbound_port, n) == (250, b"2.0.0 Accepted")
        events = journal.events[before:]
        name = MessageContent.objects.get(messages__subject=f"n{n}").storage_name
        path = str(journal.location / name)
        kinds = [kind for kind, _ in events]
        assert kinds.count("commit") == 1, events
        synced = events[: kinds.index("commit")]
        # One syncfs of the messages' filesystem covers the file and its directory entry.
        if any(kind == "syncfs" and path.startswith(detail + "/") for kind, detail in synced):
            ways.append("syncfs")
        elif fsynced(synced, path):
            ways.append("fsync")
        else:
            raise AssertionError(f"{path} not synced before the commit: {events}")
        journal.add("reply", f"n{n}")
    return ways


def test_syncfs_then_commit_then_reply(smtp, example_com, journal, settings):  # noqa: F811
    settings.EVERLOCK_MESSAGE_SYNC = "filesystem"
    # The first file of a new directory is fsynced with the directory as it is created.
    assert send_and_check_order(smtp, journal)[1:] == ["syncfs", "syncfs"]


def test_file_and_directory_fsync_then_commit_then_reply(smtp, example_com, journal, settings):  # noqa: F811
    settings.EVERLOCK_MESSAGE_SYNC = "file"
    assert send_and_check_order(smtp, journal) == ["fsync"] * 3


def stored_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


@pytest.mark.parametrize("mode", ["filesystem", "file"])
def test_a_failed_commit_answers_451_to_every_client_of_the_batch(smtp, example_com, journal, settings, mode):  # noqa: F811
    settings.EVERLOCK_MESSAGE_SYNC = mode
    journal.fail_commit = True
    replies: dict[int, tuple[int, bytes]] = {}

    def client(n: int) -> None:
        replies[n] = send(smtp.inbound_port, n)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert replies == {n: (451, b"4.3.0 Temporary local problem") for n in range(6)}
    assert ("commit failed", "") in journal.events
    assert nothing_stored()
    assert stored_files(journal.location) == []
    # COMMIT works again: the same message is accepted and stored.
    journal.fail_commit = False
    assert send(smtp.inbound_port, 7) == (250, b"2.0.0 Accepted")
    assert [
        p.read_bytes().endswith(b"Subject: n7\r\n\r\nbody\r\n") for p in stored_files(journal.location)
    ] == [True]
