"""One filing path: a message filed by SMTP, by a rule, as a bounce sent on, as a DSN and by
IMAP APPEND ends in rows of one shape, numbered by one scheme; and file_messages itself."""

import re
import smtplib
from datetime import UTC, datetime

import pytest
from django.db import transaction
from django.utils import timezone

from mail.auth import srs
from mail.message import parse_message
from mail.models import Folder, MailDomain, Message, MessageContent
from mail.services.dsn import Report, send_dsn
from mail.services.filing import Copy, FolderGone, NewMessage, file_messages
from mail.services.mailboxes import mailbox_create
from mail.services.rules import set_rules
from mail.services.storage import StoredFiles, message_storage, read_content
from tests.mail.imap.conftest import imap, mail_users  # noqa: F401 (fixtures)
from tests.mail.smtp.conftest import start_smtp  # noqa: F401 (fixture)

SUBJECT = "=?utf-8?q?Gr=C3=BC=C3=9Fe?= aus Bern"


def letter(path: str, to: str = "alice@example.com") -> bytes:
    return (
        f"From: =?utf-8?q?J=C3=BCrg?= <jurg@example.net>\r\nTo: {to}\r\nSubject: {SUBJECT}\r\n"
        f"Date: Tue, 01 Dec 2026 08:00:00 +0100\r\nMessage-Id: <{path}@example.net>\r\n\r\nHello.\r\n"
    ).encode()


REDIRECT = """
[[rule]]
name = "bob to alice"
scope = "bob@example.com"
redirect = ["alice@example.com"]
stop = true
"""


def test_every_path_files_rows_of_one_shape_and_numbers_them_one_way(imap, mail_users, start_smtp):  # noqa: F811
    smtp = start_smtp()
    with smtplib.SMTP("127.0.0.1", smtp.inbound_port, timeout=10) as client:
        client.sendmail("jurg@example.net", ["alice@example.com"], letter("smtp"))
        set_rules(text=REDIRECT)
        client.sendmail("jurg@example.net", ["bob@example.com"], letter("rule", to="bob@example.com"))
        # A bounce (null sender) to an SRS address of ours is sent on to the original sender.
        client.sendmail("", [srs.forward("alice@example.com", "example.com")], letter("bounce"))
    with transaction.atomic():
        assert send_dsn(
            Report(
                reporting_host="mail.example.com",
                envelope_from="alice@example.com",
                original=letter("dsn-original"),
                recipients=(("dave@example.org", "mx.example.org", "550 5.1.1 No such user"),),
                arrival=timezone.now(),
            )
        )
    inbox = Folder.objects.get(mailbox__local_part="alice", name="inbox")
    filed = list(Message.objects.filter(folder=inbox).order_by("id"))
    # Filing leaves the UID to the first IMAP reader.
    assert [m.uid for m in filed] == [None] * 4

    client = imap.login()
    data = letter("append")
    typ, answer = client.append("INBOX", "(\\Flagged)", None, data)
    assert typ == "OK"
    # APPEND files through the same function, numbered at once: the first UID of the folder.
    assert re.search(rb"APPENDUID (\d+) 1\]", answer[0])
    typ, _ = client.select("INBOX")
    assert typ == "OK"
    # Selecting numbered the four filed before, in the order they were filed.
    typ, found = client.uid("SEARCH", None, "ALL")
    assert found == [b"1 2 3 4 5"]
    client.logout()

    rows = list(Message.objects.filter(folder=inbox).select_related("content").order_by("uid"))
    assert [m.message_id for m in rows] == [
        "<append@example.net>",
        "<smtp@example.net>",
        "<rule@example.net>",
        "<bounce@example.net>",
        rows[4].message_id,  # the DSN's own
    ]
    for row in rows:
        raw = bytes(row.prepended_headers) + read_content(row.content)
        facts = parse_message(raw)
        # One shape whoever filed it: the header facts as mail.message reads the stored bytes,
        # the size of what a client reads, the mailbox's address, a modseq, a stored file.
        assert (row.header_from, row.header_to, row.subject, row.date, row.message_id) == (
            facts.header_from,
            facts.header_to,
            facts.subject,
            facts.date,
            facts.message_id,
        )
        assert row.size == len(raw) == row.content.size + len(row.prepended_headers)
        assert row.envelope_to == "alice@example.com"
        assert row.modseq > 0 and row.received_at is not None
        assert message_storage().exists(row.content.storage_name)
    for row in rows[:4]:
        assert (row.subject, row.header_from) == ("Grüße aus Bern", "Jürg <jurg@example.net>")
        assert row.date == datetime(2026, 12, 1, 7, 0, tzinfo=UTC)
    assert [(m.envelope_from, m.flagged) for m in rows] == [
        ("", True),  # APPEND: no envelope
        ("jurg@example.net", False),
        ("jurg@example.net", False),  # redirected by bob's rule
        ("", False),  # the bounce, sent on from the null sender
        ("", False),  # the DSN
    ]


@pytest.mark.django_db
def test_file_messages_numbers_in_order_under_the_folders_and_reuses_stored_content():
    MailDomain.objects.create(name="example.com")
    box, _ = mailbox_create(address="erin@example.com")
    one = Folder.objects.create(mailbox=box, name="one")
    two = Folder.objects.create(mailbox=box, name="two", uid_next=7, highest_modseq=3)
    modseq = one.highest_modseq
    raw = letter("numbered", to="erin@example.com")
    parsed = parse_message(raw)

    def copy(folder):
        return Copy(mailbox_id=box.id, address=box.address, folder_id=folder.id)

    with StoredFiles() as files, transaction.atomic():
        first, second = file_messages(
            [
                NewMessage(parsed=parsed, copies=(copy(one), copy(two)), raw=raw),
                NewMessage(parsed=parsed, copies=(copy(two),), raw=raw),
            ],
            files=files,
            numbered=True,
        )
        # A stored content filed again: no new file, no new row.
        (again,) = file_messages(
            [
                NewMessage(
                    parsed=parsed,
                    copies=(Copy(mailbox_id=box.id, address=box.address, folder="new"),),
                    content=first.content,
                )
            ],
            files=files,
        )
    assert (first.uids, second.uids) == ([1, 7], [8])
    assert again.content == first.content and again.uids == []
    assert MessageContent.objects.count() == 2
    assert Message.objects.get(pk=again.message_ids[0]).folder.name == "new"
    assert Message.objects.get(pk=again.message_ids[0]).uid is None
    one.refresh_from_db()
    two.refresh_from_db()
    # Each folder's modseq is raised once for the call, its uid_next past the UIDs given.
    assert (one.uid_next, one.highest_modseq, two.uid_next, two.highest_modseq) == (2, modseq + 1, 9, 4)
    assert Message.objects.get(pk=second.message_ids[0]).modseq == 4

    gone = Folder.objects.create(mailbox=box, name="gone")
    gone_id = gone.id
    gone.delete()
    with pytest.raises(FolderGone), StoredFiles() as files, transaction.atomic():
        file_messages(
            [
                NewMessage(
                    parsed=parsed,
                    copies=(Copy(mailbox_id=box.id, address=box.address, folder_id=gone_id),),
                    raw=raw,
                )
            ],
            files=files,
            numbered=True,
        )
    assert MessageContent.objects.count() == 2
