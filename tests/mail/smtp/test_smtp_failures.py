"""Our own failures answer 451 4.3.0 and leave nothing half-written."""

import os
import smtplib
from pathlib import Path

from django.conf import settings as django_settings
from django.db import connection

from mail.models import Message
from tests.mail.smtp.conftest import nothing_stored

MESSAGE = b"From: carol@example.net\r\nSubject: Hi\r\n\r\nHello Bob\r\n"


def stored_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def send(port: int) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("mx.example.net")
        client.mail("carol@example.net")
        assert client.rcpt("bob@example.com") == (250, b"2.1.5 Recipient OK")
        return client.data(MESSAGE)


def test_storage_unavailable_answers_451(smtp, example_com, settings, tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the message directory should be")
    settings.STORAGES = {
        **django_settings.STORAGES,
        "messages": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(blocker)},
        },
    }
    assert send(smtp.inbound_port) == (451, b"4.3.0 Temporary local problem")
    assert nothing_stored()


def test_database_failure_after_storing_removes_the_file(smtp, example_com, settings, tmp_path):
    location = tmp_path / "messages"
    settings.STORAGES = {
        **django_settings.STORAGES,
        "messages": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(location)},
        },
    }
    # The message rows' table disappears: the content row and the file are written first,
    # then filing fails, and both must be gone again.
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE mail_message RENAME TO mail_message_away")
    try:
        assert send(smtp.inbound_port) == (451, b"4.3.0 Temporary local problem")
    finally:
        with connection.cursor() as cursor:
            cursor.execute("ALTER TABLE mail_message_away RENAME TO mail_message")
    assert nothing_stored()
    assert stored_files(location) == []
    # Once the database is back, the same message is accepted.
    assert send(smtp.inbound_port) == (250, b"2.0.0 Accepted")
    assert Message.objects.count() == 1
    assert len(stored_files(location)) == 1
    assert os.stat(stored_files(location)[0]).st_size == Message.objects.get().size


def test_database_unavailable_at_rcpt_answers_451(smtp, example_com):
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE mail_mailbox RENAME TO mail_mailbox_away")
    try:
        with smtplib.SMTP("127.0.0.1", smtp.inbound_port, timeout=10) as client:
            client.ehlo("mx.example.net")
            client.mail("carol@example.net")
            assert client.rcpt("bob@example.com") == (451, b"4.3.0 Temporary local problem")
    finally:
        with connection.cursor() as cursor:
            cursor.execute("ALTER TABLE mail_mailbox_away RENAME TO mail_mailbox")
    assert nothing_stored()
